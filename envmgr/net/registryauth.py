"""Registry credentials as docker and podman find them. A secret found here is only ever put
in an ``Authorization`` header or a token request: never printed, logged or written.

For a registry host, the first of:

1. ``ENVMGR_REGISTRY_USERNAME`` and ``ENVMGR_REGISTRY_PASSWORD``, both set (explicit beats
   what the machine has lying around, as ``skopeo --creds`` does);
2. each auth file in turn: ``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``),
   ``$REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json``,
   ``~/.config/containers/auth.json``. In a file, as docker reads it: ``credHelpers[host]``,
   else ``credsStore``, through the credential-helper protocol (``docker-credential-NAME get``,
   the host on stdin, ``{"Username", "Secret"}`` on stdout; ``Username`` ``<token>`` makes the
   secret an identity token), then ``auths[host]`` (``auth``: base64 ``user:password``;
   ``identitytoken``; ``username``/``password``).

No credentials is not an error (an anonymous pull works); a helper that says "credentials not
found" is no credentials. A file that is not JSON, a helper that is missing, fails or answers
nonsense is a one-line :class:`~envmgr.core.errors.UserError` naming the file or helper.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError

HELPER_TIMEOUT = 60  # seconds: a helper may ask a cloud for a token
TOKEN_USER = "<token>"


@dataclass(frozen=True)
class RegistryCreds:
    """What to authenticate with; ``source`` says where it came from (no secret in it)."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""

    @property
    def basic(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and not self.identity_token else None


def auth_files() -> list[Path]:
    """The files looked in, in order (whether or not they exist)."""
    env = os.environ
    home = Path.home()
    out = [Path(env["DOCKER_CONFIG"]) / "config.json" if env.get("DOCKER_CONFIG") else home / ".docker" / "config.json"]
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    out.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    return out


def lookup(host: str) -> RegistryCreds | None:
    """The credentials for registry ``host`` (``name[:port]``), or None."""
    user, password = os.environ.get("ENVMGR_REGISTRY_USERNAME"), os.environ.get("ENVMGR_REGISTRY_PASSWORD")
    if user and password is not None:
        return RegistryCreds(user, password, source="ENVMGR_REGISTRY_USERNAME")
    for path in auth_files():
        found = _from_file(path, host)
        if found:
            return found
    return None


def _read(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})",
                        hint="fix or remove it; `docker login` / `podman login` write it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object", hint="fix or remove it")
    return data


def _host_of(key: str) -> str:
    return re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]


def _from_file(path: Path, host: str) -> RegistryCreds | None:
    data = _read(path)
    if not data:
        return None
    helpers = data.get("credHelpers") or {}
    helper = next((v for k, v in helpers.items() if _host_of(k) == host), None) if isinstance(helpers, dict) else None
    helper = helper or data.get("credsStore")
    if helper:
        found = run_helper(str(helper), host, path)
        if found:
            return found
    auths = data.get("auths") or {}
    entry = next((v for k, v in auths.items() if _host_of(k) == host), None) if isinstance(auths, dict) else None
    if not isinstance(entry, dict):
        return None
    where = f"{path} (auths)"
    user, password = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise UserError(f"{path}: auths[{host!r}].auth is not base64 of user:password",
                            hint="log in again with docker login / podman login")
    if entry.get("identitytoken"):
        return RegistryCreds(user, identity_token=str(entry["identitytoken"]), source=where)
    return RegistryCreds(user, password, source=where) if user else None


def run_helper(name: str, host: str, config: Path) -> RegistryCreds | None:
    """``docker-credential-NAME get`` for ``host``: its credentials, None when it has none."""
    exe = f"docker-credential-{name}"
    try:
        proc = subprocess.run([exe, "get"], input=host, capture_output=True, text=True, timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise UserError(f"{config} names the credential helper {exe}, which is not on PATH",
                        hint="install it, or remove credsStore/credHelpers from that file") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"credential helper {exe} for {host}: {type(exc).__name__}") from None
    said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    if proc.returncode != 0:
        if said and "credentials not found" in said[0].lower():
            return None  # the helper's way of saying "none for this host"
        reason = f": {said[0][:200]}" if said else ""
        raise UserError(f"credential helper {exe} failed for {host} (exit {proc.returncode}){reason}",
                        hint=f"it is named in {config}")
    try:
        data = json.loads(proc.stdout)
        user, secret = data["Username"], data["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise UserError(f"credential helper {exe} answered for {host} without the JSON "
                        '{"Username": ..., "Secret": ...} of the helper protocol') from None
    if user == TOKEN_USER:
        return RegistryCreds(identity_token=secret, source=exe)
    return RegistryCreds(user, secret, source=exe)
