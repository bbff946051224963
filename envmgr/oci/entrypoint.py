"""envmgr's container entrypoint: shipped into every image as /opt/envmgr/entrypoint.py.

Standard library only, no network; envmgr never imports it. It reads the modes the image was
built with from /opt/envmgr/image.json and runs what the container's command asks:

    IMAGE                 the default mode (a shell when the image has it)
    IMAGE shell [CMD...]  bash (or sh), or CMD
    IMAGE jupyter [ARGS]  JupyterLab from the venv on 0.0.0.0:8888, token required
    IMAGE ssh [ARGS]      sshd as the image's user on 2222, keys from PUBLIC_KEY or
                          /run/secrets/authorized_keys only
    IMAGE CMD ...         any other command, as given

As PID 1 it starts the command as its child, forwards signals to it (so ``docker stop`` is
clean), reaps orphans and exits with the child's status; under another init it just execs.
A mode the image lacks, root for jupyter/ssh, no key or a malformed key: one line on stderr,
exit 2.
"""

import base64
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys

CONFIG = "/opt/envmgr/image.json"
SECRET_KEYS = "/run/secrets/authorized_keys"
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Jupyter arguments that would start it without a token or as root.
UNSAFE_JUPYTER = ("token", "password", "allow-root", "allow_root", "disable_check_xsrf")


class Refused(Exception):
    """A one-line reason to exit 2."""


def say(msg):
    print(f"envmgr: {msg}", file=sys.stderr, flush=True)


def config():
    try:
        with open(CONFIG, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"modes": ["shell"], "venv": os.environ.get("VIRTUAL_ENV", ""), "ports": {}, "workspace": "/workspace"}


def not_root(mode):
    if os.getuid() == 0:
        raise Refused(f"the {mode} mode does not run as root: drop --user/-u 0 (the image's user is the default)")


def shell_argv(cfg, args):
    if args:
        return args
    return ["/bin/bash"] if os.path.exists("/bin/bash") else ["/bin/sh"]


def jupyter_argv(cfg, args):
    not_root("jupyter")
    exe = os.path.join(cfg["venv"], "bin", "jupyter-lab")
    if not os.path.exists(exe):
        raise Refused(f"no {exe}: the lock has no jupyterlab")
    bad = [a for a in args if any(word in a.lower() for word in UNSAFE_JUPYTER)]
    if bad:
        raise Refused(f"refusing {bad[0]!r}: the token comes from JUPYTER_TOKEN, and the server never runs as root")
    port = cfg["ports"]["jupyter"]
    token = os.environ.get("JUPYTER_TOKEN", "").strip()
    if not token:
        token = secrets.token_hex(24)
        os.environ["JUPYTER_TOKEN"] = token
        say(f"JupyterLab at http://127.0.0.1:{port}/lab?token={token} (your published port; the token is also in "
            "`jupyter server list`)")
    return [exe, "--ip=0.0.0.0", f"--port={port}", "--ServerApp.port_retries=0", "--no-browser",
            f"--ServerApp.root_dir={cfg['workspace']}", *args]


def public_keys():
    """(source, line) for every key in PUBLIC_KEY and the mounted file; comments and blanks skipped."""
    found = []
    for n, line in enumerate(os.environ.get("PUBLIC_KEY", "").splitlines(), 1):
        found.append((f"PUBLIC_KEY line {n}", line.strip()))
    if os.path.isfile(SECRET_KEYS):
        with open(SECRET_KEYS, encoding="utf-8", errors="replace") as fh:
            found += [(f"{SECRET_KEYS} line {n}", line.strip()) for n, line in enumerate(fh, 1)]
    return [(where, line) for where, line in found if line and not line.startswith("#")]


def check_key(where, line):
    """An OpenSSH public key line: TYPE BASE64 [COMMENT], the blob naming the same type."""
    parts = line.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise Refused(f"{where} is not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA... you@host')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise Refused(f"{where}: the key is not base64")
    n = int.from_bytes(blob[:4], "big")
    if blob[4:4 + n] != parts[0].encode():
        raise Refused(f"{where}: the key's data does not match its type {parts[0]}")


def write(path, text, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def ssh_argv(cfg, args):
    not_root("ssh")
    sshd = cfg.get("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise Refused(f"no {sshd} in this image: its base lacks openssh-server")
    keys = public_keys()
    if not keys:
        raise Refused(f"no key to log in with: set PUBLIC_KEY or mount an authorized_keys file at {SECRET_KEYS}")
    for where, line in keys:
        check_key(where, line)
    try:
        user = pwd.getpwuid(os.getuid())
    except KeyError:
        raise Refused(f"uid {os.getuid()} has no user in /etc/passwd: run as the image's user")
    home = os.environ.get("HOME") or user.pw_dir
    dot = os.path.join(home, ".ssh")
    os.makedirs(os.path.join(dot, "host_keys"), mode=0o700, exist_ok=True)
    os.chmod(dot, 0o700)
    write(os.path.join(dot, "authorized_keys"), "".join(line + "\n" for _, line in keys), 0o600)
    host_keys = []
    for kind in ("ed25519", "rsa"):  # made at the first start: every container its own, a volume keeps them
        key = os.path.join(dot, "host_keys", f"ssh_host_{kind}_key")
        if not os.path.exists(key):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", key], check=True,
                           stdout=subprocess.DEVNULL)
        host_keys.append(key)
    env_path = f"{cfg['venv']}/bin:" + os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    conf = [f"Port {cfg['ports']['ssh']}", "ListenAddress 0.0.0.0",
            *(f"HostKey {k}" for k in host_keys), "PidFile none", f"AuthorizedKeysFile {dot}/authorized_keys",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no", "PermitRootLogin no", "UsePAM no", f"AllowUsers {user.pw_name}",
            "StrictModes yes", "X11Forwarding no", "PrintMotd no", "Subsystem sftp internal-sftp",
            f"SetEnv PATH={env_path} VIRTUAL_ENV={cfg['venv']}"]
    sshd_config = os.path.join(dot, "sshd_config")
    write(sshd_config, "\n".join(conf) + "\n", 0o600)
    say(f"sshd on port {cfg['ports']['ssh']}: ssh -p PORT {user.pw_name}@HOST ({len(keys)} key(s))")
    return [sshd, "-D", "-e", "-f", sshd_config, *args]


MODES = {"shell": shell_argv, "jupyter": jupyter_argv, "ssh": ssh_argv}


def command(cfg, args):
    modes = cfg.get("modes") or ["shell"]
    if not args:
        args = ["shell" if "shell" in modes else modes[0]]
    mode, rest = args[0], args[1:]
    if mode not in MODES:
        return args
    if mode not in modes:
        raise Refused(f"this image has no {mode} mode (it has: {', '.join(modes)}); "
                      f"add it to the profile's [image] modes and export the image again")
    return MODES[mode](cfg, rest)


def supervise(argv):
    """PID 1: run ``argv`` as a child, forward signals to it, reap every child, exit with its status."""
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        say(f"cannot run {argv[0]}: {exc.strerror or exc}")
        return 127
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child.pid:
            child.returncode = code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def main(args):
    try:
        argv = command(config(), args)
    except Refused as exc:
        say(f"error: {exc}")
        return 2
    except subprocess.CalledProcessError as exc:
        say(f"error: {exc.cmd[0]} failed (exit {exc.returncode})")
        return 2
    sys.stdout.flush()
    if os.getpid() != 1:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            say(f"cannot run {argv[0]}: {exc.strerror or exc}")
            return 127
    return supervise(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
