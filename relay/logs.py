"""Logging setup: one line per event to stderr (journald and Docker collect it)."""

from __future__ import annotations

import logging


def configure(level: str = "INFO", process: str = "") -> None:
    """``process`` names a worker ("worker-2") on each of its lines; they share one stderr."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {process + ' ' if process else ''}%(name)s: %(message)s",
    )
    # aiosmtpd logs every command line at INFO; keep it quiet, and drop its
    # deprecation notice that every successful AUTH would otherwise print.
    aiosmtpd_log = logging.getLogger("mail.log")
    aiosmtpd_log.setLevel(logging.WARNING)
    aiosmtpd_log.addFilter(lambda record: "login_data is deprecated" not in record.getMessage())
