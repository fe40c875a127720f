"""The SDK's result types: what its methods return, with ``model`` and ``version`` in every result and PNGs decoded.

(Over 500 lines: one result type per model and route with their numpydoc; the wire schemas they are built from are
:mod:`matserve_client.wire`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import wire

__all__ = [
    "TERMINAL_JOB_STATES",
    "EbsdIndexResult",
    "EbsdPixelError",
    "EbsdScanResult",
    "FormationEnthalpyResult",
    "Job",
    "JobResultsPage",
    "ModelInfo",
    "ModelVersionInfo",
    "ScatteringFileResult",
    "ScatteringResult",
    "XrdNoveltyResult",
    "XrdPhaseComponent",
    "XrdPhaseResult",
]

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
"""Job states after which nothing changes any more."""


class FormationEnthalpyResult(BaseModel):
    """Prediction for one formula.

    Attributes
    ----------
    formula : str
        The formula as sent.
    normalized_formula : str or None
        The server's canonical (reduced, element-ordered) form of the formula; ``None`` if it could not be parsed.
    formation_enthalpy_ev_per_atom : float or None
        Predicted formation enthalpy, in eV/atom; ``None`` when :attr:`error` is set.
    uncertainty_ev_per_atom : float or None
        Uncertainty (spread) of the prediction, in eV/atom; ``None`` if the model does not provide one.
    error : str or None
        Why this formula could not be predicted (e.g. unknown element); ``None`` on success. A per-formula error
        does not fail the rest of the batch.
    model : str
        Name of the model that answered (from the response envelope), e.g. ``"formation_enthalpy"``.
    version : str
        Version of the model that answered (from the response envelope), e.g. ``"1.0.0"``.
    """

    model_config = ConfigDict(frozen=True)

    formula: str
    normalized_formula: str | None = None
    formation_enthalpy_ev_per_atom: float | None = None
    uncertainty_ev_per_atom: float | None = None
    error: str | None = None
    model: str
    version: str

    @property
    def ok(self) -> bool:
        """``True`` if the formula was predicted: no :attr:`error` and a formation enthalpy is present."""
        return self.error is None and self.formation_enthalpy_ev_per_atom is not None


class XrdPhaseComponent(wire.XrdPhaseComponent):
    """One identified known phase of a diffraction pattern (a mixture has up to 3, major first).

    Attributes
    ----------
    phase : str
        The known phase (structure type), e.g. ``"fcc_Fm-3m"``.
    space_group : str
        Its space group (Hermann-Mauguin), e.g. ``"Fm-3m"``.
    weight_fraction : float
        Its share (0-1) of the diffracted signal, each phase's pattern normalised to its strongest peak, i.e. the
        weight fraction with all reference intensity ratios equal to 1 (real weight fractions need the phases'
        RIRs).
    confidence : float
        Probability (0-1) that this phase is really present.
    lattice_a_angstrom : float
        Refined lattice parameter a, Å.
    lattice_c_angstrom : float or None
        Refined lattice parameter c, Å (hexagonal phases only).
    """

    model_config = ConfigDict(frozen=True)

    def describe(self) -> str:
        """One line: ``"hcp_P6_3/mmc 30.0 % (confidence 0.80, a = 2.507 Å, c = 4.070 Å)"``."""
        lattice = "no lattice fitted" if self.lattice_a_angstrom is None else f"a = {self.lattice_a_angstrom:.3f} Å"
        if self.lattice_c_angstrom is not None:
            lattice += f", c = {self.lattice_c_angstrom:.3f} Å"
        return f"{self.phase} {self.weight_fraction:.1%} (confidence {self.confidence:.2f}, {lattice})"


class XrdPhaseResult(BaseModel):
    """Phase classification of one diffraction pattern.

    Versions with the physics fit may abstain (:attr:`abstained`) on a pattern that is none of the known phases
    nor a mixture of them, and name up to 3 phases of a mixture (:attr:`phases`); older versions leave those
    fields at their defaults (``False``, ``None``, ``[]``).

    Attributes
    ----------
    phase : str or None
        The most probable known phase (structure type), e.g. ``"fcc_Fm-3m"``; ``None`` when the answer abstained.
    space_group : str or None
        Its space group (Hermann-Mauguin), e.g. ``"Fm-3m"``; ``None`` when abstained.
    probability : float or None
        Its probability (0-1); ``None`` when abstained.
    probabilities : dict of str to float
        Every known phase's probability; they sum to ``1 - probability_unknown`` (to 1 for versions without it).
    abstained : bool
        ``True`` when the pattern is not one of the known phases nor a mixture of them: no phase is named.
    reason : str or None
        Why the answer abstained (human-readable); ``None`` otherwise.
    probability_unknown : float or None
        Calibrated probability (0-1) that the pattern is none of the known phases nor a mixture of them; ``None``
        for versions that do not estimate it.
    best_fit_phase : str or None
        The known phase whose physics fit explains the pattern best (also when abstained).
    best_fit_residual : float or None
        Fraction (0-1) of the pattern's peak signal that best fit leaves unexplained.
    phases : list of XrdPhaseComponent
        Up to 3 identified known phases, major first (one for a single phase); empty when abstained or for
        versions without the physics fit.
    unexplained_fraction : float or None
        Fraction (0-1) of the peak signal that no identified phase explains.
    coverage : float
        Fraction of 20-90° 2θ (Cu Kα scale) the pattern covered.
    measured_range_deg : list of float or None
        ``[low, high]`` 2θ, degrees (Cu Kα scale), the pattern covers inside 20-90°; ``None`` from servers that
        do not report it.
    source : str or None
        The file the pattern was read from, when the SDK read it.
    model, version : str
        Who answered.
    """

    model_config = ConfigDict(frozen=True)

    phase: str | None = None
    space_group: str | None = None
    probability: float | None = None
    probabilities: dict[str, float]
    abstained: bool = False
    reason: str | None = None
    probability_unknown: float | None = None
    best_fit_phase: str | None = None
    best_fit_residual: float | None = None
    phases: list[XrdPhaseComponent] = Field(default_factory=list)
    unexplained_fraction: float | None = None
    coverage: float
    measured_range_deg: list[float] | None = None
    source: str | None = None
    model: str
    version: str

    @property
    def phase_or_unknown(self) -> str:
        """:attr:`phase`, or ``"unknown"`` when the answer abstained (or named no phase)."""
        return "unknown" if self.abstained or self.phase is None else self.phase

    @property
    def is_mixture(self) -> bool:
        """``True`` when more than one known phase was identified."""
        return len(self.phases) > 1

    def summary(self) -> str:
        """One line for people: the phase or ``unknown (abstained: reason)`` with the best fit and its residual,
        or the mixture's phases with their signal fractions and confidences and the unexplained fraction; then
        ``P(unknown)`` when the version estimates it."""
        if self.abstained or self.phase is None:
            text = f"unknown (abstained: {self.reason})" if self.reason else "unknown (abstained)"
            if self.best_fit_phase is not None:
                text += f"; best fit {self.best_fit_phase}"
                if self.best_fit_residual is not None:
                    text += f", residual {self.best_fit_residual:.1%}"
        elif self.is_mixture:
            text = "mixture: " + ", ".join(
                f"{c.phase} {c.weight_fraction:.1%} (confidence {c.confidence:.2f})" for c in self.phases
            )
        else:
            text = self.phase if self.probability is None else f"{self.phase} (p {self.probability:.3f})"
        if self.phases and self.unexplained_fraction is not None and not self.abstained:
            text += f"; unexplained {self.unexplained_fraction:.1%}"
        if self.probability_unknown is not None:
            text += f"; P(unknown) {self.probability_unknown:.3f}"
        return text


class XrdNoveltyResult(BaseModel):
    """Novelty of one diffraction pattern (VAE reconstruction error, seed 002).

    Attributes
    ----------
    reconstruction_error : float
        Mean squared error between the pattern (on the model grid, scaled to [0, 1]) and its reconstruction.
    outlier_probability : float or None
        Probability that the pattern is not a single known phase, from the model's outlier-exposure detector
        (``None`` for a version without one).
    novelty_percentile : float
        Percentile (0-100) of the novelty score (the larger of the validation percentiles of the reconstruction
        error and of the outlier probability) among validation patterns of the known phases.
    is_novel : bool
        ``True`` above ``threshold_percentile``: a phase the models have not seen, a mixture, or a failed
        measurement.
    threshold_percentile : float
        The percentile of the verdict (from the model card; 99 by default, i.e. 1 % of known patterns flagged).
    latent : list of float
        The pattern's latent coordinates (latent means of the VAE).
    latent_map : list of float
        Its 2-d coordinates on the latent map (a PCA projection of the latent space, as in the PNG).
    nearest_known_phase : str
        Majority phase of the 15 nearest known patterns in latent space.
    nearest_known_phase_share : float
        Share of those 15 that have that phase.
    novelty_score : float or None
        Calibrated probability (0-1) that the pattern is novel (not a known phase nor a mixture of them);
        :attr:`is_novel` is this score above the card's threshold. ``None`` for versions without it.
    physics_residual : float or None
        Fraction (0-1) of the pattern's peak signal that the best single-phase physics fit leaves unexplained.
    best_fit_phase : str or None
        The known phase of that best fit.
    coverage : float
        Fraction of 20-90° 2θ covered.
    measured_range_deg : list of float or None
        ``[low, high]`` 2θ, degrees (Cu Kα scale), the pattern covers inside 20-90°.
    reconstruction_png, latent_map_png : bytes or None
        PNG images, when requested with ``plots=True``.
    source : str or None
        The file the pattern was read from, when the SDK read it.
    model, version : str
        Who answered.
    """

    model_config = ConfigDict(frozen=True)

    reconstruction_error: float
    outlier_probability: float | None = None
    novelty_percentile: float
    is_novel: bool
    threshold_percentile: float
    latent: list[float]
    latent_map: list[float]
    nearest_known_phase: str
    nearest_known_phase_share: float
    novelty_score: float | None = None
    physics_residual: float | None = None
    best_fit_phase: str | None = None
    coverage: float
    measured_range_deg: list[float] | None = None
    reconstruction_png: bytes | None = None
    latent_map_png: bytes | None = None
    source: str | None = None
    model: str
    version: str

    def save_plots(self, prefix: str | Path) -> list[Path]:
        """Write the PNGs as ``<prefix>_reconstruction.png`` and ``<prefix>_latent_map.png``; return the paths."""
        if self.reconstruction_png is None or self.latent_map_png is None:
            raise ValueError("no plots in this result: call xrd_novelty(..., plots=True)")
        paths = [Path(f"{prefix}_reconstruction.png"), Path(f"{prefix}_latent_map.png")]
        for path, data in zip(paths, (self.reconstruction_png, self.latent_map_png), strict=True):
            path.write_bytes(data)
        return paths


class EbsdIndexResult(BaseModel):
    """Orientation of one EBSD pattern (nickel, m-3m).

    Attributes
    ----------
    euler_bunge_deg : list of float
        Bunge (ZXZ) Euler angles (phi1, Phi, phi2), degrees, of the orientation reduced to the m-3m fundamental
        zone (orix's ``Orientation.reduce()``): phi1, phi2 in [0, 360), Phi in [0, 62.8].
    euler_bunge_rad : list of float
        The same angles, radians.
    quaternion : list of float
        Unit quaternion (a, b, c, d), orix convention, rotation from the sample to the crystal frame (as
        kikuchipy's ``CrystalMap.rotations``), fundamental zone, ``a >= 0``.
    expected_error_deg : float
        The estimated disorientation error, degrees (2.0.0: calibrated from the match similarity; 1.0.0: the
        network's fit residual).
    confidence : float
        ``exp(-expected_error_deg / 1 deg)``.
    pc : list of float
        Projection centre used (PCx, PCy, PCz), Bruker convention (fractions of detector width, height, width).
    refined : bool
        Whether the orientation was refined against the master pattern (``refine=True``).
    refinement_score : float or None
        Normalised cross-correlation of the pattern with the simulation at the refined orientation.
    refinement_change_deg : float or None
        Disorientation between the fast path's and the refined orientation, degrees.
    source : str or None
        The file the pattern came from (``path`` or ``path[k]`` for the k-th pattern of a TIFF or ``.npy``).
    model, version : str
        Who answered.
    """

    model_config = ConfigDict(frozen=True)

    euler_bunge_deg: list[float]
    euler_bunge_rad: list[float]
    quaternion: list[float]
    expected_error_deg: float
    confidence: float
    pc: list[float]
    refined: bool = False
    refinement_score: float | None = None
    refinement_change_deg: float | None = None
    source: str | None = None
    model: str
    version: str


class EbsdPixelError(BaseModel):
    """A scan pixel that could not be indexed (row and column of the scan, 0-based)."""

    model_config = ConfigDict(frozen=True)

    row: int
    col: int
    error: str


class EbsdScanResult(BaseModel):
    """An indexed EBSD scan: per-pixel maps ``[rows][cols]``, ``None`` where a pixel could not be indexed.

    Attributes
    ----------
    rows, cols : int
        Scan shape.
    euler_bunge_deg : list
        ``[rows][cols][3]`` Bunge Euler angles, degrees (conventions of :class:`EbsdIndexResult`).
    quaternion : list
        ``[rows][cols][4]`` unit quaternions (a, b, c, d), sample -> crystal, fundamental zone.
    confidence, expected_error_deg : list
        ``[rows][cols]`` as in :class:`EbsdIndexResult`.
    refinement_score : list or None
        ``[rows][cols]`` NCC scores when refined.
    errors : list of EbsdPixelError
        Pixels that could not be indexed, and why.
    ipf_z_rgb : list
        ``[rows][cols][3]`` IPF-Z colours (orix TSL key, uint8); failed pixels black.
    pc : list of float
        Mean projection centre used.
    refined : bool
        Whether orientations were refined.
    model, version : str
        Who answered.
    """

    model_config = ConfigDict(frozen=True)

    rows: int
    cols: int
    euler_bunge_deg: list[list[list[float] | None]]
    quaternion: list[list[list[float] | None]]
    confidence: list[list[float | None]]
    expected_error_deg: list[list[float | None]]
    refinement_score: list[list[float | None]] | None = None
    errors: list[EbsdPixelError] = Field(default_factory=list)
    ipf_z_rgb: list[list[list[int]]]
    pc: list[float]
    refined: bool = False
    model: str
    version: str

    def arrays(self) -> dict[str, Any]:
        """The maps as numpy arrays (NaN where a pixel failed): ``euler_bunge_deg`` ``(rows, cols, 3)``,
        ``quaternion`` ``(rows, cols, 4)``, ``confidence``, ``expected_error_deg`` ``(rows, cols)``,
        ``ipf_z_rgb`` uint8 ``(rows, cols, 3)`` (needs numpy)."""
        import numpy as np

        def filled(grid: list[Any], width: int | None) -> Any:
            shape = (self.rows, self.cols) + ((width,) if width else ())
            out = np.full(shape, np.nan)
            for r, row in enumerate(grid):
                for c, value in enumerate(row):
                    if value is not None:
                        out[r, c] = value
            return out

        arrays = {"euler_bunge_deg": filled(self.euler_bunge_deg, 3), "quaternion": filled(self.quaternion, 4),
                  "confidence": filled(self.confidence, None), "expected_error_deg": filled(self.expected_error_deg, None),
                  "ipf_z_rgb": np.asarray(self.ipf_z_rgb, dtype=np.uint8).reshape(self.rows, self.cols, 3)}  # fmt: skip
        if self.refinement_score is not None:
            arrays["refinement_score"] = filled(self.refinement_score, None)
        return arrays

    def ipf_png(self, scale: int | None = None) -> bytes:
        """PNG bytes of the IPF-Z map, each pixel ``scale`` x ``scale`` (default: about 512 px on the long side)."""
        from .ebsd_files import png_rgb

        if scale is None:
            scale = max(1, min(32, 512 // max(self.rows, self.cols, 1)))
        return png_rgb(self.ipf_z_rgb, scale)

    def save_ipf_png(self, path: str | Path, scale: int | None = None) -> Path:
        """Write the IPF-Z map as a PNG (see :meth:`ipf_png`); returns the path."""
        path = Path(path)
        path.write_bytes(self.ipf_png(scale))
        return path


class ScatteringResult(BaseModel):
    """Technique, geometry and features of one 2D X-ray detector image (one frame of a file).

    Attributes
    ----------
    source : str or None
        The image: the file path (``path[frame k]`` for frame ``k``, 0-based, of a multi-frame file), or the
        server's name for arrays and bytes (``body``, ``body[frame k]``).
    technique : str or None
        Most probable technique: ``saxs``, ``waxs``, ``gisaxs`` or ``giwaxs`` (the version's card labels).
    technique_probabilities : dict of str to float or None
        Probability of every technique (they sum to 1).
    technique_confident : bool or None
        Whether the top technique probability reaches the version's calibrated threshold (from 1.4.0 set on
        simulated and real images) and the image is not :attr:`out_of_distribution`: sort these automatically,
        have a person check the others. ``None`` for versions without thresholds (before 1.3.0).
    geometry : str or None
        Most probable geometry: ``transmission`` or ``grazing``.
    geometry_probabilities : dict of str to float or None
        Probability of every geometry (they sum to 1).
    features : list of str or None
        Features present (probability at least the card's per-feature ``feature_thresholds``), among ``rings``,
        ``arcs``, ``rods``, ``bragg_peaks``, ``diffuse_halo``.
    feature_probabilities : dict of str to float or None
        Independent probability of every feature (multi-label: they need not sum to 1).
    detector_shape : list of int or None
        ``[rows, cols]`` of the image, pixels.
    valid_fraction : float or None
        Share of the detector's pixels that were valid (not gaps, masked, negative or saturated), 0-1.
    q_span_inv_angstrom : float or None
        The detector's q span the network was given (1/Angstrom, |q| at the detector's diagonal); ``None`` when
        the distance, wavelength or pixel size was unknown (sorted from the pixels alone), or the version takes
        no setup.
    setup_source : str or None
        Where each setup value came from, ``name=where`` joined by ``"; "`` (e.g. ``distance_m=request;
        wavelength_angstrom=header:CBF Wavelength (A)``), one word when all came from one place.
    feature_distance : float or None
        How unlike the training images the image is (RMS standard deviations in the network's feature space;
        about 1 for training images); ``None`` before version 1.4.0.
    out_of_distribution : bool or None
        ``feature_distance`` above the card's threshold: the technique is a guess and never confident.
    saliency_png : bytes or None
        With ``saliency=True``: an RGB PNG of the image as the network saw it (log intensity, grey) with the
        Grad-CAM map of :attr:`saliency_label` over it (see :meth:`save_saliency_png`).
    saliency_label : str or None
        The label whose map the PNG shows.
    error : str or None
        Why this image could not be sorted (the other images of the file still are); ``None`` on success.
    model, version : str
        Who answered.
    """

    model_config = ConfigDict(frozen=True)

    source: str | None = None
    technique: str | None = None
    technique_probabilities: dict[str, float] | None = None
    technique_confident: bool | None = None
    geometry: str | None = None
    geometry_probabilities: dict[str, float] | None = None
    features: list[str] | None = None
    feature_probabilities: dict[str, float] | None = None
    detector_shape: list[int] | None = None
    valid_fraction: float | None = None
    q_span_inv_angstrom: float | None = None
    setup_source: str | None = None
    feature_distance: float | None = None
    out_of_distribution: bool | None = None
    saliency_png: bytes | None = Field(default=None, repr=False)
    saliency_label: str | None = None
    error: str | None = None
    model: str
    version: str

    @property
    def ok(self) -> bool:
        """``True`` if the image was sorted (no :attr:`error`)."""
        return self.error is None and self.technique is not None

    def save_saliency_png(self, path: str | Path) -> Path:
        """Write the saliency PNG to ``path``; returns the path.

        Raises
        ------
        ValueError
            No PNG in this result: call ``sort_scattering(..., saliency=True)``.
        """
        if self.saliency_png is None:
            raise ValueError("no saliency PNG in this result: call sort_scattering(..., saliency=True)")
        path = Path(path)
        path.write_bytes(self.saliency_png)
        return path


class ScatteringFileResult(BaseModel):
    """The answer for one file of a folder (:meth:`Client.sort_scattering_folder`).

    Attributes
    ----------
    path : str
        The file.
    results : list of ScatteringResult
        One per frame of the file (empty when :attr:`error` is set).
    error : str or None
        Why the file could not be sorted (unreadable, no usable image, over a size limit, ...); ``None`` on success.
    status_code : int or None
        The HTTP status of the refusal, when the server refused the file.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    results: list[ScatteringResult] = Field(default_factory=list)
    error: str | None = None
    status_code: int | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the file was sorted (some of its frames may still carry an ``error``)."""
        return self.error is None


class ModelVersionInfo(BaseModel):
    """One registered version of a model, as listed by ``GET /v1/models``.

    Fields not listed below (``description``, ``inputs``, ``outputs``, ``code_commit``, ``baselines``, ...) are
    kept as extra attributes; see ``model_extra``.

    Attributes
    ----------
    name : str
        Model name.
    version : str
        Version string, e.g. ``"1.0.0"``.
    task : str or None
        What the model predicts.
    created : str or None
        Creation time as an ISO 8601 string, as recorded in the model card.
    metrics : dict
        Evaluation metrics from the model card (free-form; error metrics are in eV/atom for formation enthalpy).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    task: str | None = None
    created: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    """A servable model, as listed by ``GET /v1/models``.

    Attributes
    ----------
    name : str
        Model name, e.g. ``"formation_enthalpy"``.
    active_version : str or None
        Version served when a request does not pin one.
    max_batch_size : int
        Most formulas accepted in one request; larger requests get HTTP 413.
    versions : list of ModelVersionInfo
        Every servable version of this model.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    active_version: str | None = None
    max_batch_size: int = Field(gt=0)
    versions: list[ModelVersionInfo] = Field(default_factory=list)


class _ModelsResponse(BaseModel):
    """Body of a 200 response to ``GET /v1/models``."""

    models: list[ModelInfo]
    refused: dict[str, Any] = Field(default_factory=dict)


class Job(BaseModel):
    """A batch job, as reported by ``POST /v1/jobs``, ``GET /v1/jobs/{id}`` and ``DELETE /v1/jobs/{id}``.

    Fields not listed below (``chunk_size``, ``chunks_total``, ``chunks_done``, ``chunk_starts``, ...) are kept as
    extra attributes; see ``model_extra``.

    Attributes
    ----------
    job_id : str
        Identifier to poll, read and cancel the job with.
    model : str
        Model that runs the job, e.g. ``"formation_enthalpy"``.
    version : str
        Model version pinned when the job was submitted; every result comes from it.
    state : str
        ``"queued"``, ``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
    durable : bool
        Whether the job survives a server restart (``False`` when the server runs without Redis).
    total : int
        Number of inputs.
    done : int
        Inputs predicted so far (including those with a per-item error).
    failed : int
        Inputs predicted so far whose result carries a per-item ``error``.
    created_at, started_at, finished_at : str or None
        ISO 8601 UTC times of submission, of the first chunk started, and of the end.
    error : str or None
        Why the job failed (``state == "failed"``).
    status_url, results_url : str or None
        Server paths of the job and of its results.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    job_id: str
    model: str
    version: str
    state: str
    durable: bool = True
    total: int
    done: int = 0
    failed: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    status_url: str | None = None
    results_url: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal state (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_JOB_STATES

    @property
    def fraction_done(self) -> float:
        """Share of the inputs predicted so far, between 0 and 1."""
        return self.done / self.total if self.total else 1.0


class JobResultsPage(BaseModel):
    """One page of a job's results (``GET /v1/jobs/{id}/results``).

    Attributes
    ----------
    job_id, model, version, state : str
        The job (``state`` as of this page).
    total : int
        Number of inputs in the job.
    offset : int
        Position of the first result of this page among the job's inputs (0-based).
    limit : int
        Page size asked for.
    next_offset : int or None
        Offset of the next page; ``None`` after the last one.
    results : list
        One entry per input, in input order: a :class:`FormationEnthalpyResult` for formation enthalpy jobs (a
        dict for models this client does not know), or ``None`` for an input not predicted (yet: its chunk has
        not run; or ever: the job was cancelled or failed first).
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    model: str
    version: str
    state: str
    total: int
    offset: int
    limit: int
    next_offset: int | None
    results: list[FormationEnthalpyResult | dict[str, Any] | None]
