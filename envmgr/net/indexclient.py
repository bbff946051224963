"""A small client for the simple repository API (PEP 503 HTML, PEP 691 JSON).

Used where envmgr itself must read an index: the pip-tools backend (pins -> files with
their published hashes) and the routing index it serves to pip. Pages are parsed with the
stdlib; compatible files are picked with ``packaging.tags`` for the *target* python and
platform, not the host's.
"""

from __future__ import annotations

import html.parser
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from . import http
from .credentials import Auth

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_PAGE_OR_NONE = frozenset(http.OK) | {404}


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str  # absolute when parsed from a page; a rendered page may link relatively
    sha256: str | None
    size: int | None
    requires_python: str | None = None
    metadata: str | None = None  # PEP 658/714: "true" or "sha256=<hex>" when <url>.metadata exists

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict, str]] = []
        self._current: dict | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._current = dict(attrs)
            self._text = []

    def handle_data(self, data):
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._current is not None:
            self.anchors.append((self._current, "".join(self._text).strip()))
            self._current = None


def parse_html(text: str, page_url: str) -> list[IndexFile]:
    parser = _Anchors()
    parser.feed(text)
    out = []
    for attrs, label in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url = urljoin(page_url, href)
        base, _, fragment = url.partition("#")
        sha = None
        if fragment.startswith("sha256="):
            sha = fragment[len("sha256="):]
        filename = unquote(urlsplit(base).path.rsplit("/", 1)[-1]) or label
        size = attrs.get("data-size")
        meta = attrs.get("data-core-metadata") or attrs.get("data-dist-info-metadata")
        out.append(IndexFile(filename, base, sha, int(size) if size and size.isdigit() else None,
                             attrs.get("data-requires-python"), meta))
    return out


def render_html(project: str, files: list[IndexFile]) -> str:
    """A PEP 503 project page of ``files`` (what ``parse_html`` reads back): each link with its
    ``#sha256=`` fragment, ``data-requires-python`` and, where the index has it, PEP 658/714
    metadata; ``url`` may be relative to the page."""
    from html import escape

    rows = []
    for f in files:
        attrs = f' href="{escape(f.url + (f"#sha256={f.sha256}" if f.sha256 else ""))}"'
        if f.requires_python:
            attrs += f' data-requires-python="{escape(f.requires_python)}"'
        if f.metadata:  # pip and uv then read METADATA without downloading the wheel
            m = escape(f.metadata)
            attrs += f' data-dist-info-metadata="{m}" data-core-metadata="{m}"'
        rows.append(f"<a{attrs}>{escape(f.filename)}</a><br>")
    return ('<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.1">'
            f"<title>Links for {escape(project)}</title></head>\n<body><h1>Links for {escape(project)}</h1>\n"
            + "\n".join(rows) + "\n</body></html>\n")


def parse_json(data: dict, page_url: str) -> list[IndexFile]:
    out = []
    for f in data.get("files", []):
        url = urljoin(page_url, f["url"]).partition("#")[0]
        meta = f.get("core-metadata", f.get("dist-info-metadata"))
        if isinstance(meta, dict):
            meta = "sha256=" + meta["sha256"] if "sha256" in meta else "true"
        elif meta is True:
            meta = "true"
        else:
            meta = None
        out.append(IndexFile(f["filename"], url, f.get("hashes", {}).get("sha256"), f.get("size"),
                             f.get("requires-python"), meta))
    return out


def project_page(index_url: str, name: str, auth: Auth | None = None) -> list[IndexFile]:
    """Every file on ``index_url``'s page for project ``name`` ([] if the index has no page)."""
    page = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
    resp = http.small("GET", page, auth=auth, headers={"Accept": f"{JSON_TYPE}, text/html;q=0.1"}, ok=_PAGE_OR_NONE)
    if resp.status_code == 404:
        return []
    if resp.headers.get("Content-Type", "").startswith(JSON_TYPE):
        return parse_json(resp.json(), resp.url)
    return parse_html(resp.text, resp.url)


def target_tags(python: str, platform: str) -> list[Tag]:
    """Compatible tags, most specific first, for e.g. ("3.11", "linux-x86_64").

    Matches uv's ``--python-platform ARCH-manylinux_2_28``: manylinux up to glibc 2.28.
    """
    major, minor = (int(x) for x in python.split("."))
    os_name, arch = platform.split("-", 1)
    if os_name != "linux":
        raise ValueError(f"unsupported platform {platform}")
    plats = [f"manylinux_2_{m}_{arch}" for m in range(28, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    expanded = []
    for p in plats:
        expanded.append(p)
        m = int(p.split("_")[2])
        if m in legacy:
            expanded.append(f"{legacy[m]}_{arch}")
    return [*cpython_tags((major, minor), platforms=expanded), *compatible_tags((major, minor), platforms=expanded)]


def files_for(name: str, version: str, index_urls: list[str], tags: list[Tag]) -> list[IndexFile]:
    """The files of ``name==version`` usable on the target: compatible wheels, and sdists.

    Indexes are searched in order; the first that has the version wins (no mixing).
    """
    want = Version(version)
    tagset = set(tags)
    for url in index_urls:
        matches = []
        for f in project_page(url, name):
            try:
                if f.is_wheel:
                    n, v, _b, ftags = parse_wheel_filename(f.filename)
                    if v == want and ftags & tagset:
                        matches.append(f)
                elif f.filename.endswith((".tar.gz", ".zip")):
                    n, v = parse_sdist_filename(f.filename)
                    if v == want:
                        matches.append(f)
            except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
                continue
        if matches:
            return matches
    return []
