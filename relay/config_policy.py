"""The ``policy:`` section: the operator's Python policy module (README "Policy hooks").

Only the names are checked here (the file is read, not run): importing the
module runs its code, which the relay does when it starts and at each reload
(relay/policy_hooks_controller.py), and ``relay check-config`` does too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from relay.config_section import Section

MAX_TIMEOUT_SECONDS = 60.0  # an SMTP client waits minutes (RFC 5321 4.5.3.2), a queue less
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class PolicyConfig:
    module: str  # an importable module name, or the path of a .py file
    timeout_seconds: float = 2.0  # per hook call; past it the hook has failed (451)

    @property
    def path(self) -> Path | None:
        """The file, when ``module`` names one rather than an importable module."""
        return Path(self.module) if self.module.endswith(".py") else None


def parse_policy(root: Section) -> PolicyConfig | None:
    if not root.has("policy"):
        return None
    s = root.section("policy")
    module = s.text("module")
    d = PolicyConfig("")
    timeout = s.number("timeout_seconds", d.timeout_seconds)
    if timeout > MAX_TIMEOUT_SECONDS:
        s.problem(f"must be at most {MAX_TIMEOUT_SECONDS:g}", "timeout_seconds")
        timeout = d.timeout_seconds
    s.finish()
    if module is None:
        return None
    if module.endswith(".py"):
        if not Path(module).is_file():
            s.problem(f"no such file: {module}", "module")
            return None
    elif not _MODULE_NAME.fullmatch(module):
        s.problem(f"not a module name (my_policy, pkg.policy) or a .py file: {module!r}", "module")
        return None
    return PolicyConfig(module, timeout)
