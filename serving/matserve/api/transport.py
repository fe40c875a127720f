"""Reading request bodies, the same way for every model: content type, raw body, multipart form, file names.

Size and content-type limits are enforced before any of this runs (:class:`matserve.api.limits.RequestLimits`);
what is read here is at most the route's body limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from matserve.errors import InvalidInput, MalformedRequest, PayloadTooLarge

MAX_FORM_FIELDS = 50


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case (``""`` when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request) -> bytes | bytearray:
    """The request body: an NPY body as one ``bytearray`` (its arrays are views of it, so it is held once, not twice
    as ``request.body()`` briefly holds it), any other as ``bytes`` (decoders wrap it in ``io.BytesIO``, which
    shares ``bytes`` but copies a ``bytearray``)."""
    buffer = bytearray()
    async for chunk in request.stream():
        buffer += chunk
    return buffer if buffer.startswith(b"\x93NUMPY") else bytes(buffer)


@dataclass
class Form:
    """A parsed multipart body.

    Attributes
    ----------
    files : list of (str, str, bytes)
        File parts in order: ``(part name, file name, bytes)``; the file name is the part name when none was sent.
    fields : dict of str to str
        Form fields (each at most once).
    """

    files: list[tuple[str, str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def named(self, *, only: str | None = None, without: str | None = None) -> list[tuple[str, bytes]]:
        """File parts ``(file name, bytes)``: all, only those of part ``only``, or all but part ``without``."""
        return [(filename, data) for part, filename, data in self.files
                if (only is None or part == only) and (without is None or part != without)]  # fmt: skip


async def read_form(request: Request, max_files: int) -> Form:
    """The file parts and form fields of a multipart body: 413 over ``max_files`` parts, 422 for a field given
    twice, 400 when the body cannot be parsed."""
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except HTTPException as error:
        if "Too many files" in str(error.detail):
            raise PayloadTooLarge(f"too many file parts: at most {max_files} per request") from None
        raise MalformedRequest(f"the multipart body cannot be parsed: {error.detail}") from None
    parsed = Form()
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            parsed.files.append((key, value.filename or key, await value.read()))
            await value.close()
        else:
            if key in parsed.fields:
                raise InvalidInput(f"form field {key!r} is given twice")
            parsed.fields[key] = value
    return parsed


_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?("(?:[^"\\]|\\.)*"|[^;]+)""", re.IGNORECASE)


def body_filename(request: Request) -> str | None:
    """The file name of a body sent with ``Content-Disposition: attachment; filename="scan_0001.cbf"``, if any
    (its last path component, at most 200 characters); frames are then named after it instead of ``body``."""
    match = _FILENAME.search(request.headers.get("content-disposition", ""))
    if not match:
        return None
    value = match.group(1).strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    name = unquote(value).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or None


def release_memory() -> None:
    """Give free C-heap memory back to the system after a large request (glibc ``malloc_trim``; elsewhere a no-op).

    Decoded uploads are freed when a request ends, but glibc keeps freed blocks below its (adaptive, up to 32 MiB)
    mmap threshold in its arenas; trimming returns them so the process's RSS falls back.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None
