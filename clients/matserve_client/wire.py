"""Wire schemas: the JSON bodies the matserve HTTP API answers with, defined once for the server and the SDK.

The server's routes declare and return these models (``response_model``); the SDK validates answers with them
before it turns them into its own result types (:mod:`matserve_client.models`, which add ``model`` and
``version`` to every result and decode PNGs). Units and conventions are in the field descriptions: Euler angles
Bunge ZXZ; ``_deg`` degrees, ``_rad`` radians; enthalpies eV/atom; q in 1/Angstrom.

Request bodies are parsed by the server only (:mod:`matserve.api`); the SDK builds them from arguments.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FormationEnthalpyResult(BaseModel):
    """One formula's answer: values in eV/atom, or ``error`` saying why there is none."""

    formula: str
    normalized_formula: str | None
    formation_enthalpy_ev_per_atom: float | None
    uncertainty_ev_per_atom: float | None = None
    error: str | None = None


class FormationEnthalpyResponse(BaseModel):
    """Results in request order, and the model version that produced them."""

    model: str
    version: str
    results: list[FormationEnthalpyResult]


_MEASURED_RANGE = (
    "[low, high] 2θ, degrees (Cu Kα scale), that the pattern covers inside 20-90°; the models see the pattern's "
    "background level outside it; null for versions that do not report it"
)
_BEST_FIT_PHASE = (
    "the known phase (structure type) whose physics fit (peak positions and intensities, refined lattice) "
    "explains the pattern best; null for versions without the fit"
)
_FIT_RESIDUAL = (
    "residual (0-1, clipped) of the best single-family physics fit: the fraction of the pattern's peak signal it "
    "leaves unexplained plus half its intensity misfit (0 = explained perfectly); null for versions without the fit"
)


class XrdPhaseComponent(BaseModel):
    """One identified known phase of a pattern (a mixture has several, major first)."""

    phase: str = Field(description="known phase (structure type), e.g. 'fcc_Fm-3m'")
    space_group: str = Field(description="its space group (Hermann-Mauguin), e.g. 'Fm-3m'")
    weight_fraction: float = Field(
        description="its share (0-1) of the diffracted signal, each phase's pattern normalised to its strongest "
        "peak, i.e. the weight fraction with all reference intensity ratios (RIR) equal to 1; the components' "
        "shares and unexplained_fraction describe the peak signal"
    )
    confidence: float = Field(description="probability (0-1) that this phase is really present")
    lattice_a_angstrom: float | None = Field(
        default=None, description="refined lattice parameter a, Angstrom (null when the fit found no lattice)"
    )
    lattice_c_angstrom: float | None = Field(
        default=None, description="refined lattice parameter c, Angstrom (hexagonal phases only, else null)"
    )


class XrdPhaseResult(BaseModel):
    """One pattern's phase: the most probable known structure type and every class probability.

    From the physics-fit versions on, the answer may abstain (``abstained``: the pattern is none of the known
    phases nor a mixture of them; ``phase``, ``space_group`` and ``probability`` are then null), and ``phases``
    names up to 3 known phases of a mixture. Versions before leave the new fields at their defaults.
    """

    phase: str | None = Field(description="the most probable known phase (structure type); null when abstained")
    space_group: str | None = Field(description="its space group (Hermann-Mauguin); null when abstained")
    probability: float | None = Field(description="its probability (0-1); null when abstained")
    probabilities: dict[str, float] = Field(
        description="probability (0-1) of every known phase; they sum to 1 - probability_unknown (to 1 when that "
        "is null)"
    )
    abstained: bool = Field(
        default=False,
        description="true when the pattern is not one of the known phases nor a mixture of them: no phase is named",
    )
    reason: str | None = Field(default=None, description="why the answer abstained (human-readable); null otherwise")
    probability_unknown: float | None = Field(
        default=None,
        description="calibrated probability (0-1) that the pattern is none of the known phases nor a mixture of "
        "them; null for versions that do not estimate it",
    )
    best_fit_phase: str | None = Field(default=None, description=_BEST_FIT_PHASE)
    best_fit_residual: float | None = Field(default=None, description=_FIT_RESIDUAL)
    phases: list[XrdPhaseComponent] = Field(
        default_factory=list,
        max_length=3,
        description="up to 3 identified known phases, major first (one for a single-phase pattern); empty when "
        "abstained or for versions without the physics fit",
    )
    unexplained_fraction: float | None = Field(
        default=None,
        description="fraction (0-1) of the pattern's peak signal that no identified phase explains; null for "
        "versions without the physics fit",
    )
    coverage: float = Field(description="fraction of 20-90° 2θ (Cu Kα) the pattern covered")
    measured_range_deg: list[float] | None = Field(
        default=None, min_length=2, max_length=2, description=_MEASURED_RANGE
    )
    source: str | None = Field(default=None, description="file name of a multipart upload")
    error: str | None = Field(
        default=None, description="always null here: a pattern that cannot be used fails the request"
    )


