"""Physics fit of powder patterns to the known structure families: what a known phase explains, and what it does not.

(About 600 lines: the one-family fit and the mixture decomposition share :class:`FamilyFit` and its row helpers;
the peaks and the families live in their own modules.)

Shared by the XRD phase classifier and the novelty scorer (issue 21); the families are
:mod:`matserve.models.xrd_families`, the calibrated scores on top :mod:`matserve.models.xrd_trust`. Vectorised
over a batch of patterns on the model grid (:data:`matserve.codecs.xrd.MODEL_GRID_DEG`, Cu Kα 1.54184 Å, 20-90° 2θ,
[0, 1]); no per-pattern Python loop (the decomposition runs only on patterns one family leaves > 4 % unexplained).
The steps:

1. **Peaks** (:mod:`matserve.models.xrd_peaks`): position and net height of each peak inside the measured range.
2. **Lattice candidates per family.** Cubic: each of the 5 strongest peaks taken as each of the first 4
   reflections gives ``a``. Hexagonal: each pair of the 4 strongest peaks taken as a pair of the first 5
   reflections gives ``(a, c)`` (2×2 solve in 1/a², 1/c²). Candidates outside the family's lattice window are dropped.
   Each candidate is scored by the peak height within ±0.3° of its reflections (rasterised cumulative sums), and the
   best three go on.
3. **Refinement.** Peaks are matched to the nearest reflection; a weighted least-squares step fits the zero shift and
   the lattice (``ln a``, ``ln c``); peaks are re-matched within ``0.15° + 0.2° tan θ`` (room for Kα1/Kα2 splitting and
   displacement).
4. **Intensities.** Reflections closer than the tolerance are merged. The height expected of each is
   ``|F|² m`` (the family's prototypes, from pymatgen, in ``physics_reference.json``) × Lorentz-polarisation ×
   March-Dollase (direction and r on a grid, 0.35-2.8) / width (∝ 1/cos θ); the scale is fitted by least squares
   and the prototype and texture with the lowest misfit are kept.
5. **Residuals.** ``unexplained_fraction``: the share of the peak height (Σ heights) that no reflection of the
   family is near. ``intensity_misfit``: Σ|observed − fitted| / Σ(observed + fitted) over the family's reflections
   inside the measured range, so missing strong reflections and wrong intensity ratios (rock salt as an fcc metal,
   wurtzite as hcp) count. ``residual`` = unexplained + misfit / 2. With ``first_guess`` (the classifier's answer, or
   the latent-space nearest phase) only that family is fitted unless its residual exceeds :data:`REFIT_ABOVE`.
6. **Mixtures** (:func:`decompose`): the best family is fitted, the height it explains is taken away, and the other
   families are fitted to what is left, up to 3 phases. Each phase's signal fraction is its fitted strongest
   height over the sum of them (the simulator's convention: every phase normalised to its strongest peak, i.e.
   weight fractions with all reference intensity ratios equal to 1).

Units: 2θ in degrees (Cu Kα scale), lattice parameters in Å, heights in the pattern's [0, 1] units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matserve.codecs.xrd import CU_KA_ANGSTROM, TWO_THETA_MAX_DEG, TWO_THETA_MIN_DEG
from matserve.models.xrd_families import TEXTURE_R, Family, two_theta_deg
from matserve.models.xrd_peaks import Peaks, find_peaks, raster, window_sum

CANDIDATE_PEAKS = 5
CANDIDATE_REFLECTIONS_CUBIC = 4
CANDIDATE_PEAKS_HEX = 4
CANDIDATE_REFLECTIONS_HEX = 5
SCORE_TOLERANCE_DEG = 0.3
KEEP_CANDIDATES = 3
TOLERANCE_DEG = 0.15
TOLERANCE_TAN_DEG = 0.2
MAX_ZERO_SHIFT_DEG = 0.5
MAX_PHASES = 3
MIN_COMPONENT_SHARE = 0.04
MIN_COMPONENT_REFLECTIONS = 2
MAX_COMPONENT_MISFIT = 0.55
REFIT_ABOVE = 0.05


# -- geometry ----------------------------------------------------------------------------------------------------


def _q_of(position_deg: np.ndarray) -> np.ndarray:
    """1/d² (Å⁻²) of 2θ (degrees, Cu Kα)."""
    return (2.0 * np.sin(np.radians(position_deg) / 2.0) / CU_KA_ANGSTROM) ** 2


def _candidates(family: Family, peaks: Peaks) -> tuple[np.ndarray, np.ndarray]:
    """Lattice candidates (B, K) a and c in Å; NaN where none."""
    if not family.hexagonal:
        q = _q_of(peaks.position_deg[:, :CANDIDATE_PEAKS].astype(np.float64))  # (B, K)
        valid = peaks.height[:, :CANDIDATE_PEAKS] > 0
        metric = family.metric_a[:CANDIDATE_REFLECTIONS_CUBIC]
        a = np.sqrt(metric[None, None, :] / np.where(valid, q, np.nan)[:, :, None]).reshape(len(q), -1)
        return a, a.copy()
    k = CANDIDATE_PEAKS_HEX
    q = _q_of(peaks.position_deg[:, :k].astype(np.float64))
    valid = peaks.height[:, :k] > 0
    q = np.where(valid, q, np.nan)
    i, j = np.triu_indices(k, 1)
    r1, r2 = np.nonzero(~np.eye(CANDIDATE_REFLECTIONS_HEX, dtype=bool))
    ma, mc = family.metric_a[:CANDIDATE_REFLECTIONS_HEX], family.metric_c[:CANDIDATE_REFLECTIONS_HEX]
    # q_i = ma[r1] u + mc[r1] v ; q_j = ma[r2] u + mc[r2] v  with u = 1/a², v = 1/c²
    det = ma[r1] * mc[r2] - ma[r2] * mc[r1]  # (S,)
    ok = np.abs(det) > 1e-9
    det = np.where(ok, det, np.nan)
    qi, qj = q[:, i][:, :, None], q[:, j][:, :, None]  # (B, pairs, 1)
    u = (qi * mc[r2] - qj * mc[r1]) / det
    v = (ma[r1] * qj - ma[r2] * qi) / det
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(u > 0, 1.0 / np.sqrt(np.where(u > 0, u, 1.0)), np.nan)
        c = np.where(v > 0, 1.0 / np.sqrt(np.where(v > 0, v, 1.0)), np.nan)
    return a.reshape(len(q), -1), c.reshape(len(q), -1)


# -- one family --------------------------------------------------------------------------------------------------


@dataclass
class FamilyFit:
    """The best fit of one family to each pattern of a batch (arrays of shape (B,) unless stated).

    Attributes
    ----------
    a_angstrom, c_angstrom : numpy.ndarray
        Fitted lattice (c = a for cubic families); NaN where nothing fitted.
    zero_shift_deg : numpy.ndarray
        Fitted zero shift, degrees.
    unexplained_fraction : numpy.ndarray
        Share of the peak height no reflection of the family is near (1 where nothing fitted).
    intensity_misfit : numpy.ndarray
        Σ|observed − fitted| / Σ(observed + fitted) over the family's reflections in range (1 where nothing fitted).
    residual : numpy.ndarray
        ``unexplained_fraction + intensity_misfit / 2``.
    matched_reflections : numpy.ndarray
        int: merged reflections with an observed peak.
    texture_r : numpy.ndarray
        March-Dollase r of the best texture option.
    strongest_height : numpy.ndarray
        Fitted height of the family's strongest reflection in 20-90°: the phase's scale.
    explained : numpy.ndarray
        (B, P) bool: peaks near a reflection.
    fitted_height : numpy.ndarray
        (B, P) fitted height of the reflection each explained peak belongs to (0 elsewhere).
    """

    a_angstrom: np.ndarray
    c_angstrom: np.ndarray
    zero_shift_deg: np.ndarray
    unexplained_fraction: np.ndarray
    intensity_misfit: np.ndarray
    residual: np.ndarray
    matched_reflections: np.ndarray
    texture_r: np.ndarray
    strongest_height: np.ndarray
    explained: np.ndarray
    fitted_height: np.ndarray


def _tolerance_deg(position_deg: np.ndarray) -> np.ndarray:
    return TOLERANCE_DEG + TOLERANCE_TAN_DEG * np.tan(np.radians(np.clip(position_deg, 0.0, 170.0)) / 2.0)


def _match(position_deg: np.ndarray, reflections_deg: np.ndarray, tolerance: np.ndarray | float) -> tuple:
    """Nearest reflection of each peak: index (B, P), |distance| (B, P)."""
    distance = np.abs(
        position_deg[:, :, None] - np.where(np.isfinite(reflections_deg), reflections_deg, 1e4)[:, None, :]
    )
    nearest = distance.argmin(axis=2)
    return nearest, np.take_along_axis(distance, nearest[:, :, None], axis=2)[:, :, 0] <= tolerance


def _refine(family: Family, peaks: Peaks, heights: np.ndarray, a: np.ndarray, c: np.ndarray) -> tuple:
    """One weighted least-squares step in (zero shift, ln a, ln c) from the peaks matched within 0.3°."""
    reflections = two_theta_deg(family, a, c)  # (B, R)
    nearest, matched = _match(peaks.position_deg, reflections, SCORE_TOLERANCE_DEG)
    predicted = np.take_along_axis(reflections, nearest, axis=1)
    weight = np.where(matched, heights, 0.0)
    theta = np.radians(np.nan_to_num(predicted, nan=45.0)) / 2.0
    q = family.metric_a[nearest] / a[:, None] ** 2 + family.metric_c[nearest] / c[:, None] ** 2
    slope = -2.0 * np.degrees(np.tan(theta)) / np.maximum(q, 1e-12)
    columns = [np.ones_like(slope), slope * family.metric_a[nearest] / a[:, None] ** 2]
    if family.hexagonal:
        columns.append(slope * family.metric_c[nearest] / c[:, None] ** 2)
    design = np.stack(columns, axis=-1)  # (B, P, k)
    residual = np.nan_to_num(peaks.position_deg - predicted)
    normal = np.einsum("bpi,bp,bpj->bij", design, weight, design) + 1e-6 * np.eye(design.shape[-1])
    rhs = np.einsum("bpi,bp,bp->bi", design, weight, residual)
    step = np.linalg.solve(normal, rhs[..., None])[..., 0]
    enough = (weight > 0).sum(axis=1) >= design.shape[-1] + 1
    step = np.where(enough[:, None], step, 0.0)
    zero = np.clip(step[:, 0], -MAX_ZERO_SHIFT_DEG, MAX_ZERO_SHIFT_DEG)
    a_new = a * np.exp(np.clip(step[:, 1], -0.02, 0.02))
    c_new = c * np.exp(np.clip(step[:, 2], -0.02, 0.02)) if family.hexagonal else a_new
    return a_new, c_new, zero


def _lorentz_polarisation(two_theta: np.ndarray) -> np.ndarray:
    t = np.radians(two_theta)
    return (1.0 + np.cos(t) ** 2) / (np.sin(t / 2.0) ** 2 * np.cos(t / 2.0))


def _texture_rows(family: Family, c_over_a: np.ndarray) -> np.ndarray:
    """(B, T, R) March-Dollase table rows at the nearest tabulated c/a."""
    index = np.abs(family.texture_c_over_a[None, :] - c_over_a[:, None]).argmin(axis=1)
    return family.texture[index]


def fit_family(
    family: Family, peaks: Peaks, heights: np.ndarray | None = None, hidden: np.ndarray | None = None
) -> FamilyFit:
    """Fit one family to every pattern (see the module docstring, steps 2-5).

    Parameters
    ----------
    family : Family
        The structure family.
    peaks : Peaks
        Peaks of the batch.
    heights : numpy.ndarray, optional
        (B, P) heights to explain (default the peaks' own; mixtures pass what earlier phases left).
    hidden : numpy.ndarray, optional
        (B, P) bool, peaks already explained by earlier phases: reflections on them are neither matched nor missing.
    """
    heights = peaks.height.astype(np.float64) if heights is None else heights.astype(np.float64)
    total = np.maximum(heights.sum(axis=1), 1e-12)
    scan = Peaks(peaks.position_deg, heights, peaks.measured_range_deg)
    # strongest remaining peaks first for the candidates
    order = np.argsort(-heights, axis=1, kind="stable")
    ranked = Peaks(np.take_along_axis(peaks.position_deg, order, axis=1), np.take_along_axis(heights, order, axis=1),
                   peaks.measured_range_deg)  # fmt: skip
    a, c = _candidates(family, ranked)
    low, high = family.a_range_angstrom
    q_low, q_high = family.c_over_a_range
    valid = (a >= low) & (a <= high)
    if family.hexagonal:
        valid &= (c / a >= q_low) & (c / a <= q_high)
    a, c = np.where(valid, a, np.nan), np.where(valid, c, np.nan)
    cumulative, origin = raster(scan, heights)
    score = np.nansum(window_sum(cumulative, origin, two_theta_deg(family, a, c), SCORE_TOLERANCE_DEG), axis=2)
    score = np.where(valid, score, -1.0)
    keep = np.argsort(-score, axis=1)[:, :KEEP_CANDIDATES]
    best: FamilyFit | None = None
    for k in range(KEEP_CANDIDATES):
        pick = keep[:, k : k + 1]
        ak, ck = np.take_along_axis(a, pick, axis=1)[:, 0], np.take_along_axis(c, pick, axis=1)[:, 0]
        ok = np.isfinite(ak) & np.isfinite(ck)
        ak, ck = np.where(ok, ak, 3.0), np.where(ok, ck, 3.0 * (1.63 if family.hexagonal else 1.0))
        fit = _fit_at(family, scan, heights, total, hidden, ak, ck, ok)
        best = fit if best is None else _better(best, fit)
    assert best is not None
    return best


def _better(one: FamilyFit, other: FamilyFit) -> FamilyFit:
    """Per pattern, the fit with the lower residual."""
    take = other.residual < one.residual
    fields = {}
    for name in one.__dataclass_fields__:
        x, y = getattr(one, name), getattr(other, name)
        mask = take if x.ndim == 1 else take[:, None]
        fields[name] = np.where(mask, y, x)
    return FamilyFit(**fields)


def _fit_at(
    family: Family,
    peaks: Peaks,
    heights: np.ndarray,
    total: np.ndarray,
    hidden: np.ndarray | None,
    a: np.ndarray,
    c: np.ndarray,
    ok: np.ndarray,
) -> FamilyFit:
    n, n_peaks = heights.shape
    a, c, zero = _refine(family, peaks, heights, a, c)
    reflections = two_theta_deg(family, a, c) + zero[:, None]  # (B, R)
    tolerance = _tolerance_deg(peaks.position_deg)
    nearest, matched = _match(peaks.position_deg, reflections, tolerance)
    matched &= heights > 0
    unexplained = np.where(ok, (heights * ~matched).sum(axis=1) / total, 1.0)
    # merge reflections closer than the tolerance: cluster id per reflection (sorted by angle)
    lo, hi = peaks.measured_range_deg[:, :1] + 0.2, peaks.measured_range_deg[:, 1:] - 0.2
    r_order = np.argsort(np.nan_to_num(reflections, nan=1e4), axis=1)
    sorted_deg = np.take_along_axis(np.nan_to_num(reflections, nan=1e4), r_order, axis=1)
    gap = np.diff(sorted_deg, axis=1) > _tolerance_deg(sorted_deg[:, 1:])
    cluster_sorted = np.concatenate([np.zeros((n, 1), dtype=np.int64), np.cumsum(gap, axis=1)], axis=1)
    cluster = np.empty_like(cluster_sorted)
    np.put_along_axis(cluster, r_order, cluster_sorted, axis=1)
    n_r = reflections.shape[1]
    rows = np.arange(n)[:, None]
    in_range = (reflections >= lo) & (reflections <= hi) & np.isfinite(reflections)
    # observed height per cluster: max of the peaks matched to any of its reflections
    observed = np.zeros((n, n_r))
    peak_cluster = np.take_along_axis(cluster, nearest, axis=1)
    np.maximum.at(observed, (np.repeat(np.arange(n), n_peaks), peak_cluster.ravel()),
                  np.where(matched, heights, 0.0).ravel())  # fmt: skip
    excluded = np.zeros((n, n_r), dtype=bool)
    if hidden is not None:
        # clusters lying on a peak an earlier phase explains: unknown intensity, left out of the misfit
        near_hidden = np.zeros((n, n_r), dtype=bool)
        h_nearest, h_matched = _match(peaks.position_deg, reflections, tolerance)
        h_on = h_matched & hidden
        np.logical_or.at(near_hidden, (np.repeat(np.arange(n), n_peaks), np.take_along_axis(cluster, h_nearest, axis=1).ravel()),
                         h_on.ravel())  # fmt: skip
        excluded = near_hidden & (observed == 0)
    # expected height per reflection for every prototype × texture option, summed per cluster
    theta_deg = np.nan_to_num(reflections, nan=45.0)
    lp_width = _lorentz_polarisation(theta_deg) * np.cos(np.radians(theta_deg) / 2.0)
    weight_r = np.where(in_range, lp_width, 0.0)
    full_r = np.where(np.isfinite(reflections) & (reflections >= TWO_THETA_MIN_DEG) & (reflections <= TWO_THETA_MAX_DEG),
                      lp_width, 0.0)  # fmt: skip
    texture = _texture_rows(family, c / a)  # (B, T, R)
    protos = family.structure_intensity  # (K, R)
    expected = protos[None, :, None, :] * texture[:, None, :, :] * weight_r[:, None, None, :]  # (B, K, T, R)
    one_hot = (cluster[:, :, None] == np.arange(n_r)[None, None, :]).astype(np.float64)  # (B, R, C)
    b_, k_, t_, _ = expected.shape
    expected_c = np.matmul(expected.reshape(b_, k_ * t_, n_r), one_hot).reshape(b_, k_, t_, n_r)
    in_c = np.einsum("br,brc->bc", in_range.astype(np.float64), one_hot) > 0
    use = in_c & ~excluded
    obs = np.where(use, observed, 0.0)[:, None, None, :]
    exp_c = np.where(use[:, None, None, :], expected_c, 0.0)
    scale = (obs * exp_c).sum(axis=-1) / np.maximum((exp_c**2).sum(axis=-1), 1e-12)  # (B, K, T)
    misfit_all = np.abs(obs - scale[..., None] * exp_c).sum(axis=-1) / np.maximum(
        (obs + scale[..., None] * exp_c).sum(axis=-1), 1e-12
    )
    flat = misfit_all.reshape(n, -1).argmin(axis=1)
    k_best, t_best = np.unravel_index(flat, misfit_all.shape[1:])
    misfit = np.where(ok, misfit_all.reshape(n, -1)[np.arange(n), flat], 1.0)
    s = scale.reshape(n, -1)[np.arange(n), flat]
    full_expected = protos[k_best] * texture[np.arange(n), t_best] * full_r  # (B, R)
    full_c = np.einsum("br,brc->bc", full_expected, one_hot)
    strongest = np.where(ok, s * full_c.max(axis=1), 0.0)
    fitted_cluster = s[:, None] * np.einsum("br,brc->bc", np.where(in_range, full_expected, 0.0), one_hot)
    fitted_height = np.where(matched, fitted_cluster[rows, peak_cluster], 0.0)
    matched_reflections = ((observed > 0) & in_c).sum(axis=1)
    r_values = np.tile(np.asarray(TEXTURE_R), texture.shape[1] // len(TEXTURE_R))
    return FamilyFit(
        a_angstrom=np.where(ok, a, np.nan),
        c_angstrom=np.where(ok, c, np.nan),
        zero_shift_deg=np.where(ok, zero, 0.0),
        unexplained_fraction=unexplained,
        intensity_misfit=misfit,
        residual=unexplained + misfit / 2.0,
        matched_reflections=np.where(ok, matched_reflections, 0),
        texture_r=r_values[t_best],
        strongest_height=strongest,
        explained=matched & ok[:, None],
        fitted_height=np.where(ok[:, None], fitted_height, 0.0),
    )


# -- all families, mixtures ----------------------------------------------------------------------------------------


@dataclass
class Component:
    """One phase of a decomposition (per pattern)."""

    family: int
    fraction: float
    share: float
    misfit: float
    matched: int
    a_angstrom: float
    c_angstrom: float | None


@dataclass
class PhysicsReport:
    """What the fit says about each pattern of a batch.

    Attributes
    ----------
    single : list of FamilyFit
        Each family fitted alone to the whole pattern.
    best_family : numpy.ndarray
        int (B,) index of the family with the lowest residual alone.
    best_residual : numpy.ndarray
        (B,) that residual.
    best_unexplained, best_misfit : numpy.ndarray
        (B,) its two parts.
    n_peaks : numpy.ndarray
        int (B,) peaks found.
    components : list of list of Component
        Per pattern, the phases of the decomposition (major first; at most 3).
    unexplained_fraction : numpy.ndarray
        (B,) share of the peak height the decomposition leaves unexplained.
    peaks : Peaks
        The peaks found.
    explained : numpy.ndarray
        (B, P) bool: peaks some phase of the decomposition explains.
    """

    single: list[FamilyFit]
    best_family: np.ndarray
    best_residual: np.ndarray
    best_unexplained: np.ndarray
    best_misfit: np.ndarray
    n_peaks: np.ndarray
    components: list[list[Component]]
    unexplained_fraction: np.ndarray
    peaks: Peaks
    explained: np.ndarray

    def unexplained_peaks_deg(self, i: int, most: int = 3) -> list[float]:
        """2θ (degrees) of the strongest peaks of pattern ``i`` that no phase explains."""
        lost = (self.peaks.height[i] > 0) & ~self.explained[i]
        return [round(float(x), 2) for x in self.peaks.position_deg[i][lost][:most]]


def analyse(
    families: tuple[Family, ...],
    patterns: np.ndarray,
    measured_range_deg: np.ndarray | None = None,
    first_guess: np.ndarray | None = None,
) -> PhysicsReport:
    """Fit the families, then decompose into up to :data:`MAX_PHASES` known phases.

    Parameters
    ----------
    families : tuple of Family
        The known families.
    patterns : numpy.ndarray
        (B, 2048) on the model grid, [0, 1].
    measured_range_deg : numpy.ndarray, optional
        (B, 2) range each pattern covers (default all of 20-90°).
    first_guess : numpy.ndarray, optional
        int (B,) family to fit first (e.g. the classifier's answer). The others are fitted only to patterns that
        family leaves with a residual above :data:`REFIT_ABOVE` (default: every family to every pattern).
    """
    peaks = find_peaks(patterns, measured_range_deg)
    n = len(patterns)
    single = [_empty_fit(n, peaks.height.shape[1]) for _ in families]
    fitted = np.zeros((n, len(families)), dtype=bool)
    guess = np.zeros(n, dtype=np.int64) if first_guess is None else np.asarray(first_guess, dtype=np.int64)
    for f, family in enumerate(families):
        rows = np.arange(n) if first_guess is None else np.nonzero(guess == f)[0]
        _fit_rows(family, peaks, rows, single[f], fitted[:, f])
    if first_guess is not None:
        residual = np.stack([fit.residual for fit in single], axis=1)
        again = residual[np.arange(n), guess] > REFIT_ABOVE
        for f, family in enumerate(families):
            _fit_rows(family, peaks, np.nonzero(again & ~fitted[:, f])[0], single[f], fitted[:, f])
    residual = np.stack([fit.residual for fit in single], axis=1)
    best = residual.argmin(axis=1)
    rows = np.arange(n)
    unexplained = np.stack([fit.unexplained_fraction for fit in single], axis=1)[rows, best]
    misfit = np.stack([fit.intensity_misfit for fit in single], axis=1)[rows, best]
    components: list[list[Component]] = [[] for _ in range(n)]
    left = unexplained.copy()
    several = np.nonzero(unexplained > MIN_COMPONENT_SHARE)[0]
    alone = np.nonzero(unexplained <= MIN_COMPONENT_SHARE)[0]
    first = _select(single, best)
    explained = first.explained.copy()
    for i in alone:
        if first.matched_reflections[i] >= 1:
            components[i] = [_component(families, int(best[i]), 1.0, 1.0 - float(unexplained[i]), first, i)]
    if len(several):
        sub = _peaks_rows(peaks, several)
        sub_single = [_fit_rows_view(fit, several) for fit in single]
        # the first phase: each family in turn (best single fit first), the best decomposition kept
        order = np.argsort(residual[several], axis=1)
        tries = [decompose(families, sub, sub_single, order[:, rank]) for rank in range(len(families))]
        cost = np.stack([_cost(parts, sub_left) for parts, sub_left, _ in tries], axis=1)
        pick = cost.argmin(axis=1)
        for j, i in enumerate(several):
            parts, sub_left, sub_explained = tries[pick[j]]
            components[i], left[i], explained[i] = parts[j], sub_left[j], sub_explained[j]
    return PhysicsReport(
        single=single,
        best_family=best,
        best_residual=residual[rows, best],
        best_unexplained=unexplained,
        best_misfit=misfit,
        n_peaks=(peaks.height > 0).sum(axis=1),
        components=components,
        unexplained_fraction=left,
        peaks=peaks,
        explained=explained,
    )


def single_component(report: PhysicsReport, families: tuple[Family, ...], f: int, i: int) -> Component:
    """Family ``f`` fitted alone to pattern ``i`` of a report, as the one component of a single-phase answer."""
    fit = report.single[f]
    share = 1.0 - float(fit.unexplained_fraction[i]) if np.isfinite(fit.a_angstrom[i]) else 0.0
    return _component(families, f, 1.0, share, fit, i)


def _cost(parts: list[list[Component]], left: np.ndarray) -> np.ndarray:
    """How badly each decomposition explains its pattern: the share left unexplained plus every phase's intensity
    misfit weighted by the share it explains."""
    return left + np.array([sum(p.share * p.misfit for p in c) for c in parts])


def _empty_fit(n: int, n_peaks: int) -> FamilyFit:
    """A fit of nothing (residual 2: worse than any real fit) for ``n`` patterns."""
    nan = np.full(n, np.nan)
    return FamilyFit(
        a_angstrom=nan.copy(), c_angstrom=nan.copy(), zero_shift_deg=np.zeros(n), unexplained_fraction=np.ones(n),
        intensity_misfit=np.ones(n), residual=np.full(n, 2.0), matched_reflections=np.zeros(n, dtype=np.int64),
        texture_r=np.ones(n), strongest_height=np.zeros(n), explained=np.zeros((n, n_peaks), dtype=bool),
        fitted_height=np.zeros((n, n_peaks)),
    )  # fmt: skip


def _peaks_rows(peaks: Peaks, rows: np.ndarray) -> Peaks:
    return Peaks(peaks.position_deg[rows], peaks.height[rows], peaks.measured_range_deg[rows])


def _fit_rows_view(fit: FamilyFit, rows: np.ndarray) -> FamilyFit:
    return FamilyFit(**{name: getattr(fit, name)[rows] for name in fit.__dataclass_fields__})


def _fit_rows(
    family: Family,
    peaks: Peaks,
    rows: np.ndarray,
    into: FamilyFit,
    fitted: np.ndarray,
    heights: np.ndarray | None = None,
    hidden: np.ndarray | None = None,
) -> None:
    """Fit ``family`` to the patterns ``rows`` and write the results into ``into`` (and mark them fitted)."""
    if not len(rows):
        return
    part = fit_family(family, _peaks_rows(peaks, rows), None if heights is None else heights[rows],
                      None if hidden is None else hidden[rows])  # fmt: skip
    for name in into.__dataclass_fields__:
        getattr(into, name)[rows] = getattr(part, name)
    fitted[rows] = True


def _component(
    families: tuple[Family, ...], f: int, fraction: float, share: float, fit: FamilyFit, i: int
) -> Component:
    return Component(
        family=f, fraction=fraction, share=share, misfit=float(fit.intensity_misfit[i]),
        matched=int(fit.matched_reflections[i]), a_angstrom=float(fit.a_angstrom[i]),
        c_angstrom=float(fit.c_angstrom[i]) if families[f].hexagonal else None,
    )  # fmt: skip


def decompose(
    families: tuple[Family, ...], peaks: Peaks, single: list[FamilyFit], best: np.ndarray
) -> tuple[list[list[Component]], np.ndarray, np.ndarray]:
    """Greedy decomposition: the best single family, then the others on what it leaves (module docstring, step 6)."""
    n = len(best)
    rows = np.arange(n)
    total = np.maximum(peaks.height.sum(axis=1), 1e-12).astype(np.float64)
    heights = peaks.height.astype(np.float64)
    used = np.zeros((n, len(families)), dtype=bool)
    hidden = np.zeros(heights.shape, dtype=bool)
    chosen: list[tuple[np.ndarray, np.ndarray, FamilyFit | None]] = []  # (family idx, active mask, fit)
    # first phase: the best single family (its fit is already there)
    fits = single
    first = _select(fits, best)
    active = (first.matched_reflections >= 1) & (peaks.height.sum(axis=1) > 0)
    chosen.append((best.copy(), active, first))
    used[rows, best] = True
    remaining = _take_away(heights, first, active)
    hidden |= first.explained & active[:, None]
    for _ in range(MAX_PHASES - 1):
        fits = [_empty_fit(n, heights.shape[1]) for _ in families]
        for f, family in enumerate(families):  # only where the family is not in the mix yet
            wanted = np.nonzero(~used[:, f] & chosen[-1][1])[0]
            _fit_rows(family, peaks, wanted, fits[f], np.zeros(n, dtype=bool), remaining, hidden)
        share = np.stack([(np.where(fit.explained, remaining, 0.0)).sum(axis=1) / total for fit in fits], axis=1)
        misfit = np.stack([fit.intensity_misfit for fit in fits], axis=1)
        matched = np.stack([fit.matched_reflections for fit in fits], axis=1)
        eligible = (~used) & (share >= MIN_COMPONENT_SHARE) & (matched >= MIN_COMPONENT_REFLECTIONS)
        eligible &= misfit <= MAX_COMPONENT_MISFIT
        score = np.where(eligible, share - 0.5 * misfit * share, -np.inf)
        pick = score.argmax(axis=1)
        active = np.isfinite(score[rows, pick]) & chosen[-1][1]
        fit = _select(fits, pick)
        chosen.append((pick, active, fit))
        used[rows[active], pick[active]] = True
        remaining = np.where(active[:, None], _take_away(remaining, fit, active), remaining)
        hidden |= fit.explained & active[:, None]
    explained_any = hidden
    left = np.where(peaks.height.sum(axis=1) > 0, (heights * ~explained_any).sum(axis=1) / total, 1.0)
    components: list[list[Component]] = [[] for _ in range(n)]
    for pick, active, fit in chosen:
        assert fit is not None
        share = (np.where(fit.explained, heights, 0.0)).sum(axis=1) / total
        for i in np.nonzero(active)[0]:
            components[i].append(
                _component(families, int(pick[i]), float(fit.strongest_height[i]), float(share[i]), fit, i)
            )
    for parts in components:
        scale = sum(p.fraction for p in parts)
        for p in parts:
            p.fraction = p.fraction / scale if scale > 0 else 1.0 / len(parts)
        parts.sort(key=lambda p: -p.fraction)
    return components, left, explained_any


def _select(fits: list[FamilyFit], pick: np.ndarray) -> FamilyFit:
    """Per pattern, the fit of family ``pick[i]``."""
    fields = {}
    for name in fits[0].__dataclass_fields__:
        stacked = np.stack([getattr(f, name) for f in fits], axis=1)
        fields[name] = stacked[np.arange(len(pick)), pick]
    return FamilyFit(**fields)


def _take_away(heights: np.ndarray, fit: FamilyFit, active: np.ndarray) -> np.ndarray:
    """Heights left after a phase: its fitted height is subtracted from the peaks it explains."""
    left = np.where(fit.explained, np.clip(heights - fit.fitted_height, 0.0, None), heights)
    # a peak the phase explains down to less than a third of its height is taken as fully explained
    left = np.where(fit.explained & (left < heights / 3.0), 0.0, left)
    return np.where(active[:, None], left, heights)
