"""Scattering sorter (``POST /v1/scattering/sort``): flows, helpers and the public methods of both clients."""

from __future__ import annotations

import base64
import os
from numbers import Integral
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from . import wire
from ._base import (
    AsyncDriver,
    BaseClient,
    Flow,
    SyncDriver,
    _optional_bar,
    parse_body,
    results_of,
    same_doc,
)
from .exceptions import ClientRequestError, NotFoundError, ServerError, ServiceUnavailableError, UnexpectedResponseError
from .models import ScatteringFileResult, ScatteringResult
from .scattering_files import ScatteringUpload, scattering_files, scattering_upload

SCATTERING_PATH = "/v1/scattering/sort"


def _raw_params(shape: Any, dtype: str | None) -> dict[str, str]:
    """The ``shape``/``dtype`` query parameters of a headerless raw file (both or neither).

    Raises
    ------
    ValueError
        Only one of them, or a shape that is not two positive whole numbers.
    """
    if shape is None and dtype is None:
        return {}
    if shape is None or dtype is None:
        raise ValueError("shape and dtype describe a headerless raw file together: give both or neither")
    values = tuple(shape)
    if len(values) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"shape is (rows, cols), two positive whole numbers; got {shape!r}")
    return {"shape": f"{values[0]}x{values[1]}", "dtype": str(dtype)}


def _scattering_source(source: Any, sent_name: str | None, path: str | None) -> str | None:
    """The server's ``name``/``name[frame k]`` as ``path``/``path[frame k]`` for an uploaded file."""
    if sent_name is None or path is None or not isinstance(source, str):
        return source
    if source == sent_name or source.startswith(sent_name + "["):
        return path + source[len(sent_name) :]
    return source


class _ScatteringFlows(BaseClient):
    """The scattering flows (no I/O)."""

    def _scattering_flow(
        self,
        path_or_array: Any,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
        raw: dict[str, str] | None = None,
    ) -> Flow[list[ScatteringResult]]:
        """Sort one file, ``bytes`` or 2D array: one result per frame."""
        return (yield from self._scattering_upload_flow(scattering_upload(path_or_array), saliency, saliency_label,
                                                        version, setup, raw))  # fmt: skip

    def _scattering_upload_flow(
        self,
        upload: ScatteringUpload,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
        raw: dict[str, str] | None = None,
    ) -> Flow[list[ScatteringResult]]:
        """One request; ``setup``: ``distance_m``, ``wavelength_angstrom``, ``pixel_size_um`` (``None``: not sent);
        ``raw``: the ``shape``/``dtype`` parameters (:func:`_raw_params`)."""
        params: dict[str, str] = {
            name: repr(float(value)) for name, value in (setup or {}).items() if value is not None
        }
        params.update(raw or {})
        if saliency:
            params["saliency"] = "true"
        if saliency_label is not None:
            params["saliency_label"] = saliency_label
        if version is not None:
            params["version"] = version
        timeout = self._long_timeout()
        headers = {"Content-Type": upload.content_type}
        sent_name = None
        if upload.name is not None:  # the server names the file's frames after it (in results and messages)
            sent_name = Path(upload.name).name
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(sent_name, safe='')}"

        def build() -> httpx.Request:
            return self._http.build_request("POST", SCATTERING_PATH, content=upload.data, params=params,
                                            timeout=timeout, headers=headers)  # fmt: skip

        response = yield from self._request("POST", SCATTERING_PATH, build=build)
        payload = parse_body(response, wire.ScatteringSortResponse)
        if version is not None and payload.version != version:
            raise UnexpectedResponseError(f"expected model version {version!r} but the server answered with "
                                          f"{payload.version!r}", response=response)  # fmt: skip
        results = []
        for fields in results_of(payload):
            encoded = fields.pop("saliency_png_base64", None)
            fields["saliency_png"] = base64.b64decode(encoded) if encoded else None
            fields["source"] = _scattering_source(fields.get("source"), sent_name, upload.name)
            results.append(ScatteringResult(**fields, model=payload.model, version=payload.version))
        return results

    def _scattering_folder_flow(
        self,
        folder: str | os.PathLike[str],
        pattern: str,
        recursive: bool,
        progress: bool,
        saliency: bool,
        saliency_label: str | None,
        version: str | None,
        setup: dict[str, float | None] | None = None,
        raw: dict[str, str] | None = None,
    ) -> Flow[list[ScatteringFileResult]]:
        """One request per file (version pinned after the first answer); refusals recorded per file."""
        files = scattering_files(folder, pattern, recursive)
        bar = _optional_bar(len(files), "file", "scattering") if progress else None
        answers: list[ScatteringFileResult] = []
        pinned = version
        try:
            for path in files:
                try:
                    upload = scattering_upload(path)
                    results = yield from self._scattering_upload_flow(upload, saliency, saliency_label, pinned, setup,
                                                                      raw)  # fmt: skip
                except (NotFoundError, ServiceUnavailableError):
                    raise  # an unknown version or a server that cannot sort: every file would fail the same way
                except (ClientRequestError, ServerError) as exc:
                    answers.append(ScatteringFileResult(path=str(path), error=exc.message, status_code=exc.status_code))
                except OSError as exc:
                    answers.append(ScatteringFileResult(path=str(path), error=f"{type(exc).__name__}: {exc}"))
                else:
                    pinned = results[0].version if results else pinned
                    answers.append(ScatteringFileResult(path=str(path), results=results))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return answers


