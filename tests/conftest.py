"""Shared pytest setup for envmgr's tests.

Sections (append new shared fixtures under a section of their own):

* import path -- makes ``tests/fixture_index.py`` importable as
  ``fixture_index`` whatever pytest's import mode;
* markers -- ``online``, ``slow``, ``podman``;
* hermetic environment (autouse) -- no ``PIP_*``/``UV_*``/``ENVMGR_*``
  from the caller's shell, no pip/uv config files, per-test envmgr cache;
* fixture index -- ``fixture_index`` (session, read-only) and
  ``fresh_index`` (per test, mutable);
* scripted HTTP servers -- ``scripted`` (tests/loopback.py's ``Scripted``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

# ---------------------------------------------------------------------------
# Import path
# ---------------------------------------------------------------------------

_TESTS_DIR = Path(__file__).resolve().parent
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

from fixture_index import FixtureIndex  # noqa: E402

# ---------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------

MARKERS = {
    "online": "talks to the real public package index over the network",
    "slow": "takes more than a few seconds",
    "podman": "needs a working podman",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


# ---------------------------------------------------------------------------
# Hermetic environment
# ---------------------------------------------------------------------------

#: Variables of these prefixes are removed from every test's environment.
STRIPPED_ENV_PREFIXES = ("PIP_", "UV_", "ENVMGR_", "DOCKER_", "SOURCE_DATE_EPOCH")


@pytest.fixture(scope="session")
def session_cache_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """uv's and pip's caches, shared by the whole session for speed.

    Sharing is safe: every fixture index gets its own port, and caches are
    keyed by URL.
    """
    return {
        "uv": tmp_path_factory.mktemp("uv-cache"),
        "pip": tmp_path_factory.mktemp("pip-cache"),
        "tmp": tmp_path_factory.mktemp("tmp"),
    }


@pytest.fixture(autouse=True)
def hermetic_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    session_cache_dirs: dict[str, Path],
) -> dict[str, str]:
    """Keep the caller's pip/uv/envmgr settings out of every test.

    Strips ``PIP_*``, ``UV_*`` and ``ENVMGR_*``, then sets:
    ``ENVMGR_CACHE_DIR`` (new per test), ``UV_CACHE_DIR`` and
    ``PIP_CACHE_DIR`` and ``TMPDIR`` (per session), ``UV_NO_CONFIG=1``,
    ``UV_PYTHON_DOWNLOADS=never``, ``PIP_CONFIG_FILE=/dev/null`` (pip then
    reads no config file at all: no machine-wide extra indexes or
    constraints), ``PIP_NO_INPUT=1`` and ``PIP_DISABLE_PIP_VERSION_CHECK=1``.
    Returns what it set.
    """
    for key in list(os.environ):
        if key.startswith(STRIPPED_ENV_PREFIXES):
            monkeypatch.delenv(key, raising=False)
    env = {
        "ENVMGR_CACHE_DIR": str(tmp_path_factory.mktemp("envmgr-cache")),
        "UV_CACHE_DIR": str(session_cache_dirs["uv"]),
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CACHE_DIR": str(session_cache_dirs["pip"]),
        # Subprocesses' temporary files under pytest's own folder: a sync the fault tests
        # kill -9 leaves its temporary folder there, not in the machine's /tmp.
        "TMPDIR": str(session_cache_dirs["tmp"]),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# ---------------------------------------------------------------------------
# Fixture index (see tests/fixture_index.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fixture_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixtureIndex]:
    """The PyTorch-shaped + PyPI-shaped index, built and served once.

    Shared by the session: treat it as read-only (``clear_log()`` is fine).
    Tests that add/remove packages, go offline, require credentials or
    inject faults use ``fresh_index``.
    """
    index = FixtureIndex(tmp_path_factory.mktemp("fixture-index"))
    yield index
    index.stop()


@pytest.fixture
def fresh_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixtureIndex]:
    """A private FixtureIndex (own directory and port) that a test may mutate."""
    index = FixtureIndex(tmp_path_factory.mktemp("fresh-index"))
    yield index
    index.stop()


# ---------------------------------------------------------------------------
# Scripted HTTP servers (see tests/loopback.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator:
    """``scripted(*answers, protocol=..., close=...)`` starts a ``loopback.Scripted`` server on
    127.0.0.1; every one started is closed after the test."""
    from loopback import Scripted

    servers = []

    def make(*script, **kw):
        servers.append(Scripted(*script, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


# ---------------------------------------------------------------------------
# CI: no skips
# ---------------------------------------------------------------------------
# Tests skip when a tool they need (podman, mmdebstrap, a torch wheel, the network) is
# missing on a developer's machine. CI installs every one of them (.ci/run), so there a skip
# means a broken setup hiding untested work: it is reported as a failure instead.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where .ci/run installs everything the tests need: {reason}"
