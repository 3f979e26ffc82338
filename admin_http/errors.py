"""The error envelope: ``{"error": {"code": ..., "message": ..., "problems": [...]}}``."""

from __future__ import annotations

from aiohttp import web


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, problems: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.problems = problems or []


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(
    status: int,
    code: str,
    message: str,
    problems: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, object] = {"code": code, "message": message}
    if problems:
        error["problems"] = problems
    return web.json_response({"error": error}, status=status, headers=headers)