class ScatteringMethods(_ScatteringFlows, SyncDriver):
    """The scattering methods of :class:`~matserve_client.Client`."""

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
        shape: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringResult]:
        """Technique, geometry and features of 2D X-ray detector images (``POST /v1/scattering/sort``).

        Parameters
        ----------
        path_or_array : path, bytes or array
            A detector file (TIFF incl. MarCCD ``.mccd``, CBF, EDF, HDF5/NeXus, NPY, PNG, any of them gzip- or
            bzip2-compressed, or headerless raw pixels; uploaded as it is, the server recognises the format from the
            bytes; every frame of a multi-frame file is sorted), the bytes of one, or a 2D numpy array of counts
            (sent as ``.npy``; needs numpy). Integer gaps (negative values, or the unsigned maximum), module gaps
            written as 0 in a known Pilatus/Eiger shape and an HDF5 file's Eiger ``pixel_mask`` are masked by the
            server.
        saliency : bool, default False
            Also return a PNG per image with the Grad-CAM map of the predicted technique over the image
            (``result.save_saliency_png(path)``); at most 64 frames per request then.
        saliency_label : str, optional
            Draw this label's map instead (any technique, geometry or feature label; implies ``saliency``).
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the server's active one.
        distance_m, wavelength_angstrom, pixel_size_um : float, optional
            The measurement setup: sample-detector distance (m), wavelength (Angstrom), pixel size (um). Each
            overrides the file header's value (CBF, EDF and NeXus files usually carry them). With all three
            known, versions from 1.2.0 on are given the detector's q span and separate small- from wide-angle
            images much better; ``result.q_span_inv_angstrom`` says whether they were, ``result.setup_source``
            where each value came from (e.g. ``distance_m=request; wavelength_angstrom=header:TIFF ImageDescription
            Wavelength (A); pixel_size_m=...``).
        shape, dtype : (int, int) and str, optional
            For headerless raw files: frame ``(rows, cols)`` and pixel type (``"uint16"``, ``"int32"``,
            ``"float32"``, ... little-endian; ``">uint16"`` for big-endian); give both. Without them, a raw file is
            read only when its size is exactly one frame of a known detector (Pilatus, Eiger, MarCCD/Rayonix).

        Returns
        -------
        list of ScatteringResult
            One per frame, in file order; ``source`` is the path (``path[frame k]``, 0-based, for frame ``k`` of
            a multi-frame file). A frame that cannot be sorted (e.g. constant) has ``error`` set when other
            frames of the file could be sorted.

        Raises
        ------
        InvalidInputError
            No frame can be sorted (422; the message names each and why), or a bad option.
        ClientRequestError
            415: the bytes are in no accepted format (the message lists them).
        PayloadTooLargeError
            Over the server's body (64 MiB), frame (256) or decoded-pixel limits (413).
        NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        FileNotFoundError, ValueError, TypeError
            A missing file, an array that is not 2D, an input of another type, or only one of ``shape`` and
            ``dtype`` (checked before sending).
        """
        setup = {"distance_m": distance_m, "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um}
        raw = _raw_params(shape, dtype)
        return self._run(self._scattering_flow(path_or_array, saliency, saliency_label, version, setup, raw))

    def sort_scattering_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        pattern: str = "*",
        progress: bool = True,
        saliency: bool = False,
        saliency_label: str | None = None,
        version: str | None = None,
        recursive: bool = False,
        distance_m: float | None = None,
        wavelength_angstrom: float | None = None,
        pixel_size_um: float | None = None,
        shape: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringFileResult]:
        """Sort every detector file of a folder, one request per file, recording each file's outcome.

        Parameters
        ----------
        folder : path
            The folder.
        pattern : str, default "*"
            Glob on file names (e.g. ``"*_0001.cbf"``); only files with a supported suffix are taken
            (``.tif``, ``.tiff``, ``.mccd``, ``.cbf``, ``.edf``, ``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, ``.nx5``,
            ``.npy``, ``.png``, ``.gz``, ``.bz2``, ``.raw``, ``.bin``), in path order.
        progress : bool, default True
            A tqdm progress bar over files, when tqdm is installed.
        saliency, saliency_label, version, distance_m, wavelength_angstrom, pixel_size_um, shape, dtype
            As for :meth:`sort_scattering` (the version that answers the first file is pinned for the rest; the
            setup values and the raw layout apply to every file).
        recursive : bool, default False
            Also take the files of subfolders.

        Returns
        -------
        list of ScatteringFileResult
            One per file, in path order: its ``results`` (one per frame), or ``error`` (and ``status_code``) when
            the server refused it (unreadable, no usable image, too large) or it could not be read here.

        Raises
        ------
        NotADirectoryError
            ``folder`` is not a folder.
        NotFoundError, ServiceUnavailableError, MatserveConnectionError
            An unknown ``version``, or a server that cannot sort at all: every file would fail the same way.
        """
        setup = {"distance_m": distance_m, "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um}
        raw = _raw_params(shape, dtype)
        return self._run(self._scattering_folder_flow(folder, pattern, recursive, progress, saliency, saliency_label,
                                                      version, setup, raw))  # fmt: skip


class AsyncScatteringMethods(_ScatteringFlows, AsyncDriver):
    """The scattering methods of :class:`~matserve_client.AsyncClient` (coroutines)."""

    @same_doc(ScatteringMethods.sort_scattering)
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
        shape: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringResult]:
        setup = {"distance_m": distance_m, "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um}
        raw = _raw_params(shape, dtype)
        return await self._run(self._scattering_flow(path_or_array, saliency, saliency_label, version, setup, raw))

    @same_doc(ScatteringMethods.sort_scattering_folder)
    async def sort_scattering_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        pattern: str = "*",
        progress: bool = True,
        saliency: bool = False,
        saliency_label: str | None = None,
        version: str | None = None,
        recursive: bool = False,
        distance_m: float | None = None,
        wavelength_angstrom: float | None = None,
        pixel_size_um: float | None = None,
        shape: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> list[ScatteringFileResult]:
        setup = {"distance_m": distance_m, "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um}
        raw = _raw_params(shape, dtype)
        return await self._run(self._scattering_folder_flow(folder, pattern, recursive, progress, saliency,
                                                            saliency_label, version, setup, raw))  # fmt: skip
