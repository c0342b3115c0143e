"""User-facing errors: each names the problem and the fix, and the CLI prints it without a traceback."""

from __future__ import annotations


class SmolshipError(Exception):
    """An error caused by the user's input or environment; `fix` tells them what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem} {fix}")
        self.problem = problem
        self.fix = fix


class MissingDependencyError(SmolshipError):
    """A target's runtime library is not installed."""

    def __init__(self, package: str, extra: str, cause: Exception | None = None):
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"The Python package '{package}' is needed for this step but could not be imported{detail}.",
            f"Install it with: pip install 'smolship[{extra}]'.",
        )
