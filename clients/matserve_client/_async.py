"""Asynchronous client (same methods as :class:`~matserve_client.Client`, as coroutines)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._base import (
    DEFAULT_BACKOFF,
    DEFAULT_BASE_URL,
    DEFAULT_JOB_PAGE_SIZE,
    DEFAULT_JOB_POLL_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    LIMITS,
    BaseClient,
    Flow,
    PatternLike,
    T,
    _Sleep,
    default_headers,
)
from .models import (
    EbsdIndexResult,
    EbsdScanResult,
    FormationEnthalpyResult,
    Job,
    JobResultsPage,
    ModelInfo,
    ScatteringFileResult,
    ScatteringResult,
    XrdNoveltyResult,
    XrdPhaseResult,
)

if TYPE_CHECKING:
    from .kserve import AsyncKServeClient

__all__ = ["AsyncClient"]

_AsyncClientT = TypeVar("_AsyncClientT", bound="AsyncClient")


class AsyncClient(BaseClient):
    """Asynchronous client for a matserve server.

    Use it as an async context manager, or await :meth:`aclose` when done, to release pooled connections.
    It has the same methods as :class:`~matserve_client.Client`, as coroutines. Chunks of a long list are sent
    one after the other (the first chunk fixes the model version for the rest).

    Parameters
    ----------
    base_url : str or httpx.URL, default "http://127.0.0.1:3000"
        Root URL of the server; a path prefix (``http://host/matserve``) is kept.
    timeout : float, httpx.Timeout or None, default 30.0
        Per-attempt timeout, in seconds, applied to each of connect, read, write and pool acquisition;
        ``None`` disables it. Retries get a fresh timeout.
    retries : int, default 3
        How many times a request is re-sent after HTTP 503 or a connection error/timeout, or after HTTP 429
        (rate limited: waiting at least the server's ``Retry-After``, at most 60 s; then
        :class:`RateLimitedError`), so at most ``retries + 1`` attempts. Other errors are never retried.
    backoff : float, default 0.5
        Base retry delay, in seconds: retry ``n`` (0-based) waits ``min(backoff * 2**n, 8)`` s. 0 retries at once.
    chunk_size : int or None, default None
        Formulas per request when a long list is split. ``None`` uses the server's ``max_batch_size`` for
        ``formation_enthalpy`` (read once from ``GET /v1/models`` and cached; 1000 if it cannot be read).
    transport : httpx.AsyncBaseTransport, optional
        Custom httpx transport (e.g. :class:`httpx.MockTransport` in tests, or one with a proxy or TLS setup).
    headers : mapping of str to str, optional
        Extra headers sent with every request (e.g. ``Authorization``).

    Examples
    --------
    >>> from matserve_client import AsyncClient
    >>> async with AsyncClient("http://127.0.0.1:3000") as client:  # doctest: +SKIP
    ...     [r.formation_enthalpy_ev_per_atom for r in await client.formation_enthalpy(["NaCl", "Fe2O3"])]
    [-2.1, -1.7]
    """

    _http: httpx.AsyncClient

    @staticmethod
    def grpc(target: str, timeout: float = 30.0) -> AsyncKServeClient:
        """The asyncio twin of :meth:`Client.grpc`: the typed methods over Triton's KServe-v2 gRPC (``host:8001``).

        Needs ``pip install 'matserve-client[grpc]'``; see :mod:`matserve_client.kserve`.
        """
        from .kserve import AsyncKServeClient

        return AsyncKServeClient(target, timeout=timeout, protocol="grpc")

    def __init__(
        self,
        base_url: str | httpx.URL = DEFAULT_BASE_URL,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        chunk_size: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, chunk_size=chunk_size)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers=default_headers(headers), limits=LIMITS
        )

    async def _run(self, flow: Flow[T]) -> T:
        """Execute a flow's actions with async I/O and return its result."""
        try:
            action = next(flow)
            while True:
                if isinstance(action, _Sleep):
                    await asyncio.sleep(action.seconds)
                    action = flow.send(None)
                    continue
                try:
                    response = await self._http.send(action.request)
                except httpx.TransportError as exc:
                    action = flow.throw(exc)
                else:
                    action = flow.send(response)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def formation_enthalpy(
        self, formulas: Sequence[str] | str, version: str | None = None, progress: bool = False
    ) -> list[FormationEnthalpyResult]:
        """Predict the formation enthalpy of each formula.

        Lists longer than the batch size are split into consecutive requests (see ``chunk_size``); the results
        are concatenated in input order. If ``version`` is ``None``, the version that answered the first request
        is pinned for the following ones, so all results come from the same model version.

        Parameters
        ----------
        formulas : sequence of str, or str
            Chemical formulas such as ``"NaCl"`` or ``"Fe2O3"``; a single string is one formula.
        version : str, optional
            Model version to use, e.g. ``"1.0.0"``; default: the server's active version.
        progress : bool, default False
            Show a tqdm progress bar over formulas (needs ``pip install 'matserve-client[progress]'``).

        Returns
        -------
        list of FormationEnthalpyResult
            One per input formula, in input order. Formulas the model cannot handle have ``ok == False`` and an
            ``error`` message; they do not raise. Enthalpies and uncertainties are in eV/atom.

        Raises
        ------
        InvalidInputError
            The request was rejected as malformed (400/422).
        NotFoundError
            Unknown ``version`` (404).
        PayloadTooLargeError
            A chunk exceeded the server's limits (413); lower ``chunk_size``.
        ServiceUnavailableError
            The server kept answering 503 after ``retries`` retries.
        ServerError
            Any other 5xx.
        MatserveConnectionError
            No response after ``retries`` retries (:class:`MatserveTimeoutError` for timeouts).
        UnexpectedResponseError
            A 2xx response that does not follow the API (wrong result count, version changed between chunks).
        ImportError
            ``progress=True`` but tqdm is not installed.
        """
        return await self._run(self._formation_enthalpy_flow(formulas, version, progress))

    async def classify_xrd(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        progress: bool = False,
    ) -> list[XrdPhaseResult]:
        """Classify powder XRD patterns among the known phases (``POST /v1/xrd/phase``).

        Parameters
        ----------
        patterns : pattern or sequence of patterns
            One pattern or many, each an :class:`~matserve_client.xrd_files.XrdPattern`, a path of a two-column
            file (``.xy``, ``.xye``, ``.csv``, ``.txt``), a mapping ``{"two_theta_deg": [...], "intensity": [...]}``
            or a ``(two_theta_deg, intensity)`` pair of sequences/arrays. Any 2θ grid: the server resamples.
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the active one (pinned after the first chunk).
        wavelength_angstrom : float, optional
            X-ray wavelength of patterns that do not give their own, Å (default Cu Kα, 1.54184; 0.1-3.0 accepted).
        progress : bool, default False
            Show a tqdm progress bar over patterns (``pip install 'matserve-client[progress]'``).

        Returns
        -------
        list of XrdPhaseResult
            One per pattern, in input order; ``source`` names the file for patterns given as paths.

        Raises
        ------
        InvalidInputError
            A pattern cannot be used (422); the message names each failing pattern (``patterns[3]: ...``) and why
            (2θ range covered, lengths, NaN, negative or constant intensity, too few points).
        PayloadTooLargeError, NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        PatternFileError
            A path that is not a readable two-column file.
        """
        return await self._run(
            self._xrd_flow("/v1/xrd/phase", XrdPhaseResult, patterns, version, wavelength_angstrom, False, progress)
        )

    async def xrd_novelty(
        self,
        patterns: PatternLike | Sequence[PatternLike],
        version: str | None = None,
        wavelength_angstrom: float | None = None,
        plots: bool = False,
        progress: bool = False,
    ) -> list[XrdNoveltyResult]:
        """Score how novel powder XRD patterns are (``POST /v1/xrd/novelty``): new phase, mixture or failed scan.

        Parameters
        ----------
        patterns : pattern or sequence of patterns
            One pattern or many, each an :class:`~matserve_client.xrd_files.XrdPattern`, a path of a two-column
            file (``.xy``, ``.xye``, ``.csv``, ``.txt``), a mapping ``{"two_theta_deg": [...], "intensity": [...]}``
            or a ``(two_theta_deg, intensity)`` pair of sequences/arrays. Any 2θ grid: the server resamples.
        version : str, optional
            Model version, e.g. ``"1.0.0"``; default the active one (pinned after the first chunk).
        wavelength_angstrom : float, optional
            X-ray wavelength of patterns that do not give their own, Å (default Cu Kα, 1.54184; 0.1-3.0 accepted).
        plots : bool, default False
            Also return PNGs of each pattern against its reconstruction and of the latent map
            (``result.save_plots(prefix)``); requests are then sent 16 patterns at a time.
        progress : bool, default False
            Show a tqdm progress bar over patterns (``pip install 'matserve-client[progress]'``).

        Returns
        -------
        list of XrdNoveltyResult
            One per pattern, in input order; ``source`` names the file for patterns given as paths.

        Raises
        ------
        InvalidInputError
            A pattern cannot be used (422); the message names each failing pattern (``patterns[3]: ...``) and why
            (2θ range covered, lengths, NaN, negative or constant intensity, too few points).
        PayloadTooLargeError, NotFoundError, ServiceUnavailableError, MatserveConnectionError
            As for :meth:`formation_enthalpy`.
        PatternFileError
            A path that is not a readable two-column file.
        """
        return await self._run(
            self._xrd_flow("/v1/xrd/novelty", XrdNoveltyResult, patterns, version, wavelength_angstrom, plots, progress)
        )

    async def index_ebsd(
        self,
        patterns: Any,
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
        return await self._run(
            self._ebsd_index_flow(patterns, pc, refine, version, chunk_size, progress, static_background)
        )

    async def index_ebsd_scan(
        self,
        path_or_array: Any,
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
        return await self._run(
            self._ebsd_scan_flow(path_or_array, pc, refine, version, progress, chunk_rows, static_background)
        )

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
    ) -> list[ScatteringResult]:
        """Technique, geometry and features of 2D X-ray detector images (``POST /v1/scattering/sort``).

        Parameters
        ----------
        path_or_array : path, bytes or array
            A detector file (TIFF, CBF, EDF, HDF5/NeXus, NPY, PNG; uploaded as it is, the server recognises the
            format from the bytes; every frame of a multi-frame file is sorted), the bytes of one, or a 2D numpy
            array of counts (sent as ``.npy``; needs numpy). Integer gaps (negative values, or the unsigned
            maximum) and an HDF5 file's Eiger ``pixel_mask`` are masked by the server.
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
            images much better; ``result.q_span_inv_angstrom`` says whether they were.

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
            A missing file, an array that is not 2D, or an input of another type (checked before sending).
        """
        setup = {"distance_m": distance_m, "wavelength_angstrom": wavelength_angstrom, "pixel_size_um": pixel_size_um}
        return await self._run(self._scattering_flow(path_or_array, saliency, saliency_label, version, setup))

    async def sort_scattering_folder(
        self,
        folder: str | os.PathLike[str],
        pattern: str = "*",
        *,
        progress: bool = True,
        saliency: bool = False,
        saliency_label: str | None = None,
        version: str | None = None,
        recursive: bool = False,
        distance_m: float | None = None,
        wavelength_angstrom: float | None = None,
        pixel_size_um: float | None = None,
    ) -> list[ScatteringFileResult]:
        """Sort every detector file of a folder, one request per file, recording each file's outcome.

        Parameters
        ----------
        folder : path
            The folder.
        pattern : str, default "*"
            Glob on file names (e.g. ``"*_0001.cbf"``); only files with a supported suffix are taken
            (``.tif``, ``.tiff``, ``.cbf``, ``.edf``, ``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, ``.nx5``, ``.npy``,
            ``.png``), in path order.
        progress : bool, default True
            A tqdm progress bar over files, when tqdm is installed.
        saliency, saliency_label, version, distance_m, wavelength_angstrom, pixel_size_um
            As for :meth:`sort_scattering` (the version that answers the first file is pinned for the rest; the
            setup values apply to every file).
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
        return await self._run(
            self._scattering_folder_flow(folder, pattern, recursive, progress, saliency, saliency_label, version, setup)
        )

    async def models(self) -> list[ModelInfo]:
        """List the servable models and their versions (``GET /v1/models``).

        Also refreshes the cached ``max_batch_size`` used for chunking.

        Returns
        -------
        list of ModelInfo
            Models with their active version, ``max_batch_size`` (formulas per request) and versions.

        Raises
        ------
        APIError, MatserveConnectionError, UnexpectedResponseError
            As for :meth:`formation_enthalpy`.
        """
        return await self._run(self._models_flow())

    async def ready(self) -> bool:
        """Whether the server is ready to serve predictions (``GET /readyz`` answers 2xx).

        A single attempt, never retried; errors and connection failures give ``False`` instead of raising.
        """
        return await self._run(self._probe_flow("/readyz"))

    async def live(self) -> bool:
        """Whether the server process is up (``GET /livez`` answers 2xx); a single attempt, never raises."""
        return await self._run(self._probe_flow("/livez"))

    async def submit_job(self, model: str, inputs: Sequence[Any] | str, version: str | None = None) -> Job:
        """Submit a batch job: many inputs for one model, run in the background by the server's workers.

        Parameters
        ----------
        model : str
            Model name, e.g. ``"formation_enthalpy"``.
        inputs : sequence, or str
            The inputs (formulas for formation enthalpy), up to the server's job limit (10⁶ by default); a
            single string is one input.
        version : str, optional
            Model version to pin; default: the server's active version at submission time.

        Returns
        -------
        Job
            The queued job (``state == "queued"``); poll it with :meth:`job` or :meth:`wait_job`.

        Raises
        ------
        InvalidInputError
            Bad inputs (400/422): empty list, wrong item type, ...
        NotFoundError
            Unknown model or version (404).
        PayloadTooLargeError
            Too many inputs or too large a body (413).
        ServiceUnavailableError
            The server cannot take jobs now (503: job store unreachable, or no worker without Redis).
        MatserveConnectionError
            No response. Submission is never retried (a retry could submit the job twice).
        """
        return await self._run(self._submit_job_flow(model, inputs, version))

    async def job(self, job_id: str) -> Job:
        """The current state and progress of a job (``GET /v1/jobs/{id}``).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        """
        return await self._run(self._job_flow(job_id))

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a job: chunks not started yet are skipped (``DELETE /v1/jobs/{id}``); a finished job is unchanged.

        Returns
        -------
        Job
            The job after the request (``state == "cancelled"`` unless it had already finished).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        """
        return await self._run(self._cancel_job_flow(job_id))

    async def wait_job(
        self,
        job_id: str,
        timeout_s: float | None = None,
        progress: bool = True,
        poll_s: float = DEFAULT_JOB_POLL_S,
    ) -> Job:
        """Poll a job until it succeeds, fails or is cancelled.

        Parameters
        ----------
        job_id : str
        timeout_s : float, optional
            Give up after this many seconds (:class:`TimeoutError`); default: wait as long as it takes.
        progress : bool, default True
            Show a tqdm progress bar over the job's items when tqdm is installed (silently none otherwise).
        poll_s : float, default 1.0
            Seconds between polls.

        Returns
        -------
        Job
            The finished job; check ``state`` (a failed job is returned, not raised).

        Raises
        ------
        TimeoutError
            Still not finished after ``timeout_s`` seconds (the job goes on).
        NotFoundError
            Unknown or expired job (404).
        """
        return await self._run(self._wait_job_flow(job_id, timeout_s, poll_s, progress))

    async def job_results_page(
        self, job_id: str, offset: int = 0, limit: int = DEFAULT_JOB_PAGE_SIZE
    ) -> JobResultsPage:
        """One page of a job's results: items ``offset`` to ``offset + limit`` in input order.

        Items not predicted (yet) are ``None``; see :class:`JobResultsPage`. ``limit`` is at most the server's
        ``max_batch_size`` (10,000 by default).

        Raises
        ------
        NotFoundError
            Unknown or expired job (404).
        InvalidInputError
            ``limit`` above the server's maximum (422).
        """
        return await self._run(self._job_results_page_flow(job_id, offset, limit))

    async def job_results(
        self, job_id: str, page_size: int = DEFAULT_JOB_PAGE_SIZE
    ) -> AsyncIterator[FormationEnthalpyResult | dict[str, Any] | None]:
        """Every result of a job, in input order, fetched page by page as the iteration goes.

        Call it once the job has finished (see :meth:`wait_job`): items not predicted are ``None``.
        Formation enthalpy items are :class:`FormationEnthalpyResult` (with ``model`` and ``version``, and a
        per-item ``error`` for inputs that could not be predicted); items of other models are dicts.

        Examples
        --------
        >>> job = await client.submit_job("formation_enthalpy", formulas)  # doctest: +SKIP
        >>> await client.wait_job(job.job_id)  # doctest: +SKIP
        >>> results = [r async for r in client.job_results(job.job_id)]  # doctest: +SKIP
        """
        offset: int | None = 0
        while offset is not None:
            page = await self._run(self._job_results_page_flow(job_id, offset, page_size))
            for item in page.results:
                yield item
            offset = page.next_offset

    async def aclose(self) -> None:
        """Close pooled connections. The client cannot be used afterwards."""
        await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._http.is_closed

    async def __aenter__(self: _AsyncClientT) -> _AsyncClientT:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
