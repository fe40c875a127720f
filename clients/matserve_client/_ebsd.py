"""EBSD indexer (``POST /v1/ebsd/index``, ``/v1/ebsd/scan``): flows, helpers and the methods of both clients."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from . import _base, wire
from ._base import (
    AsyncDriver,
    BaseClient,
    Flow,
    SyncDriver,
    _optional_bar,
    check_answer,
    open_progress_bar,
    parse_body,
    results_of,
    same_doc,
)
from .ebsd_files import EbsdChunk, ebsd_chunks, encode_npy, load_scan, scan_kind
from .exceptions import InvalidInputError
from .models import EbsdIndexResult, EbsdPixelError, EbsdScanResult

EBSD_CHUNK_PATTERNS = 1024
"""EBSD patterns per ``/v1/ebsd/index`` request (the server accepts up to 4096 by default)."""
EBSD_REFINE_CHUNK_PATTERNS = 64
"""EBSD patterns per request with ``refine=True`` (refinement runs at roughly 100 patterns/s)."""
EBSD_SCAN_BLOCK_PATTERNS = 4096
"""Patterns per row block of a scan sent to ``/v1/ebsd/scan`` (256 with refinement, the server's limit); fewer
when the block would be over :data:`~matserve_client.ebsd_files.EBSD_MAX_PIXELS` decoded pixels (read from
:mod:`._base` at each call)."""
EBSD_SCAN_REFINE_BLOCK_PATTERNS = 256


def _shifted(block: wire.EbsdScanResponse, row_offset: int) -> wire.EbsdScanResponse:
    """The same block with its error rows counted from the scan's first row."""
    errors = [e.model_copy(update={"row": e.row + row_offset}) for e in block.errors]
    return block.model_copy(update={"errors": errors})


def _scan_result(blocks: list[wire.EbsdScanResponse]) -> EbsdScanResult:
    """Row blocks stitched into one scan."""
    first = blocks[0]
    rows = sum(b.rows for b in blocks)
    weights = [b.rows * b.cols for b in blocks]
    pc = [sum(b.pc[i] * w for b, w in zip(blocks, weights, strict=True)) / max(sum(weights), 1) for i in range(3)]

    def stacked(name: str) -> Any:
        parts = [getattr(b, name) for b in blocks]
        return None if any(p is None for p in parts) else [row for part in parts for row in part]

    return EbsdScanResult(
        rows=rows, cols=first.cols, euler_bunge_deg=stacked("euler_bunge_deg"), quaternion=stacked("quaternion"),
        confidence=stacked("confidence"), expected_error_deg=stacked("expected_error_deg"),
        refinement_score=stacked("refinement_score"), errors=[EbsdPixelError(**e.model_dump()) for b in blocks for e in b.errors],
        ipf_z_rgb=stacked("ipf_z_rgb"), pc=[round(v, 6) for v in pc], refined=first.refined, model=first.model,
        version=first.version,
    )  # fmt: skip


def _pc_rows(pc: Any) -> list[Any] | None:
    """``pc`` as nested lists when it holds one PC per pattern (2-D or 3-D), else ``None`` (one PC, or none)."""
    if pc is None:
        return None
    values = pc.tolist() if hasattr(pc, "tolist") else pc
    if isinstance(values, Sequence) and values and isinstance(values[0], Sequence):
        return list(values)
    return None


def _ebsd_params(pc: Any, refine: bool, version: str | None, static_background: bool) -> dict[str, str]:
    """Query parameters of an EBSD request (one PC for every pattern as ``x,y,z``)."""
    params: dict[str, str] = {}
    if pc is not None:
        values = pc.tolist() if hasattr(pc, "tolist") else list(pc)
        if len(values) != 3:
            raise ValueError(f"pc is [PCx, PCy, PCz] (or one such triple per pattern); got {values!r}")
        params["pc"] = ",".join(repr(float(v)) for v in values)
    if refine:
        params["refine"] = "true"
    if static_background:
        params["static_background"] = "true"
    if version is not None:
        params["version"] = version
    return params


_SOURCE_INDEX = re.compile(r"(.*)\[(\d+)\]")


def _file_sources(files: list[Path], results: list[dict[str, Any]]) -> list[str]:
    """The caller's path (and page) of each result of a multipart request, from the server's ``source``
    (``name`` for a one-pattern file, ``name[k]`` for the k-th pattern of a multi-pattern one)."""
    sources: list[str] = []
    index = -1
    for item in results:
        match = _SOURCE_INDEX.fullmatch(str(item.get("source") or ""))
        page = int(match.group(2)) if match else None
        if page is None or page == 0 or index < 0:
            index += 1
        path = files[min(index, len(files) - 1)]
        sources.append(str(path) if page is None else f"{path}[{page}]")
    return sources


def _mime(path: Path) -> str:
    return {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(path.suffix.lower(),
                                                                                    "application/octet-stream")  # fmt: skip


class _FileUpload(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A file sent in 1 MiB pieces, moving a progress bar (re-readable: a retry sends it again)."""

    def __init__(self, path: Path, bar: Any) -> None:
        self.path = path
        self.bar = bar

    def _pieces(self) -> Iterator[bytes]:
        if self.bar is not None:
            self.bar.reset()
        with open(self.path, "rb") as handle:
            while piece := handle.read(2**20):
                if self.bar is not None:
                    self.bar.update(len(piece))
                yield piece

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces():
            yield piece


class _EbsdFlows(BaseClient):
    """The EBSD flows (no I/O)."""

    def _ebsd_index_flow(
        self,
        patterns: Any,
        pc: Any,
        refine: bool,
        version: str | None,
        chunk_size: int | None,
        progress: bool,
        static_background: bool,
    ) -> Flow[list[EbsdIndexResult]]:
        """POST patterns in chunks (npy bodies, or multipart for image files), results in input order."""
        size = chunk_size or (EBSD_REFINE_CHUNK_PATTERNS if refine else EBSD_CHUNK_PATTERNS)
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        per_pattern = _pc_rows(pc)
        bar = open_progress_bar(None, unit="pattern", desc="ebsd") if progress else None
        results: list[EbsdIndexResult] = []
        pinned = version
        try:
            for chunk in ebsd_chunks(patterns, size):
                start = len(results)
                params = _ebsd_params(None if per_pattern is not None else pc, refine, pinned, static_background)
                build = self._ebsd_index_request(chunk, params, per_pattern, start, refine)
                try:
                    response = yield from self._request("POST", "/v1/ebsd/index", build=build)
                except InvalidInputError as exc:
                    what = (f"patterns {start}-{start + len(chunk.array) - 1}" if chunk.array is not None
                            else f"files {', '.join(str(p) for p in chunk.files)}")  # fmt: skip
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the request of your {what} (its patterns[0] is your pattern {start}): {exc.message}",
                        response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, wire.EbsdIndexResponse)
                answered = results_of(payload)
                if chunk.array is not None:
                    check_answer(response, len(chunk.array), "patterns", len(payload.results), pinned, payload.version)
                    sources = chunk.sources
                else:
                    check_answer(response, len(payload.results), "patterns", len(payload.results), pinned,
                                 payload.version)  # fmt: skip
                    sources = _file_sources(chunk.files, answered)
                pinned = payload.version
                for item, source in zip(answered, sources, strict=True):
                    results.append(EbsdIndexResult(**{**item, "source": source}, model=payload.model,
                                                   version=payload.version))  # fmt: skip
                if bar is not None:
                    bar.update(len(payload.results))
            if per_pattern is not None and len(per_pattern) != len(results):
                raise ValueError(f"pc has {len(per_pattern)} rows but there are {len(results)} patterns")
            return results
        finally:
            if bar is not None:
                bar.close()

    def _ebsd_index_request(
        self, chunk: EbsdChunk, params: dict[str, str], per_pattern: list[Any] | None, start: int, refine: bool
    ) -> Callable[[], httpx.Request]:
        timeout = self._long_timeout() if refine else self._http.timeout
        if chunk.array is not None:
            data = encode_npy(chunk.array)
            if per_pattern is None:
                return lambda: self._http.build_request(
                    "POST", "/v1/ebsd/index", content=data, params=params, timeout=timeout,
                    headers={"Content-Type": "application/x-npy"},
                )  # fmt: skip
            rows = per_pattern[start : start + len(chunk.array)]
            if len(rows) != len(chunk.array):
                raise ValueError(f"pc has {len(per_pattern)} rows, fewer than the patterns")
            fields = {"pc": json.dumps(rows)}
            return lambda: self._http.build_request(
                "POST", "/v1/ebsd/index", files=[("files", ("patterns.npy", data, "application/x-npy"))],
                data=fields, params=params, timeout=timeout,
            )  # fmt: skip
        if per_pattern is not None:
            raise ValueError("a PC per pattern needs arrays or .npy files (TIFF pages are counted by the server); "
                             "give one pc for all image files")  # fmt: skip
        parts = [("files", (path.name, path.read_bytes(), _mime(path))) for path in chunk.files]
        return lambda: self._http.build_request("POST", "/v1/ebsd/index", files=parts, params=params, timeout=timeout)

    def _ebsd_scan_flow(
        self,
        path_or_array: Any,
        pc: Any,
        refine: bool,
        version: str | None,
        progress: bool,
        chunk_rows: int | None,
        static_background: bool,
    ) -> Flow[EbsdScanResult]:
        """Index a scan: an HDF5 file uploaded as it is, or an array sent in row blocks and stitched."""
        timeout = self._long_timeout()
        if scan_kind(path_or_array) == "hdf5":
            path = Path(path_or_array)
            size = path.stat().st_size
            bar = _optional_bar(size, "B", f"upload {path.name}") if progress else None
            params = _ebsd_params(pc, refine, version, static_background)

            def build() -> httpx.Request:
                request = self._http.build_request(
                    "POST", "/v1/ebsd/scan", params=params, timeout=timeout,
                    headers={"Content-Type": "application/x-hdf5", "Content-Length": str(size)},
                )  # fmt: skip
                return httpx.Request(request.method, request.url, headers=request.headers,
                                     stream=_FileUpload(path, bar), extensions=request.extensions)  # fmt: skip

            try:
                response = yield from self._request("POST", "/v1/ebsd/scan", build=build)
            finally:
                if bar is not None:
                    bar.close()
            return _scan_result([parse_body(response, wire.EbsdScanResponse)])
        scan = load_scan(path_or_array)
        rows, cols = int(scan.shape[0]), int(scan.shape[1])
        limit = EBSD_SCAN_REFINE_BLOCK_PATTERNS if refine else EBSD_SCAN_BLOCK_PATTERNS
        row_pixels = max(1, cols * int(scan.shape[2]) * int(scan.shape[3]))
        block_rows = chunk_rows or max(
            1, min(limit // cols, _base.EBSD_MAX_PIXELS // row_pixels)
        )  # the server's budgets
        if block_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if refine and block_rows * cols > EBSD_SCAN_REFINE_BLOCK_PATTERNS:
            raise ValueError(f"refinement takes at most {EBSD_SCAN_REFINE_BLOCK_PATTERNS} patterns per request; a "
                             f"block of {block_rows} row(s) x {cols} columns is more: lower chunk_rows or crop")  # fmt: skip
        per_pixel = _pc_rows(pc)
        if per_pixel is not None and len(per_pixel) == rows and len(per_pixel[0]) == cols:
            per_pixel = [values for row in per_pixel for values in row]  # (rows, cols, 3) given as nested lists
        if per_pixel is not None and len(per_pixel) != rows * cols:
            raise ValueError(f"pc has {len(per_pixel)} rows; give one [PCx, PCy, PCz] or one per pixel ({rows * cols})")
        bar = _optional_bar(rows * cols, "pattern", "ebsd scan") if progress else None
        blocks: list[wire.EbsdScanResponse] = []
        pinned = version
        try:
            for r0 in range(0, rows, block_rows):
                block = scan[r0 : r0 + block_rows]
                data = encode_npy(block)
                params = _ebsd_params(None if per_pixel is not None else pc, refine, pinned, static_background)
                fields = None
                if per_pixel is not None:
                    fields = {"pc": json.dumps(per_pixel[r0 * cols : (r0 + len(block)) * cols])}
                build = self._scan_block_request(data, params, fields, timeout)
                try:
                    response = yield from self._request("POST", "/v1/ebsd/scan", build=build)
                except InvalidInputError as exc:
                    raise InvalidInputError(
                        exc.status_code, exc.error_type,
                        f"in the block of scan rows {r0}-{r0 + len(block) - 1} (its row 0 is your row {r0}): {exc.message}",
                        response=exc.response,
                    ) from exc  # fmt: skip
                payload = parse_body(response, wire.EbsdScanResponse)
                check_answer(response, len(block), "scan rows", payload.rows, pinned, payload.version)
                pinned = payload.version
                blocks.append(_shifted(payload, r0))
                if bar is not None:
                    bar.update(len(block) * cols)
        finally:
            if bar is not None:
                bar.close()
        return _scan_result(blocks)

    def _scan_block_request(
        self, data: bytes, params: dict[str, str], fields: dict[str, str] | None, timeout: httpx.Timeout
    ) -> Callable[[], httpx.Request]:
        if fields is None:
            return lambda: self._http.build_request(
                "POST", "/v1/ebsd/scan", content=data, params=params, timeout=timeout,
                headers={"Content-Type": "application/x-npy"},
            )  # fmt: skip
        return lambda: self._http.build_request(
            "POST", "/v1/ebsd/scan", files=[("file", ("scan.npy", data, "application/x-npy"))], data=fields,
            params=params, timeout=timeout,
        )  # fmt: skip


class EbsdMethods(_EbsdFlows, SyncDriver):
    """The EBSD methods of :class:`~matserve_client.Client`."""

    def index_ebsd(
        self,
        patterns: Any,
        *,
        pc: Any = None,
        refine: bool = False,
        version: str | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
        static_background: bool = False,
    ) -> list[EbsdIndexResult]:
        """Crystal orientations of EBSD patterns (nickel, m-3m) from ``POST /v1/ebsd/index``.

        Parameters
        ----------
        patterns : array, path, or sequence of them
            A numpy array (2-D: one pattern; 3-D: ``(n, rows, cols)``; 4-D: a scan, read row by row), nested
            lists of one pattern, a path of a ``.npy`` (as arrays), ``.png`` or ``.tif``/``.tiff`` file (every
            TIFF page a pattern), or a sequence of any of these. Square patterns of 60 to 1024 px; the server
            area-resamples them to 60x60. Arrays and ``.npy`` files need numpy; image files are sent as they are.
        pc : sequence of float, optional
            Projection centre ``[PCx, PCy, PCz]`` (Bruker convention: fractions of detector width, height,
            width) for every pattern, or one per pattern (``(n, 3)``, arrays and ``.npy`` only); default the
            model's nominal PC. PCs outside the trained range get an :class:`InvalidInputError` stating it.
        refine : bool, default False
            Refine each orientation against the master pattern on the server (slower: about 100 patterns/s; sent 64
            patterns per request).
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the active one (pinned after the first request).
        chunk_size : int, optional
            Patterns (or image files) per request; default 1024 (64 with ``refine``); array requests are cut to
            at most 2**26 decoded pixels (the server's default ``MATSERVE_MAX_EBSD_PIXELS``).
        progress : bool, default False
            Show a tqdm progress bar over patterns (``pip install 'matserve-client[progress]'``).
        static_background : bool, default False
            With ``refine``: the server subtracts each request's mean pattern (a static-background estimate; at
            least 9 patterns) before refining.

        Returns
        -------
        list of EbsdIndexResult
            One per pattern, in input order: Bunge Euler angles (degrees and radians), the unit quaternion
            (sample -> crystal, fundamental zone), ``expected_error_deg``, ``confidence``, ``pc``; ``source`` names
            the file (``path[k]`` for the k-th pattern of a TIFF or ``.npy``).

        Raises
        ------
        InvalidInputError
            A pattern or option cannot be used (422): the message names the pattern (``your pattern 6``) and
            why (size, NaN, constant, PC or tilt out of range).
        PayloadTooLargeError, NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        ValueError, TypeError, FileNotFoundError
            Inputs that are not patterns (checked before anything is sent).
        """
        return self._run(self._ebsd_index_flow(patterns, pc, refine, version, chunk_size, progress, static_background))

    def index_ebsd_scan(
        self,
        path_or_array: Any,
        *,
        pc: Any = None,
        refine: bool = False,
        version: str | None = None,
        progress: bool = True,
        chunk_rows: int | None = None,
        static_background: bool = False,
    ) -> EbsdScanResult:
        """Index a whole EBSD scan into orientation maps and an IPF-Z colour map (``POST /v1/ebsd/scan``).

        Parameters
        ----------
        path_or_array : array or path
            A 4-D array ``(scan rows, scan cols, pattern rows, pattern cols)`` or a ``.npy`` file of one
            (memory-mapped; sent in blocks of rows), or an HDF5 file kikuchipy reads (``.h5``/``.hdf5``: h5ebsd
            from ``EBSD.save``, EDAX, Bruker, Oxford; uploaded as it is, up to the server's body limit, 256 MiB by
            default; its PC is used unless ``pc`` is given).
        pc : sequence of float, optional
            ``[PCx, PCy, PCz]`` (Bruker convention) for every pixel, or one per pixel (``(rows, cols, 3)`` or
            ``(rows * cols, 3)``; arrays only).
        refine : bool, default False
            Refine every orientation against the master pattern (blocks of at most 256 patterns; slower).
        version : str, optional
            Model version; default the active one (pinned after the first block).
        progress : bool, default True
            A tqdm progress bar over patterns (arrays) or uploaded bytes (HDF5), when tqdm is installed.
        chunk_rows : int, optional
            Scan rows per request for arrays; default as many as fit in 4096 patterns (256 with ``refine``) and
            2**26 decoded pixels (the server's default ``MATSERVE_MAX_EBSD_PIXELS``; at least one row).
        static_background : bool, default False
            With ``refine``: subtract each block's mean pattern before refining (see :meth:`index_ebsd`).

        Returns
        -------
        EbsdScanResult
            Maps ``[rows][cols]`` (``None`` where a pixel failed, listed in ``errors``), ``ipf_z_rgb``, and
            :meth:`~EbsdScanResult.save_ipf_png` / :meth:`~EbsdScanResult.arrays`.

        Raises
        ------
        InvalidInputError
            The scan or an option cannot be used (422), naming the block of rows it was in.
        PayloadTooLargeError
            An HDF5 file over the server's body, pattern or pixel limit (413): convert it to ``.npy`` and send
            it as an array (blocks of rows).
        """
        return self._run(
            self._ebsd_scan_flow(path_or_array, pc, refine, version, progress, chunk_rows, static_background)
        )


class AsyncEbsdMethods(_EbsdFlows, AsyncDriver):
    """The EBSD methods of :class:`~matserve_client.AsyncClient` (coroutines)."""

    @same_doc(EbsdMethods.index_ebsd)
    async def index_ebsd(
        self,
        patterns: Any,
        *,
        pc: Any = None,
        refine: bool = False,
        version: str | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
        static_background: bool = False,
    ) -> list[EbsdIndexResult]:
        return await self._run(
            self._ebsd_index_flow(patterns, pc, refine, version, chunk_size, progress, static_background)
        )

    @same_doc(EbsdMethods.index_ebsd_scan)
    async def index_ebsd_scan(
        self,
        path_or_array: Any,
        *,
        pc: Any = None,
        refine: bool = False,
        version: str | None = None,
        progress: bool = True,
        chunk_rows: int | None = None,
        static_background: bool = False,
    ) -> EbsdScanResult:
        return await self._run(
            self._ebsd_scan_flow(path_or_array, pc, refine, version, progress, chunk_rows, static_background)
        )
