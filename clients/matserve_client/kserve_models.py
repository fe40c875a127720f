"""The XRD, EBSD and scattering methods of :class:`~matserve_client.kserve.KServeClient` (Triton domain models).

``matserve triton build-repo`` generates one python-backend *domain model* per registry model; it runs the HTTP
API's decoders, codec and lifecycle inside Triton, so these methods take what the HTTP :class:`~matserve_client.Client`
methods of the same names take and answer the same result types, with the same numbers:

* ``xrd_phase_patterns`` / ``xrd_novelty_patterns``: ``two_theta_deg`` FP64 ``[1, m]`` or ``[n, m]``,
  ``intensity`` FP64 ``[n, m]``, optional ``points`` INT64 ``[n]`` (patterns of different lengths, padded) and
  ``wavelength_angstrom`` FP64 ``[n]`` (NaN: Cu K-alpha), optional ``options`` (``{"plots": true}``);
* ``ebsd_indexer_patterns``: ``patterns`` FP32 ``[n, h, w]`` or ``files`` BYTES ``[k]`` (PNG/TIFF/NPY), optional
  ``pc`` FP64 ``[1, 3]`` or ``[n, 3]`` and ``options`` (``refine``, ``static_background``, tilts, ``file_names``);
* ``scattering_sorter_images``: ``images`` FP32 ``[n, h, w]`` (optional ``mask`` UINT8 ``[h, w]``) or ``files``
  BYTES ``[k]`` (detector files), optional ``options`` (``saliency``, ``saliency_label``, ``distance_m``,
  ``wavelength_angstrom``, ``pixel_size_um``, ``file_names``, ``content_type``).

Every one answers ``results_json`` (BYTES ``[n]``: each item's HTTP API result as JSON) and ``registry_version``
(BYTES ``[1]``), plus typed FP32 tensors of the main numbers. The methods send numbers as the HTTP client does
(XRD patterns as float64, arrays and files for EBSD and scattering as their bytes), so nothing is rounded on the way.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import as_pattern_list, open_progress_bar
from ._xrd import XrdArrays, model_grid_deg, xrd_arrays
from .ebsd_files import ebsd_chunks
from .exceptions import UnexpectedResponseError
from .models import EbsdIndexResult, ScatteringResult, XrdNoveltyResult, XrdPhaseResult
from .scattering_files import scattering_upload

if TYPE_CHECKING:
    from .kserve import KServeTransport

XRD_CHUNK = 256
"""Patterns per Triton request (the domain model takes at most the server's ``max_patterns``, 1024 by default)."""
XRD_PLOT_CHUNK = 16
"""Patterns per request with ``plots`` (the domain model renders at most 16 per request, as the HTTP API)."""
EBSD_CHUNK = 1024
EBSD_REFINE_CHUNK = 64
"""EBSD patterns per request, without and with refinement (as the HTTP client)."""
DOMAIN_OUTPUTS = ("results_json", "registry_version")
_SOURCE_INDEX = re.compile(r"(.*)\[(\d+)\]")


def _np() -> Any:
    import numpy

    return numpy


def _bytes_tensor(values: Sequence[bytes]) -> Any:
    np = _np()
    array = np.empty(len(values), dtype=np.object_)
    array[:] = list(values)
    return array


def _options(values: dict[str, Any]) -> Any:
    """A BYTES ``[1]`` tensor of the JSON options (``None`` values left out)."""
    body = {k: v for k, v in values.items() if v is not None and v is not False}
    return _bytes_tensor([json.dumps(body).encode("utf-8")])


def _decode_png(fields: dict[str, Any], key: str, target: str) -> None:
    encoded = fields.pop(key, None)
    fields[target] = base64.b64decode(encoded) if encoded else None


def _file_sources(files: list[Path], results: list[dict[str, Any]]) -> list[str]:
    """The caller's path (and page) of each result from the domain model's ``source`` (``name``, ``name[k]``)."""
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


class KServeModelMethods:
    """``classify_xrd``, ``xrd_novelty``, ``index_ebsd`` and ``sort_scattering`` over a :class:`KServeTransport`."""

    transport: KServeTransport

    def _domain(
        self, model: str, inputs: dict[str, Any], version: str | None, pinned: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str, tuple[str, str]]:
        """Run one request on ``<model>``'s domain model: (results, registry version, pinned Triton version)."""
        number, registry_version = pinned or self.transport.triton_version(model, version)
        answer, _ = self.transport.infer(model, inputs, DOMAIN_OUTPUTS, version=number)
        answered = answer["registry_version"].reshape(-1)[0]
        answered = answered.decode("utf-8") if isinstance(answered, bytes) else str(answered)
        if answered != registry_version:
            raise UnexpectedResponseError(f"Triton model {model} version {number} should be registry version "
                                          f"{registry_version} but answered {answered}")  # fmt: skip
        results = [json.loads(item) for item in answer["results_json"].reshape(-1)]
        return results, registry_version, (number, registry_version)

    # -- XRD -------------------------------------------------------------------------------------------------------

    def _xrd(
        self,
        model: str,
        result_type: type[XrdPhaseResult] | type[XrdNoveltyResult],
        patterns: Any,
        version: str | None,
        wavelength_angstrom: float | None,
        plots: bool,
        progress: bool,
    ) -> list[Any]:
        np = _np()
        arrays = xrd_arrays(patterns)
        if arrays is not None and not plots:
            return self._xrd_arrays(model, result_type, arrays, version, wavelength_angstrom, progress)
        items = as_pattern_list(patterns)
        for index, (item, _) in enumerate(items):
            if len(item["two_theta_deg"]) != len(item["intensity"]):
                raise ValueError(f"pattern {index}: {len(item['two_theta_deg'])} two_theta_deg values but "
                                 f"{len(item['intensity'])} intensities; give one 2θ per intensity")  # fmt: skip
        size = XRD_PLOT_CHUNK if plots else XRD_CHUNK
        bar = open_progress_bar(len(items), unit="pattern", desc=model) if progress else None
        pinned: tuple[str, str] | None = None
        results: list[Any] = []
        try:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                lengths = [len(item["intensity"]) for item, _ in chunk]
                width = max(lengths)
                grid = np.zeros((len(chunk), width))
                intensity = np.zeros((len(chunk), width))
                for k, (item, _) in enumerate(chunk):
                    grid[k, : lengths[k]] = item["two_theta_deg"]
                    intensity[k, : lengths[k]] = item["intensity"]
                inputs: dict[str, Any] = {"two_theta_deg": grid, "intensity": intensity}
                if len(set(lengths)) > 1:
                    inputs["points"] = np.asarray(lengths, dtype=np.int64)
                wavelengths = [item.get("wavelength_angstrom") or wavelength_angstrom for item, _ in chunk]
                if any(w is not None for w in wavelengths):
                    inputs["wavelength_angstrom"] = np.array([math.nan if w is None else w for w in wavelengths])
                if plots:
                    inputs["options"] = _options({"plots": True})
                answered, registry_version, pinned = self._domain(model + "_patterns", inputs, version, pinned)
                for (_, source), item in zip(chunk, answered, strict=True):
                    fields = dict(item)
                    for key, value in (fields.pop("plots", None) or {}).items():
                        fields[key] = base64.b64decode(value)
                    results.append(result_type(**fields, source=source, model=model, version=registry_version))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _xrd_arrays(
        self,
        model: str,
        result_type: type[XrdPhaseResult] | type[XrdNoveltyResult],
        arrays: XrdArrays,
        version: str | None,
        wavelength_angstrom: float | None,
        progress: bool,
    ) -> list[Any]:
        """Array batches of one length: the tensors are slices of the caller's arrays (no per-pattern lists)."""
        np = _np()
        total = len(arrays)
        if arrays.two_theta_deg is None:
            grid: Any = model_grid_deg()[None, :]
        elif arrays.two_theta_deg.ndim == 1:
            grid = np.asarray(arrays.two_theta_deg, dtype=np.float64)[None, :]
        else:
            grid = np.asarray(arrays.two_theta_deg, dtype=np.float64)
        bar = open_progress_bar(total, unit="pattern", desc=model) if progress else None
        pinned: tuple[str, str] | None = None
        results: list[Any] = []
        try:
            for start in range(0, total, XRD_CHUNK):
                stop = min(start + XRD_CHUNK, total)
                inputs: dict[str, Any] = {
                    "two_theta_deg": grid if grid.shape[0] == 1 else grid[start:stop],
                    "intensity": np.asarray(arrays.intensity[start:stop], dtype=np.float64),
                }
                if wavelength_angstrom is not None:
                    inputs["wavelength_angstrom"] = np.array([wavelength_angstrom], dtype=np.float64)
                answered, registry_version, pinned = self._domain(model + "_patterns", inputs, version, pinned)
                results += [result_type(**item, source=None, model=model, version=registry_version)
                            for item in answered]  # fmt: skip
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        return results

    def classify_xrd(
        self,
        patterns: Any,
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdPhaseResult]:
        """Phase of powder XRD patterns on Triton (``xrd_phase_patterns``); as :meth:`Client.classify_xrd`.

        Parameters
        ----------
        patterns : pattern or sequence of patterns
            As for :meth:`Client.classify_xrd` (files, :class:`XrdPattern`, mappings, pairs, arrays); any 2θ grid
            (degrees), sent as float64 with the number of points of each.
        version : str, optional
            Registry version (e.g. ``"1.0.0"``); default the active one when the repository was built.
        wavelength_angstrom : float, optional
            X-ray wavelength (Å) of patterns without their own; default Cu Kα (1.54184 Å).
        progress : bool, default False
            A tqdm progress bar over patterns.
        binary : bool, optional
            Ignored: Triton always gets binary tensors (accepted so that calls work on either client).

        Returns
        -------
        list of XrdPhaseResult
            One per pattern, in order.

        Raises
        ------
        InvalidInputError
            A pattern cannot be used (the message names each, as the HTTP API's 422), or a malformed request.
        NotFoundError
            Unknown ``version``.
        """
        return self._xrd("xrd_phase", XrdPhaseResult, patterns, version, wavelength_angstrom, False, progress)

    def xrd_novelty(
        self,
        patterns: Any,
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        plots: bool = False,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdNoveltyResult]:
        """Novelty of powder XRD patterns on Triton (``xrd_novelty_patterns``); as :meth:`Client.xrd_novelty`.

        Parameters
        ----------
        patterns, version, wavelength_angstrom, progress, binary
            As for :meth:`classify_xrd`.
        plots : bool, default False
            Also the reconstruction and latent-map PNGs (16 patterns per request then).

        Returns
        -------
        list of XrdNoveltyResult
            One per pattern, in order.
        """
        return self._xrd("xrd_novelty", XrdNoveltyResult, patterns, version, wavelength_angstrom, plots, progress)

    # -- EBSD ------------------------------------------------------------------------------------------------------

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
        """Orientations of EBSD patterns on Triton (``ebsd_indexer_patterns``); as :meth:`Client.index_ebsd`.

        Parameters
        ----------
        patterns : array, path, or sequence of them
            As for :meth:`Client.index_ebsd`: arrays (sent as FP32 ``patterns``; integer counts stay exact up to
            2**24), ``.npy`` files, PNG/TIFF files (sent as they are, in ``files``).
        pc : sequence of float, optional
            ``[PCx, PCy, PCz]`` (Bruker convention, fractions) for all patterns, or one per pattern (arrays only).
        refine : bool, default False
            Refine against the master pattern (needs kikuchipy in Triton's environment).
        version : str, optional
            Registry version; default the active one.
        chunk_size : int, optional
            Patterns (or files) per request; default 1024 (64 with ``refine``).
        progress : bool, default False
            A tqdm progress bar over patterns.
        static_background : bool, default False
            With ``refine``: subtract each request's mean pattern first (at least 9 patterns).

        Returns
        -------
        list of EbsdIndexResult
            One per pattern, in order.

        Raises
        ------
        InvalidInputError
            A pattern or option cannot be used (the message names it, as the HTTP API's 422).
        ValueError
            ``pc`` rows that do not match the patterns.
        """
        np = _np()
        size = chunk_size or (EBSD_REFINE_CHUNK if refine else EBSD_CHUNK)
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        per_pattern = None
        if pc is not None:
            values = np.asarray(pc, dtype=np.float64)
            if values.ndim == 2:
                per_pattern = values
            elif values.shape != (3,):
                raise ValueError(f"pc is [PCx, PCy, PCz] (or one such triple per pattern); got {values.tolist()!r}")
        options = {"refine": refine, "static_background": static_background}
        bar = open_progress_bar(None, unit="pattern", desc="ebsd") if progress else None
        pinned: tuple[str, str] | None = None
        results: list[EbsdIndexResult] = []
        try:
            for chunk in ebsd_chunks(patterns, size):
                start = len(results)
                inputs: dict[str, Any] = {}
                if chunk.array is not None:
                    inputs["patterns"] = np.ascontiguousarray(chunk.array, dtype=np.float32)
                    chunk_options = options
                    if per_pattern is not None:
                        rows = per_pattern[start : start + len(chunk.array)]
                        if len(rows) != len(chunk.array):
                            raise ValueError(f"pc has {len(per_pattern)} rows, fewer than the patterns")
                        inputs["pc"] = np.ascontiguousarray(rows)
                else:
                    if per_pattern is not None:
                        raise ValueError("a PC per pattern needs arrays or .npy files (TIFF pages are counted by the "
                                         "server); give one pc for all image files")  # fmt: skip
                    inputs["files"] = _bytes_tensor([path.read_bytes() for path in chunk.files])
                    chunk_options = {**options, "file_names": [path.name for path in chunk.files]}
                if pc is not None and per_pattern is None:
                    inputs["pc"] = np.asarray(pc, dtype=np.float64).reshape(1, 3)
                inputs["options"] = _options(chunk_options)
                answered, registry_version, pinned = self._domain("ebsd_indexer_patterns", inputs, version, pinned)
                sources = chunk.sources if chunk.array is not None else _file_sources(chunk.files, answered)
                for item, source in zip(answered, sources, strict=True):
                    results.append(EbsdIndexResult(**{**item, "source": source}, model="ebsd_indexer",
                                                   version=registry_version))  # fmt: skip
                if bar is not None:
                    bar.update(len(answered))
            if per_pattern is not None and len(per_pattern) != len(results):
                raise ValueError(f"pc has {len(per_pattern)} rows but there are {len(results)} patterns")
        finally:
            if bar is not None:
                bar.close()
        return results

    # -- scattering ------------------------------------------------------------------------------------------------

    def sort_scattering(
        self,
        path_or_array: Any,
        *,
        saliency: bool = False,
        saliency_label: str | None = None,
        version: str | None = None,
        distance_m: float | None = None,
        wavelength_angstrom: float | None = None,
        pixel_size_um: float | None = None,
        shape: str | tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringResult]:
        """Technique, geometry and features of detector images on Triton (``scattering_sorter_images``); as
        :meth:`Client.sort_scattering`.

        Parameters
        ----------
        path_or_array : path, bytes or array
            A detector file (TIFF, CBF, EDF, HDF5/NeXus, NPY, PNG), its bytes, or a 2D array of counts (sent as
            ``.npy``, so integer gaps stay integers); decoded inside Triton by the HTTP API's decoders.
        saliency : bool, default False
            Also a Grad-CAM PNG per image (at most 64 frames).
        saliency_label : str, optional
            Draw this label's map instead (implies ``saliency``).
        version : str, optional
            Registry version; default the active one.
        distance_m, wavelength_angstrom, pixel_size_um : float, optional
            The setup: sample-detector distance (m), wavelength (Å), pixel size (µm); each overrides the header's.
        shape, dtype : optional
            For a headerless raw file: ``rows x cols`` (``"1043x981"`` or ``(1043, 981)``) and the pixel type
            (``"int32"``, ``">u2"``...), given together.

        Returns
        -------
        list of ScatteringResult
            One per frame, in file order; ``source`` is the path (``path[frame k]``).

        Raises
        ------
        InvalidInputError
            No frame can be sorted, a bad option, or a file in no accepted format.
        """
        upload = scattering_upload(path_or_array)
        sent_name = Path(upload.name).name if upload.name is not None else None
        raw_shape = f"{shape[0]}x{shape[1]}" if isinstance(shape, tuple | list) else shape
        options = {"saliency": saliency, "saliency_label": saliency_label, "distance_m": distance_m,
                   "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um,
                   "shape": raw_shape, "dtype": dtype,
                   "file_names": [sent_name] if sent_name else None, "content_type": upload.content_type}  # fmt: skip
        inputs = {"files": _bytes_tensor([upload.data]), "options": _options(options)}
        answered, registry_version, _ = self._domain("scattering_sorter_images", inputs, version)
        results = []
        for item in answered:
            fields = dict(item)
            _decode_png(fields, "saliency_png_base64", "saliency_png")
            source = fields.get("source")
            if sent_name is not None and isinstance(source, str) and upload.name is not None:
                if source == sent_name or source.startswith(sent_name + "["):
                    fields["source"] = upload.name + source[len(sent_name) :]
            results.append(ScatteringResult(**fields, model="scattering_sorter", version=registry_version))
        return results


class AsyncKServeModelMethods:
    """The asyncio twins of :class:`KServeModelMethods` (each runs the blocking method in a worker thread)."""

    _client: KServeModelMethods

    async def classify_xrd(
        self,
        patterns: Any,
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdPhaseResult]:
        """See :meth:`KServeClient.classify_xrd`."""
        import asyncio

        return await asyncio.to_thread(self._client.classify_xrd, patterns, version=version,
                                       wavelength_angstrom=wavelength_angstrom, progress=progress, binary=binary)  # fmt: skip

    async def xrd_novelty(
        self,
        patterns: Any,
        *,
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        plots: bool = False,
        progress: bool = False,
        binary: bool | None = None,
    ) -> list[XrdNoveltyResult]:
        """See :meth:`KServeClient.xrd_novelty`."""
        import asyncio

        return await asyncio.to_thread(self._client.xrd_novelty, patterns, version=version,
                                       wavelength_angstrom=wavelength_angstrom, plots=plots, progress=progress,
                                       binary=binary)  # fmt: skip

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
        """See :meth:`KServeClient.index_ebsd`."""
        import asyncio

        return await asyncio.to_thread(self._client.index_ebsd, patterns, pc=pc, refine=refine, version=version,
                                       chunk_size=chunk_size, progress=progress,
                                       static_background=static_background)  # fmt: skip

    async def sort_scattering(
        self,
        path_or_array: Any,
        *,
        saliency: bool = False,
        saliency_label: str | None = None,
        version: str | None = None,
        distance_m: float | None = None,
        wavelength_angstrom: float | None = None,
        pixel_size_um: float | None = None,
        shape: str | tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringResult]:
        """See :meth:`KServeClient.sort_scattering`."""
        import asyncio

        return await asyncio.to_thread(self._client.sort_scattering, path_or_array, saliency=saliency,
                                       saliency_label=saliency_label, version=version, distance_m=distance_m,
                                       wavelength_angstrom=wavelength_angstrom, pixel_size_um=pixel_size_um,
                                       shape=shape, dtype=dtype)  # fmt: skip


__all__ = ["AsyncKServeModelMethods", "KServeModelMethods"]