class XrdPhaseResponse(BaseModel):
    model: str
    version: str
    results: list[XrdPhaseResult]


class XrdPlots(BaseModel):
    """Base64-encoded PNG images."""

    reconstruction_png: str
    latent_map_png: str


class XrdNoveltyResult(BaseModel):
    """One pattern's novelty: VAE reconstruction error, its percentile among known-phase validation patterns,
    the verdict at the card's threshold percentile, latent coordinates and the nearest known phase there.

    Physics-fit versions add a calibrated ``novelty_score`` (``is_novel`` is then that score above the card's
    threshold), the fit's ``physics_residual`` and ``best_fit_phase``; versions before leave them null.
    """

    reconstruction_error: float
    outlier_probability: float | None = Field(
        default=None,
        description="P(not a single known phase) from the outlier-exposure detector, if the version has one",
    )
    novelty_percentile: float
    is_novel: bool
    threshold_percentile: float
    latent: list[float] = Field(description="latent coordinates (latent means)")
    latent_map: list[float] = Field(description="2-d map coordinates: PCA projection of the latent space")
    nearest_known_phase: str
    nearest_known_phase_share: float = Field(description="share of the 15 nearest known patterns of that phase")
    novelty_score: float | None = Field(
        default=None,
        description="calibrated probability (0-1) that the pattern is novel (not a known phase nor a mixture of "
        "them); is_novel is this above the card's threshold; null for versions without it",
    )
    physics_residual: float | None = Field(default=None, description=_FIT_RESIDUAL)
    best_fit_phase: str | None = Field(default=None, description=_BEST_FIT_PHASE)
    coverage: float = Field(description="fraction of 20-90° 2θ (Cu Kα) the pattern covered")
    measured_range_deg: list[float] | None = Field(
        default=None, min_length=2, max_length=2, description=_MEASURED_RANGE
    )
    plots: XrdPlots | None = None
    source: str | None = Field(default=None, description="file name of a multipart upload")
    error: str | None = Field(
        default=None, description="always null here: a pattern that cannot be used fails the request"
    )


class XrdNoveltyResponse(BaseModel):
    model: str
    version: str
    results: list[XrdNoveltyResult]


class EbsdResult(BaseModel):
    """One pattern's orientation (see :mod:`matserve.models.ebsd_indexer` for the conventions)."""

    euler_bunge_deg: list[float] = Field(description="Bunge ZXZ (phi1, Phi, phi2), degrees, m-3m fundamental zone")
    euler_bunge_rad: list[float] = Field(description="the same angles in radians")
    quaternion: list[float] = Field(description="unit quaternion (a, b, c, d), sample -> crystal, a >= 0, orix")
    expected_error_deg: float = Field(
        description="estimated disorientation error, degrees (calibrated on validation data)"
    )
    confidence: float = Field(description="exp(-expected_error_deg / 1 deg)")
    pc: list[float] = Field(description="projection centre used (PCx, PCy, PCz), Bruker convention")
    refined: bool
    refinement_score: float | None = Field(default=None, description="NCC of the refined orientation")
    refinement_change_deg: float | None = Field(
        default=None, description="fast path -> refined disorientation, degrees"
    )
    source: str | None = Field(default=None, description="file part (and page/index) of a multipart upload")
    error: str | None = Field(
        default=None, description="always null here: a pattern that cannot be used fails the request"
    )


class EbsdIndexResponse(BaseModel):
    model: str
    version: str
    results: list[EbsdResult]


class EbsdPixelError(BaseModel):
    row: int
    col: int
    error: str


