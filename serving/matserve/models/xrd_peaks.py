"""Peak finding for the XRD physics fit (issue 21), vectorised over a batch of model-grid patterns.

Background: a morphological opening (running minimum then maximum, 5° window, so sloped and fluorescence
backgrounds are followed) smoothed by a running mean. Peaks: local maxima of the smoothed net signal (the highest
within ±0.14°), above 2.5 % of the strongest and 7.5 counting-noise σ (σ² ∝ level, the gain from squared first
differences inside the measured range), one per hill (neighbouring maxima without a 3 σ valley between them are
one peak), inside the measured range. Units: 2θ in degrees (Cu Kα scale), heights in the pattern's [0, 1] units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d, uniform_filter1d

from matserve.codecs.xrd import MODEL_GRID_DEG, TWO_THETA_MAX_DEG, TWO_THETA_MIN_DEG

STEP_DEG = float(MODEL_GRID_DEG[1] - MODEL_GRID_DEG[0])
BACKGROUND_WINDOW_DEG = 5.0
SMOOTH_POINTS = 5
PEAK_HALF_WINDOW_POINTS = 4
MIN_RELATIVE_HEIGHT = 0.025
MIN_NOISE_SIGMAS = 5.0
MAX_PEAKS = 32
RASTER_STEP_DEG = 0.05
DECIMATE = 4


@dataclass
class Peaks:
    """Peaks of a batch, strongest first, padded.

    Attributes
    ----------
    position_deg : numpy.ndarray
        (B, P) 2θ, degrees; padding is -1000.
    height : numpy.ndarray
        (B, P) net heights; padding is 0.
    measured_range_deg : numpy.ndarray
        (B, 2) the range each pattern covers.
    """

    position_deg: np.ndarray
    height: np.ndarray
    measured_range_deg: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """(B,) Σ heights."""
        return self.height.sum(axis=1)


def find_peaks(patterns: np.ndarray, measured_range_deg: np.ndarray | None = None) -> Peaks:
    """Peaks of patterns (B, 2048) on the model grid (see the module docstring, step 1)."""
    x = np.asarray(patterns, dtype=np.float32)
    n = len(x)
    if measured_range_deg is None:
        measured_range_deg = np.tile(np.array([TWO_THETA_MIN_DEG, TWO_THETA_MAX_DEG], dtype=np.float32), (n, 1))
    grid = MODEL_GRID_DEG.astype(np.float32)
    first = np.clip(np.searchsorted(grid, measured_range_deg[:, 0]), 0, len(grid) - 1)
    last = np.clip(np.searchsorted(grid, measured_range_deg[:, 1], side="right") - 1, first, len(grid) - 1)
    index = np.arange(len(grid))[None, :]
    inside = (index >= first[:, None]) & (index <= last[:, None])
    # outside the measured range: the edge values (the codec's floor fill would make a step, read as a peak)
    x = np.take_along_axis(x, np.clip(index, first[:, None], last[:, None]), axis=1)
    window = round(BACKGROUND_WINDOW_DEG / STEP_DEG) | 1
    smooth_x = uniform_filter1d(x, SMOOTH_POINTS, axis=1, mode="nearest")
    # morphological opening (running minimum, then running maximum) follows sloped backgrounds; then smoothed
    # on blocks of 4 points (0.14°) for speed, then back to the grid and smoothed
    blocks = smooth_x.reshape(n, -1, DECIMATE).min(axis=2)
    size = window // DECIMATE | 1
    opened = maximum_filter1d(minimum_filter1d(blocks, size, axis=1, mode="nearest"), size, axis=1, mode="nearest")
    background = uniform_filter1d(np.repeat(opened, DECIMATE, axis=1), window, axis=1, mode="nearest")
    smooth = np.clip(smooth_x - background, 0.0, None)
    # counting noise grows with the level (Poisson: variance ∝ intensity): σ² = gain × level, the gain from the
    # median of squared first differences (χ²₁ median 0.455) inside the measured range, on every other point for
    # speed. The running minimum sits about 2.5 σ below the smoothed noise, hence the threshold counts from there.
    level = np.maximum(smooth_x, 1e-3)
    diff2 = np.diff(x[:, ::2], axis=1) ** 2 / 2.0 / level[:, ::2][:, 1:]
    gain = _median_where(diff2, inside[:, ::2][:, 1:] & inside[:, ::2][:, :-1]) / 0.455
    sigma = np.sqrt(np.nan_to_num(gain, nan=0.0)[:, None] * level) / np.sqrt(SMOOTH_POINTS)
    threshold = np.maximum(MIN_RELATIVE_HEIGHT * smooth.max(axis=1)[:, None], (2.5 + MIN_NOISE_SIGMAS) * sigma)
    inside &= (index >= first[:, None] + 2) & (index <= last[:, None] - 2)
    local = maximum_filter1d(smooth, 2 * PEAK_HALF_WINDOW_POINTS + 1, axis=1, mode="nearest")
    is_peak = (smooth >= local) & (smooth > threshold) & inside
    is_peak[:, [0, -1]] = False
    rows, cols = np.nonzero(is_peak)
    rows, cols = _separated(smooth, sigma, rows, cols)
    heights = smooth[rows, cols]
    left, centre, right = smooth[rows, cols - 1], heights, smooth[rows, cols + 1]
    curvature = left - 2.0 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    positions = grid[cols] + np.clip(offset, -1.0, 1.0) * STEP_DEG
    # strongest first within each row, then keep MAX_PEAKS per row
    order = np.lexsort((-heights, rows))
    rows, heights, positions = rows[order], heights[order], positions[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < MAX_PEAKS
    position_out = np.full((n, MAX_PEAKS), -1000.0, dtype=np.float32)
    height_out = np.zeros((n, MAX_PEAKS), dtype=np.float32)
    position_out[rows[keep], rank[keep]] = positions[keep]
    height_out[rows[keep], rank[keep]] = heights[keep]
    return Peaks(position_out, height_out, np.asarray(measured_range_deg, dtype=np.float32))


def _median_where(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row medians of ``values`` over ``keep`` in one vectorised call: the left-out entries become -inf and +inf in
    equal numbers, which leaves the median where it was (to half a rank for an odd count)."""
    left_out = ~keep
    rank = np.cumsum(left_out, axis=1)
    low = left_out & (rank <= left_out.sum(axis=1, keepdims=True) // 2)
    return np.median(np.where(low, -np.inf, np.where(left_out, np.inf, values)), axis=1)


def _separated(smooth: np.ndarray, sigma: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple:
    """Keep one maximum per hill: neighbouring maxima (same row, ``cols`` sorted) whose valley is not 3 σ below the
    lower of the two are one peak (noise on a broad hump or on a wide peak), represented by the highest."""
    if len(rows) < 2:
        return rows, cols
    flat = smooth.ravel()
    start = rows * smooth.shape[1] + cols
    same_row = rows[1:] == rows[:-1]
    valley = np.minimum.reduceat(flat, start)[:-1]  # min from each peak up to (not incl.) the next one
    height = flat[start]
    lower = np.minimum(height[1:], height[:-1])
    joined = same_row & (valley >= lower - 3.0 * sigma.ravel()[start[1:]])
    group = np.concatenate([[0], np.cumsum(~joined)])
    order = np.lexsort((-height, group))
    first = np.concatenate([[True], group[order][1:] != group[order][:-1]])
    keep = np.sort(order[first])
    return rows[keep], cols[keep]


def raster(peaks: Peaks, heights: np.ndarray) -> tuple[np.ndarray, float]:
    """Cumulative peak height on a 0.05° raster (B, bins + 1) and the raster origin."""
    origin = TWO_THETA_MIN_DEG - 1.0
    bins = int((TWO_THETA_MAX_DEG - TWO_THETA_MIN_DEG + 2.0) / RASTER_STEP_DEG) + 1
    index = np.clip(((peaks.position_deg - origin) / RASTER_STEP_DEG).astype(np.int64), 0, bins - 1)
    raster = np.zeros((len(heights), bins), dtype=np.float64)
    np.add.at(raster, (np.repeat(np.arange(len(heights)), heights.shape[1]), index.ravel()), heights.ravel())
    cumulative = np.concatenate([np.zeros((len(heights), 1)), np.cumsum(raster, axis=1)], axis=1)
    return cumulative, origin


def window_sum(cumulative: np.ndarray, origin: float, position_deg: np.ndarray, tolerance_deg: float) -> np.ndarray:
    """Σ peak height within ±tolerance of each position (B, ...) (NaN positions give 0)."""
    bins = cumulative.shape[1] - 1
    finite = np.isfinite(position_deg)
    p = np.where(finite, position_deg, -1e3)
    lo = np.clip(np.floor((p - tolerance_deg - origin) / RASTER_STEP_DEG).astype(np.int64), 0, bins)
    hi = np.clip(np.floor((p + tolerance_deg - origin) / RASTER_STEP_DEG).astype(np.int64) + 1, 0, bins)
    shape = position_deg.shape
    rows = np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.where(finite, cumulative[rows, hi] - cumulative[rows, lo], 0.0)
