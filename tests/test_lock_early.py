"""``lock.early``: a plain ``envmgr lock NAME`` starts uv from the last lock's recipe before it has
read the profile, and uses that uv only when it is exactly the one it would start itself.

Each test checks one promise: a recipe is kept after a plain lock and a lock that starts from it
writes the same bytes; a recipe that no longer matches (an edited profile, a changed command)
changes nothing in the result and leaves no uv and no folder behind; a recipe naming another
program than envmgr's uv is never run; no recipe keeps an index's credentials.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from fixture_index import FixtureIndex
from test_lock import envmgr, make_project, ok, profile_text

from envmgr.lock import early


def recipes(cache: Path) -> list[Path]:
    return sorted((cache / "lock-recipes").glob("*.json"))


def leftovers(tmp: Path) -> list[str]:
    return [n for n in os.listdir(tmp) if n.startswith("envmgr-lock-")]


def text(index: FixtureIndex, packages: tuple[str, ...] = ("numpy",)) -> str:
    """torch from the default index: one uv run, no local routing index (whose port would differ)."""
    return profile_text(index, "cu126", torch=">=2.7,<2.8", torch_index_url=index.pypi_url, packages=packages)


def project(index: FixtureIndex, root: Path) -> Path:
    return make_project(root, {"default": text(index)})


def locked(index: FixtureIndex, tmp_path: Path) -> tuple[Path, dict[str, str], Path, Path]:
    """A project locked once with a cache and a TMPDIR of its own: (project, env, cache, tmp)."""
    proj = project(index, tmp_path / "p")
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    env = {"ENVMGR_CACHE_DIR": str(cache), "TMPDIR": str(tmp)}
    ok(envmgr(proj, "lock", **env))
    return proj, env, cache, tmp


def test_a_plain_lock_keeps_its_command_and_the_next_starts_from_it(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj, env, cache, tmp = locked(fresh_index, tmp_path)
    lock_file = proj / "locks" / "pylock.default.toml"
    first = lock_file.read_bytes()
    [recipe_file] = recipes(cache)
    recipe = json.loads(recipe_file.read_text())
    assert recipe["argv"][1:3] == ["pip", "compile"] and "numpy" in recipe["pyproject"]
    assert [Path(f) for f in recipe["files"]] == [proj / "profiles" / "default.toml"]
    lock_file.unlink()
    ok(envmgr(proj, "lock", **env))  # from the recipe
    assert lock_file.read_bytes() == first
    ok(envmgr(proj, "lock", **env))  # a re-lock: the previous lock handed to the early uv as well
    assert lock_file.read_bytes() == first
    assert leftovers(tmp) == []


def test_an_edited_profile_or_a_changed_command_is_not_started_early(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj, env, cache, tmp = locked(fresh_index, tmp_path)
    [recipe_file] = recipes(cache)
    # the same profile bytes, but a recipe whose pyproject asks for something else: uv starts early
    # from it, the lock sees its own command differ, stops that uv and resolves the profile's
    recipe = json.loads(recipe_file.read_text())
    recipe["pyproject"] = recipe["pyproject"].replace('"numpy"', '"fixture-app"')
    assert "fixture-app" in recipe["pyproject"]
    recipe_file.write_text(json.dumps(recipe))
    lock_file = proj / "locks" / "pylock.default.toml"
    lock_file.unlink()
    ok(envmgr(proj, "lock", **env))
    names = {p["name"] for p in _packages(lock_file)}
    assert "numpy" in names and "fixture-app" not in names
    assert leftovers(tmp) == []
    assert json.loads(recipe_file.read_text())["pyproject"] != recipe["pyproject"]  # the real command kept again
    # an edited profile: the recipe's files differ, nothing starts early, the lock has the edit
    (proj / "profiles" / "default.toml").write_text(text(fresh_index, ("numpy", "fixture-app")))
    ok(envmgr(proj, "lock", **env))
    assert "fixture-app" in {p["name"] for p in _packages(lock_file)}
    assert leftovers(tmp) == []


def test_no_recipe_is_kept_for_an_index_with_credentials(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """A command naming an index with credentials (literal, or from ``${VAR}``) is not written to the cache."""
    cache = tmp_path / "cache"
    fresh_index.credentials = ("envmgr-bot", "s3cr3t")  # the index now asks for them
    url = fresh_index.with_credentials(fresh_index.pypi_url)
    parts = urlsplit(fresh_index.pypi_url)
    from_env = urlunsplit(parts._replace(netloc="${ENVMGR_TEST_USER}:${ENVMGR_TEST_TOKEN}@" + parts.netloc))
    for i, (index_url, env) in enumerate([(url, {}), (from_env, {"ENVMGR_TEST_USER": "envmgr-bot",
                                                                  "ENVMGR_TEST_TOKEN": "s3cr3t"})]):
        proj = make_project(tmp_path / f"p{i}", {"default": profile_text(
            fresh_index, "cu126", torch=">=2.7,<2.8", torch_index_url=index_url, index_url=index_url)})
        ok(envmgr(proj, "lock", ENVMGR_CACHE_DIR=str(cache), **env))
        assert recipes(cache) == []


def _packages(lock_file: Path) -> list[dict]:
    import tomllib

    return tomllib.loads(lock_file.read_text())["packages"]


def test_take_hands_over_only_the_same_command_and_stops_any_other(tmp_path: Path, monkeypatch) -> None:
    """In-process: the early uv is the caller's only for exactly its command line, environment,
    pyproject and previous lock; otherwise it is killed and its folder removed."""
    monkeypatch.setenv("ENVMGR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("ENVMGR_RESOLVER", raising=False)
    proj = tmp_path / "p"
    (proj / "profiles").mkdir(parents=True)
    profile = proj / "profiles" / "default.toml"
    profile.write_text('variant = "cpu"\n')
    from envmgr.venv.uvtool import clean_env, uv_bin

    argv = [uv_bin(), "--version"]
    early.remember(proj, "default", [profile], argv, "[project]\n")
    for same in (True, False):
        early.start(proj, "default")
        assert leftovers(tmp_path) == [f"envmgr-lock-default-{os.getpid()}"]
        got = early.take(argv if same else [*argv, "--quiet"], clean_env(), "[project]\n", None)
        if same:
            proc, folder = got
            proc.communicate()
            assert proc.returncode == 0 and (folder / "pyproject.toml").read_text() == "[project]\n"
            import shutil

            shutil.rmtree(folder)
        else:
            assert got is None
        assert leftovers(tmp_path) == []
    profile.write_text('variant = "cu126"\n')  # edited: nothing starts
    early.start(proj, "default")
    assert early._early is None and leftovers(tmp_path) == []


def test_a_recipe_naming_another_program_is_never_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ENVMGR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    proj = tmp_path / "p"
    (proj / "profiles").mkdir(parents=True)
    profile = proj / "profiles" / "default.toml"
    profile.write_text('variant = "cpu"\n')
    marker = tmp_path / "ran"
    early.remember(proj, "default", [profile], [sys.executable, "-c", f"open({str(marker)!r}, 'w')"], "")
    early.start(proj, "default")
    early.discard()
    assert not marker.exists() and leftovers(tmp_path) == []


def test_lock_recipes_are_pruned(tmp_path: Path, monkeypatch) -> None:
    """The cache keeps the KEEP most recently written lock recipes, as it does sync's."""
    monkeypatch.setenv("ENVMGR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(early, "KEEP", 3)
    for i in range(5):
        proj = tmp_path / f"p{i}"
        (proj / "profiles").mkdir(parents=True)
        profile = proj / "profiles" / "default.toml"
        profile.write_text(f"# {i}\n")
        early.remember(proj, "default", [profile], ["uv", "pip", "compile"], "")
        [newest] = [r for r in recipes(tmp_path / "cache") if json.loads(r.read_text())["files"] == [str(profile)]]
        os.utime(newest, ns=(i * 10**9, i * 10**9))
    kept = sorted(json.loads(r.read_text())["files"][0] for r in recipes(tmp_path / "cache"))
    assert kept == [str(tmp_path / f"p{i}" / "profiles" / "default.toml") for i in (2, 3, 4)]
