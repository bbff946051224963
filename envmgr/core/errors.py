"""One place for envmgr's errors and the exit codes they map to.

Exit codes: 0 ok, 1 a check failed or a lock is stale, 2 usage or input error.
Every error is caught once, in ``cli.main``, and printed as one line; no traceback.
"""

from __future__ import annotations


class EnvmgrError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Multi-line material (a resolver's explanation) printed below the one-line error.
        self.detail = detail

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UserError(EnvmgrError):
    """Bad input: a profile, a flag, a file. Exit 2."""


class ProfileError(UserError):
    """A profile that does not validate; the message names file and line."""


class LockFileError(UserError):
    """A lock file that cannot be read or does not match its own contents."""


class ResolutionError(EnvmgrError):
    """The resolver found no solution or could not reach an index. Exit 2."""


class NetworkError(EnvmgrError):
    """An index or URL could not be reached. Exit 2."""


class HashMismatchError(EnvmgrError):
    """Downloaded bytes whose sha256 is not the one expected. Exit 2."""


class StaleError(EnvmgrError):
    """A lock is stale against its profile (``lock --check``, ``sync --locked``). Exit 1."""

    exit_code = 1


class CheckFailed(EnvmgrError):
    """A verification ran and found a problem (``check``, ``sync --check``). Exit 1."""

    exit_code = 1
