"""Checks every HDF5 upload passes before any of its data is read: self-contained, decodable, bounded.

An HDF5 file can make the library open other files: a dataset with *external storage* (its bytes live in a raw
file named in the header, e.g. ``/etc/passwd``), a *virtual dataset* (VDS: its bytes are mapped from datasets of
other HDF5 files), an *external link* (a group member that is an object of another HDF5 file), a *user-defined
link* (resolved by a callback the library may load) and a filter the library does not know (its ``H5PL`` plugin
search opens the shared libraries of the plugin directory). An upload may use none of these: every reader of
uploaded HDF5 bytes (the scattering sorter's :func:`matserve.codecs.detector_files.read_frames`, the EBSD scan
reader of :mod:`matserve.api.ebsd`) opens the bytes in memory and calls :func:`check_upload` first.

:func:`check_upload` only reads the file's structure (links, dataset creation properties, shapes); it never
resolves a link other than a hard one, never opens a named file and never reads a dataset, so its answer (and
message) is the same whether or not the file an upload names exists, and the message never repeats the name.

It also bounds what reading may cost: at most :data:`MAX_LINKS` links, chunks of at most
:data:`MAX_CHUNK_BYTES` (HDF5 decompresses a whole chunk into a buffer of its declared size, up to 4 GiB), and
optionally the decoded bytes of all datasets together (readers such as kikuchipy's read every header dataset).

:func:`scrub_server_paths` removes this server's paths from library messages that are sent back.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

MAX_LINKS = 100_000
"""Most links (groups, datasets and other members, summed over every group) an uploaded HDF5 file may have."""
MAX_CHUNK_BYTES = 128 * 2**20
"""Largest decoded chunk of a chunked dataset, bytes (an Eiger2 16M frame of uint32 is 72 MiB)."""
BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset"}
"""Filters built into every HDF5 library (id -> name)."""
_NAME_CHARS = 200
"""In-file paths are quoted in messages up to this many characters."""


class Hdf5Refused(ValueError):
    """An HDF5 upload refused before any data was read.

    Parameters
    ----------
    message : str
        Why, naming the in-file path (never a file the upload refers to).
    too_large : bool
        Over a size limit (HTTP 413) rather than unsafe or undecodable (HTTP 422).
    """

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@functools.cache
def decodable_filters() -> dict[int, str]:
    """Filter ids this server decodes (id -> name): the built-in ones, szip and LZF when the library has them,
    and those ``hdf5plugin`` registers (Eiger bitshuffle/LZ4, Blosc, Zstd, ...)."""
    import h5py
    import hdf5plugin

    filters = dict(BUILTIN_FILTERS)
    for code, name in ((4, "szip"), (32000, "lzf")):
        if h5py.h5z.filter_avail(code):  # built in or registered by h5py: answered without a plugin search
            filters[code] = name
    filters.update({code: name for name, code in hdf5plugin.FILTERS.items()})
    return filters


def _quoted(name: bytes | str) -> str:
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    text = "/" + text.lstrip("/")
    return text if len(text) <= _NAME_CHARS else text[:_NAME_CHARS] + "..."


def _outside(what: str, path: str, construct: str) -> Hdf5Refused:
    """The refusal of a construct that reads another file (same message whatever that file is)."""
    hint = ""
    if construct == "an external link":
        hint = " (a master file? send the data file(s) instead: their /entry/data/data holds the frames)"
    return Hdf5Refused(
        f"{what} refers to data outside itself: {path} is {construct}{hint}. An uploaded HDF5 file must be "
        "self-contained: external storage, virtual datasets, external links and user-defined links are refused "
        "without being followed; copy the data into the file (e.g. with h5repack or h5py) and send that"
    )


def check_upload(
    handle: Any,
    what: str,
    max_dataset_bytes: int | None = None,
    limit_name: str = "",
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    max_links: int = MAX_LINKS,
) -> None:
    """Refuse an HDF5 upload that refers to other files, needs an unknown filter or is too large to read.

    Call it right after opening the bytes, before any path is looked up (a path lookup resolves the links it
    crosses, external ones included).

    Parameters
    ----------
    handle : h5py.File
        The upload, opened read-only from memory.
    what : str
        How messages name the upload (``the body``, ``scan.h5``).
    max_dataset_bytes : int, optional
        Most bytes all datasets together may decode to (shape x item size); ``None``: not bounded here (the
        caller bounds what it reads).
    limit_name : str
        Where ``max_dataset_bytes`` comes from, for the message (e.g. the setting's name).
    max_chunk_bytes : int
        Largest decoded chunk, bytes (a chunk is decompressed whole).
    max_links : int
        Most links in the file, summed over its groups.

    Raises
    ------
    Hdf5Refused
        Naming the first offending object by its path in the file; ``too_large`` for the size limits.
    """
    from h5py import h5d, h5g, h5l, h5o

    fid = handle.id
    groups: list[bytes] = [b"."]
    datasets: list[bytes] = []

    def visit(name: bytes, info: Any) -> bool | None:
        if info.type == h5o.TYPE_GROUP:
            groups.append(name)
        elif info.type == h5o.TYPE_DATASET:
            datasets.append(name)
        return True if len(groups) + len(datasets) > max_links else None

    h5o.visit(fid, visit, info=True)  # objects reached through hard links only; nothing is resolved or read
    links = 0
    offending: list[tuple[bytes, int]] = []  # (name, link type) of the first link that leaves the file

    def link(name: bytes, info: Any) -> bool | None:
        nonlocal links
        links += 1
        if info.type not in (h5l.TYPE_HARD, h5l.TYPE_SOFT):
            offending.append((name, info.type))
            return True
        return True if links > max_links else None

    for group in groups:
        if links > max_links:
            break
        group_id = h5g.open(fid, group if group != b"." else b"/")  # kept referenced while its links are iterated
        group_id.links.iterate(link, info=True)
        if offending:
            name, kind = offending[0]
            path = _quoted(name if group == b"." else group + b"/" + name)
            construct = "an external link" if kind == h5l.TYPE_EXTERNAL else "a user-defined link"
            raise _outside(what, path, construct)
    if links > max_links or len(groups) + len(datasets) > max_links:
        raise Hdf5Refused(f"{what} has more than {max_links} HDF5 links (groups and datasets); an upload may have "
                          f"at most {max_links}", too_large=True)  # fmt: skip
    total = 0
    for name in datasets:
        path = _quoted(name)
        dataset = h5d.open(fid, name)
        plist = dataset.get_create_plist()
        layout = plist.get_layout()
        if layout == h5d.VIRTUAL:
            raise _outside(what, path, "a virtual dataset")
        if plist.get_external_count() > 0:
            raise _outside(what, path, "a dataset with external storage")
        for index in range(plist.get_nfilters()):
            code = int(plist.get_filter(index)[0])
            if code not in decodable_filters():
                known = ", ".join(sorted(set(decodable_filters().values())))
                raise Hdf5Refused(f"{what}: the dataset {path} uses HDF5 filter {code}, which this server does not "
                                  f"decode (it decodes {known})")  # fmt: skip
        itemsize = int(dataset.get_type().get_size())
        if layout == h5d.CHUNKED:
            chunk_bytes = math.prod(int(s) for s in plist.get_chunk()) * itemsize
            if chunk_bytes > max_chunk_bytes:
                raise Hdf5Refused(f"{what}: the dataset {path} has chunks of {chunk_bytes} bytes when decoded, over "
                                  f"the limit of {max_chunk_bytes} bytes per chunk", too_large=True)  # fmt: skip
        dims = dataset.get_space().get_simple_extent_dims()
        total += math.prod(int(s) for s in dims) * itemsize
        if max_dataset_bytes is not None and total > max_dataset_bytes:
            raise Hdf5Refused(
                f"{what}: its datasets decode to more than {max_dataset_bytes} bytes (at {path}: {total} bytes so "
                f"far), over the limit{f' ({limit_name})' if limit_name else ''}; send a smaller file",
                too_large=True,
            )


@functools.cache
def _server_path_pattern() -> re.Pattern[str]:
    roots = {tempfile.gettempdir(), sys.prefix, sys.base_prefix, os.getcwd(), os.path.expanduser("~"),
             str(Path(__file__).resolve().parents[3])}  # fmt: skip
    roots = {root.rstrip("/") for root in roots if len(root.rstrip("/")) > 1}
    alternatives = "|".join(re.escape(root) for root in sorted(roots, key=len, reverse=True))
    return re.compile(rf"(?:{alternatives})(?:/[^\s'\",;:()\[\]]*)?")


def scrub_server_paths(text: str) -> str:
    """``text`` with this server's paths (temporary directory, Python prefix, working and home directories, the
    repository) replaced by ``<server path>``: library messages sent back to clients must not show them."""
    return _server_path_pattern().sub("<server path>", text)
