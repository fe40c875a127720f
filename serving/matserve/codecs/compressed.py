"""gzip- and bzip2-compressed detector files (``.tif.gz``, ``.cbf.bz2``, ``.edf.gz``...), inflated within a bound.

Recognised from the bytes (gzip ``\\x1f\\x8b\\x08``; bzip2 ``BZh1``-``BZh9`` followed by a block or end-of-stream
magic), never from the name. The output is inflated in chunks of at most :data:`CHUNK_BYTES`, and refused as
soon as it would pass the caller's bound (:class:`TooLarge`, a 413): a small "bomb" never allocates more than
the bound plus one chunk. Concatenated members/streams are read (``cat a.gz b.gz`` is one gzip file); trailing
bytes that are not another member, a truncated stream or corrupt data are refused (:class:`CorruptCompressed`).
One level only: the inflated bytes are sniffed as a detector file, and a compressed file inside a compressed
file is refused.
"""

from __future__ import annotations

import bz2
import zlib
from typing import Any

from matserve.codecs.scattering import ImageError

CHUNK_BYTES = 1 << 20
"""Bytes of compressed input fed to the decompressor at a time, and most output produced per step."""
_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_BLOCK = (b"1AY&SY", b"\x17rE8P\x90")


class TooLarge(ImageError):
    """The inflated bytes would pass the bound (mapped to 413 by the caller's error class)."""


class CorruptCompressed(ImageError):
    """A truncated or corrupt gzip/bzip2 stream (HTTP 422)."""


def compression_of(data: bytes) -> str | None:
    """``"gzip"`` or ``"bzip2"`` from the first bytes, else ``None``."""
    if data[:3] == _GZIP_MAGIC:
        return "gzip"
    if len(data) >= 10 and data[:3] == b"BZh" and data[3:4] in b"123456789" and data[4:10] in _BZIP2_BLOCK:
        return "bzip2"
    return None


def _new(kind: str) -> Any:
    return zlib.decompressobj(wbits=31) if kind == "gzip" else bz2.BZ2Decompressor()


def inflate(data: bytes, kind: str, max_bytes: int, name: str) -> bytes:
    """The inflated bytes of a gzip or bzip2 file, at most ``max_bytes``.

    Parameters
    ----------
    data : bytes
        The compressed file.
    kind : str
        ``"gzip"`` or ``"bzip2"`` (:func:`compression_of`).
    max_bytes : int
        Most inflated bytes accepted.
    name : str
        Names the file in messages.

    Raises
    ------
    TooLarge
        The output would pass ``max_bytes`` (found before it is allocated: at most one chunk more).
    CorruptCompressed
        Truncated, corrupt, or with trailing bytes that are not another member.
    """
    parts: list[bytes] = []
    total = 0
    pos = 0
    decompressor = _new(kind)
    try:
        while True:
            if kind == "gzip" and decompressor.unconsumed_tail:
                feed = decompressor.unconsumed_tail
            elif kind == "gzip" or decompressor.needs_input:
                feed, pos = data[pos : pos + CHUNK_BYTES], pos + CHUNK_BYTES
            else:
                feed = b""
            chunk = decompressor.decompress(feed, CHUNK_BYTES)
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"{name}: the {kind} file inflates to more than {max_bytes} bytes, more than the "
                               "frames and pixels one request may carry; send it uncompressed or split it")  # fmt: skip
            parts.append(chunk)
            if decompressor.eof:
                rest = bytes(decompressor.unused_data) + data[pos:]
                if not rest:
                    break
                if compression_of(rest) != kind:
                    raise CorruptCompressed(f"{name}: {len(rest)} bytes after the end of the {kind} stream are not "
                                            f"another {kind} member; is the file corrupt?")  # fmt: skip
                data, pos, decompressor = rest, 0, _new(kind)
                continue
            starved = not decompressor.unconsumed_tail if kind == "gzip" else decompressor.needs_input
            if not chunk and starved and pos >= len(data):
                raise CorruptCompressed(f"{name}: the {kind} stream is truncated (it ends before its end marker); "
                                        "is the upload complete?")  # fmt: skip
    except (zlib.error, OSError, EOFError) as error:
        raise CorruptCompressed(f"{name}: corrupt {kind} data ({error}); is the file complete?") from None
    return b"".join(parts)
