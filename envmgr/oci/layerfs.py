"""Reading image layers back without unpacking them: each layer decompressed by its media
type and walked as a tar stream, member names normalised, whiteouts honoured.

A layer is given as ``(media_type, opener)``: ``opener()`` returns the stored blob as a binary
file (a path in the blob store, a member of an archive read in place, bytes in a test). Two
views of what the layers make:

- ``merged``: the whole filesystem, bottom-up (``sources.inspect`` finds the base's python
  and users in it);
- ``find_in_layers``: one file, searched top-down (the lock an exported image carries, read
  by ``gpu.imagelock``).
"""

from __future__ import annotations

import posixpath
import tarfile
from contextlib import contextmanager
from pathlib import PurePosixPath

from ..core.errors import UserError
from . import image as im

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"  # the folder's lower layers are hidden; its own layer's files show


def decompress(raw, media_type: str):
    """``raw`` (the stored blob) as a stream of tar bytes."""
    mt = im.oci_layer_type(media_type)
    if mt == im.OCI_LAYER_GZIP:
        from isal import igzip

        return igzip.open(raw, "rb")
    if mt == im.OCI_LAYER_ZSTD:
        import zstandard

        # zstd:chunked (podman's default on newer Fedora/RHEL) is many frames, one a file,
        # then a skippable frame with its table of contents: read across all of them.
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def clean(name: str) -> str:
    """A member's name as a relative image path (``./a/b/`` -> ``a/b``); '' for the root."""
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "" if name in ("", ".") else posixpath.normpath(name)


@contextmanager
def members(media_type: str, opener):
    """The layer's members in tar order as ``(clean name, TarInfo, TarFile)``, streamed: a
    file's bytes are ``tf.extractfile(member)`` while it is the current member."""
    with opener() as raw, decompress(raw, media_type) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        yield ((name, m, tf) for m in tf if (name := clean(m.name)))


def merged(image: im.Image, small: frozenset = frozenset(), *, where: str = "image") -> tuple[dict, dict]:
    """The filesystem ``image``'s layers make: path -> (kind, link target), kind one of
    dir/symlink/file; plus the bytes of the regular files named in ``small`` (under 1 MiB)."""
    fs: dict[str, tuple[str, str]] = {}
    files: dict[str, bytes] = {}
    for layer in image.layers:
        try:
            with members(layer.media_type, lambda path=layer.path: open(path, "rb")) as entries:
                for name, m, tf in entries:
                    base = posixpath.basename(name)
                    parent = posixpath.dirname(name)
                    if base == OPAQUE:
                        for k in [k for k in fs if k.startswith(parent + "/")]:
                            del fs[k]
                        continue
                    if base.startswith(WHITEOUT):
                        gone = posixpath.join(parent, base[len(WHITEOUT):])
                        for k in [k for k in fs if k == gone or k.startswith(gone + "/")]:
                            del fs[k]
                        files.pop(gone, None)
                        continue
                    kind = "dir" if m.isdir() else "symlink" if m.issym() else "file"
                    fs[name] = (kind, m.linkname if m.issym() else "")
                    if name in small and m.isfile() and m.size < 1 << 20:
                        files[name] = tf.extractfile(m).read()  # type: ignore[union-attr]
                    elif name in small and m.islnk():
                        files.pop(name, None)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"{where} layer {layer.digest} cannot be read: {exc}")
    return fs, files


def find_in_layers(layers, path: str) -> bytes | None:
    """The file ``path`` in an image's layers ``[(media_type, opener)]`` bottom-up: searched
    top-down; a whiteout of it (or of a folder above it) above the file means it was removed."""
    rel = clean(path)
    parents = [str(p) for p in PurePosixPath(rel).parents if str(p) != "."]
    hidden = {posixpath.join(posixpath.dirname(p), WHITEOUT + posixpath.basename(p)) for p in (rel, *parents)}
    opaque = {posixpath.join(p, OPAQUE) for p in parents}
    for media_type, opener in reversed(list(layers)):
        with members(media_type, opener) as entries:
            gone = False
            for name, m, tf in entries:
                if name == rel and m.isfile():
                    return tf.extractfile(m).read()  # type: ignore[union-attr]
                if name in hidden or name in opaque:
                    gone = True  # an opaque folder still shows its own layer's files: read on
            if gone:
                return None
    return None