class EbsdScanResponse(BaseModel):
    """An orientation map: per-pixel lists ``[rows][cols]...``; ``null`` where a pixel could not be indexed."""

    model: str
    version: str
    rows: int
    cols: int
    refined: bool
    indexed: int
    failed: int
    pc: list[float] = Field(description="mean projection centre used")
    euler_bunge_deg: list[list[list[float] | None]]
    quaternion: list[list[list[float] | None]]
    confidence: list[list[float | None]]
    expected_error_deg: list[list[float | None]]
    refinement_score: list[list[float | None]] | None = None
    errors: list[EbsdPixelError]
    ipf_z_rgb: list[list[list[int]]] = Field(description="IPF-Z colours (orix TSL key), uint8; failed pixels black")
    ipf_z_png: str = Field(description="base64 PNG of the IPF-Z map, each pixel ipf_z_png_scale x ipf_z_png_scale")
    ipf_z_png_scale: int


class ScatteringResult(BaseModel):
    """One image's classes (see :mod:`matserve.models.scattering_sorter` for the conventions)."""

    source: str = Field(description="the image: 'file.tif', 'file.h5[frame 2]' (0-based), 'images[3]', 'body'")
    technique: str | None = Field(description="most probable technique (saxs, waxs, gisaxs, giwaxs)")
    technique_probabilities: dict[str, float] | None = Field(description="softmax over the techniques")
    technique_confident: bool | None = Field(
        default=None,
        description="whether the top technique probability reaches the card's technique_confidence_thresholds "
        "(one threshold with the setup known, one without; from 1.4.0 calibrated on real images too) and the "
        "image is not out_of_distribution: sort these automatically, send the others to a person; null for "
        "versions before 1.3.0",
    )
    geometry: str | None = Field(description="most probable geometry (transmission, grazing)")
    geometry_probabilities: dict[str, float] | None = Field(description="softmax over the geometries")
    features: list[str] | None = Field(
        description="features with probability >= their threshold (card feature_thresholds)"
    )
    feature_probabilities: dict[str, float] | None = Field(description="independent probability of each feature")
    detector_shape: list[int] | None = Field(description="[rows, cols], pixels")
    valid_fraction: float | None = Field(description="share of the detector's pixels that were valid (0-1)")
    q_span_inv_angstrom: float | None = Field(
        default=None,
        description="the detector's q span given to the network (1/Angstrom: |q| at the detector's diagonal); "
        "null when the distance, wavelength or pixel size was unknown, or the version takes no setup",
    )
    setup_source: str | None = Field(
        default=None,
        description="where each setup value came from, e.g. 'distance_m=request; wavelength_angstrom=header:CBF "
        "Wavelength (A); pixel_size_m=header:CBF Pixel_size (m)' (one word when all came from one place); "
        "'(..., inferred)' marks a unit decided from plausibility",
    )
    feature_distance: float | None = Field(
        default=None,
        description="how unlike the training images this image is: RMS standard deviations from the nearest "
        "technique's mean in the network's pooled-feature space (about 1 for training images); null for versions "
        "before 1.4.0",
    )
    out_of_distribution: bool | None = Field(
        default=None,
        description="feature_distance is above the card's threshold: the image is unlike anything the model learnt "
        "from, its technique is a guess, and technique_confident is false; null for versions before 1.4.0",
    )
    saliency_png_base64: str | None = Field(default=None, description="base64 RGB PNG: Grad-CAM over the image")
    saliency_label: str | None = Field(default=None, description="label whose Grad-CAM map the PNG shows")
    error: str | None = Field(default=None, description="why this image could not be sorted")


class ScatteringSortResponse(BaseModel):
    model: str
    version: str
    results: list[ScatteringResult]


class JobResponse(BaseModel):
    """A job's state and progress (``done`` and ``failed`` count items); times are ISO 8601 UTC."""

    job_id: str
    model: str
    version: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    durable: bool
    total: int
    done: int
    failed: int
    chunk_size: int
    chunks_total: int
    chunks_done: int
    chunk_starts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    status_url: str
    results_url: str


class JobResultsResponse(BaseModel):
    """Items ``offset`` to ``offset + limit`` of a job's results, in input order.

    Each item has the shape of the model's synchronous results (with a per-item ``error`` for inputs that could
    not be predicted), or is ``null`` while its chunk has not run (or never will: cancelled or failed job).
    ``next_offset`` is where the next page starts, ``null`` after the last one.
    """

    job_id: str
    model: str
    version: str
    state: str
    total: int
    offset: int
    limit: int
    next_offset: int | None
    results: list[dict[str, Any] | None]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
