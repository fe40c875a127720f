"""Detector geometry and master-pattern projection: where each detector pixel looks, patterns warped between
projection centres, patterns simulated from a master pattern, and the prepared form every comparison uses.

Projection follows kikuchipy's ``EBSDMasterPattern.get_patterns`` exactly (same direction cosines, quaternion
rotation, Lambert mapping and bilinear interpolation; a test compares the two), written as small numba kernels.

Conventions: orix quaternions ``(a, b, c, d)`` rotating the sample frame into the crystal frame (as kikuchipy's
crystal maps); PCs in the Bruker convention; sample tilt 70 deg, detector tilt 0 deg unless given; angles in
radians unless a name ends in ``_deg``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np

from matserve.codecs.ebsd import normalize_patterns
from matserve.kernels import compiled

SQRT_PI = float(np.sqrt(np.pi))
SQRT_PI_HALF = float(np.sqrt(np.pi / 2.0))
#: Background removal before matching: the pattern minus its Gaussian blur of this sigma, pixels (60 px patterns).
#: Finer than the network's 6 px: it also removes a real camera's static background well enough that real Ni
#: patterns index without ``static_background`` (measured: 9 of 9 within 0.6 deg at 3 px, none at 6 px).
MATCHING_BACKGROUND_SIGMA_PX = 3.0


# -------------------------------------------------------------------------------------------- geometry


def sample_to_detector_matrix(sample_tilt_deg: float = 70.0, detector_tilt_deg: float = 0.0) -> np.ndarray:
    """kikuchipy's passive sample -> detector rotation matrix (``EBSDDetector.sample_to_detector``, azimuthal and
    twist 0): its rows are the detector axes in the sample frame, ``M @ v_sample = v_detector``.

    Written out here (rotations of the basis about its own axes, as kikuchipy composes them) so that indexing needs
    no kikuchipy import; a test compares it with kikuchipy's.
    """
    basis = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    angles = (-np.deg2rad(sample_tilt_deg), np.deg2rad(detector_tilt_deg), 0.0, 0.0)
    for axis_row, angle in zip((0, 0, 1, 2), angles, strict=True):
        axis = basis[axis_row] / np.linalg.norm(basis[axis_row])
        c, s = np.cos(angle), np.sin(angle)
        basis = basis * c + np.cross(axis, basis) * s + np.outer(basis @ axis, axis) * (1.0 - c)
    return basis


def direction_cosines(
    pc: np.ndarray, shape: tuple[int, int], sample_tilt_deg: float = 70.0, detector_tilt_deg: float = 0.0
) -> np.ndarray:
    """Unit vectors (sample frame) from the beam spot to each detector pixel centre, as kikuchipy computes them.

    Parameters
    ----------
    pc : numpy.ndarray
        ``(m, 3)`` projection centres, Bruker convention.
    shape : tuple of int
        Detector ``(rows, cols)``.
    sample_tilt_deg, detector_tilt_deg : float
        Sample and detector tilts, degrees.

    Returns
    -------
    numpy.ndarray
        ``(m, rows * cols, 3)`` float64, row-major pixel order.

    Notes
    -----
    kikuchipy's gnomonic bounds of a Bruker PC: ``x`` from ``-aspect * PCx / PCz`` to ``aspect * (1 - PCx) / PCz``,
    ``y`` from ``-(1 - PCy) / PCz`` to ``PCy / PCz`` (``aspect = cols / rows``); each pixel centre's gnomonic
    point ``(x, y, 1)`` times ``PCz``, rotated from the detector into the sample frame, normalised.
    """
    pc = np.atleast_2d(np.asarray(pc, dtype=np.float64))
    pcz = pc[:, 2]
    rows, cols = shape
    x_min, x_max, y_min, y_max = gnomonic_bounds(pc, shape).T
    gn_x = x_min[:, None] + (np.arange(cols) + 0.5) * ((x_max - x_min) / cols)[:, None]  # (m, cols)
    gn_y = y_max[:, None] - (np.arange(rows) + 0.5) * ((y_max - y_min) / rows)[:, None]  # (m, rows)
    vectors = np.empty((len(pc), rows, cols, 3))
    vectors[..., 0] = gn_x[:, None, :] * pcz[:, None, None]
    vectors[..., 1] = gn_y[:, :, None] * pcz[:, None, None]
    vectors[..., 2] = pcz[:, None, None]
    # detector -> sample is the transpose of the passive sample -> detector matrix: v_sample = M.T @ v_detector
    vectors = vectors.reshape(len(pc), rows * cols, 3) @ sample_to_detector_matrix(sample_tilt_deg, detector_tilt_deg)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors


def gnomonic_bounds(pc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """kikuchipy's gnomonic bounds ``(m, 4)`` ``[x_min, x_max, y_min, y_max]`` of Bruker PCs ``(m, 3)`` on a
    detector of ``shape`` (see :func:`direction_cosines`)."""
    pc = np.atleast_2d(np.asarray(pc, dtype=np.float64))
    pcx, pcy, pcz = pc[:, 0], pc[:, 1], pc[:, 2]
    aspect = shape[1] / shape[0]
    return np.column_stack([-aspect * pcx / pcz, aspect * (1.0 - pcx) / pcz, -(1.0 - pcy) / pcz, pcy / pcz])


@compiled(fastmath=True)
def _warp(patterns: np.ndarray, bounds: np.ndarray, gn_x: np.ndarray, gn_y: np.ndarray, out: np.ndarray) -> None:
    n, rows, cols = patterns.shape
    for i in range(n):
        x_step = (bounds[i, 1] - bounds[i, 0]) / cols
        y_step = (bounds[i, 3] - bounds[i, 2]) / rows
        for p in range(gn_x.shape[0]):
            col = min(max((gn_x[p] - bounds[i, 0]) / x_step - 0.5, 0.0), cols - 1.0)
            row = min(max((bounds[i, 3] - gn_y[p]) / y_step - 0.5, 0.0), rows - 1.0)
            c0 = min(int(col), cols - 2)
            r0 = min(int(row), rows - 2)
            fc = col - c0
            fr = row - r0
            top = patterns[i, r0, c0] * (1.0 - fc) + patterns[i, r0, c0 + 1] * fc
            bottom = patterns[i, r0 + 1, c0] * (1.0 - fc) + patterns[i, r0 + 1, c0 + 1] * fc
            out[i, p // cols, p % cols] = top * (1.0 - fr) + bottom * fr


def warp_to_pc(
    patterns: np.ndarray,
    pc: np.ndarray,
    target_pc: np.ndarray,
    sample_tilt_deg: float = 70.0,
    detector_tilt_deg: float = 0.0,
) -> np.ndarray:
    """Patterns taken at their own PCs, resampled to look as if taken at ``target_pc`` (same detector shape).

    A Kikuchi pattern's intensity is a function of the ray's direction from the beam spot; a PC is where the
    detector plane sits relative to that spot. Each target pixel's ray (:func:`direction_cosines` at
    ``target_pc``) meets the pattern's own detector at a gnomonic point that only depends on the pattern's PC;
    the pattern is sampled there, bilinearly. This is exact geometry (a homography between two detector planes seen
    from one point), so a dictionary simulated at one PC matches patterns from any PC without a correction of the
    orientation. Target pixels whose rays miss the pattern's screen take its nearest edge pixel.

    Parameters
    ----------
    patterns : numpy.ndarray
        ``(n, rows, cols)`` detector intensities.
    pc : numpy.ndarray
        ``(n, 3)`` (or ``(3,)``) each pattern's PC, Bruker convention.
    target_pc : numpy.ndarray
        ``(3,)`` the PC to resample to.
    sample_tilt_deg, detector_tilt_deg : float
        Tilts of both geometries, degrees.

    Returns
    -------
    numpy.ndarray
        ``(n, rows, cols)`` float32.
    """
    patterns = np.ascontiguousarray(patterns, dtype=np.float32)
    n, rows, cols = patterns.shape
    pc = np.broadcast_to(np.asarray(pc, dtype=np.float64).reshape(-1, 3), (n, 3))
    rays = direction_cosines(np.asarray(target_pc, dtype=np.float64).reshape(1, 3), (rows, cols),
                             sample_tilt_deg, detector_tilt_deg)[0]  # fmt: skip
    on_detector = rays @ sample_to_detector_matrix(sample_tilt_deg, detector_tilt_deg).T
    gn_x = np.ascontiguousarray(on_detector[:, 0] / on_detector[:, 2])
    gn_y = np.ascontiguousarray(on_detector[:, 1] / on_detector[:, 2])
    out = np.empty_like(patterns)
    _warp(patterns, np.ascontiguousarray(gnomonic_bounds(pc, (rows, cols))), gn_x, gn_y, out)
    return out


# -------------------------------------------------------------------------------------------- projection


@compiled(fastmath=True)
def project_kernel(q: np.ndarray, dc: np.ndarray, upper: np.ndarray, lower: np.ndarray, out: np.ndarray) -> None:
    """Project the master pattern for orientation ``q`` through direction cosines ``dc`` into ``out`` (numba kernel,
    also called by the refinement's kernels)."""
    a, b, c, d = q[0], q[1], q[2], q[3]
    aa, bb, cc, dd = a * a, b * b, c * c, d * d
    ab, ac, ad, bc, bd, cd = a * b, a * c, a * d, b * c, b * d, c * d
    npx = upper.shape[1]
    scale = (npx - 1) / 2.0
    for i in range(dc.shape[0]):
        x, y, z = dc[i, 0], dc[i, 1], dc[i, 2]
        vx = (aa + bb - cc - dd) * x + 2.0 * ((ac + bd) * z + (bc - ad) * y)
        vy = (aa - bb + cc - dd) * y + 2.0 * ((ad + bc) * x + (cd - ab) * z)
        vz = (aa - bb - cc + dd) * z + 2.0 * ((ab + cd) * y + (bd - ac) * x)
        norm = np.sqrt(vx * vx + vy * vy + vz * vz)
        vx, vy, vz = vx / norm, vy / norm, vz / norm
        abs_z = abs(vz)
        lx = 0.0
        ly = 0.0
        if abs_z < 1.0:
            sqrt_z = np.sqrt(2.0 * (1.0 - abs_z))
            if abs(vy) <= abs(vx):
                sign = 1.0 if vx > 0 else -1.0
                lx = sign * sqrt_z * (SQRT_PI / 2.0)
                ly = sign * sqrt_z * (2.0 / SQRT_PI) * np.arctan(vy / vx)
            else:
                sign = 1.0 if vy > 0 else -1.0
                lx = sign * sqrt_z * (2.0 / SQRT_PI) * np.arctan(vx / vy)
                ly = sign * sqrt_z * (SQRT_PI / 2.0)
        row = scale * ly / SQRT_PI_HALF
        col = scale * lx / SQRT_PI_HALF
        r0 = np.int32(row + scale)
        c0 = np.int32(col + scale)
        r1 = r0 + 1
        c1 = c0 + 1
        if r1 >= npx:
            r1 = r0
        if c1 >= npx:
            c1 = c0
        if r0 < 0:
            r0 = r1
        if c0 < 0:
            c0 = c1
        dr = row - r0 + scale
        dcol = col - c0 + scale
        mp = upper if vz >= 0 else lower
        out[i] = (
            mp[r0, c0] * (1.0 - dr) * (1.0 - dcol)
            + mp[r1, c0] * dr * (1.0 - dcol)
            + mp[r0, c1] * (1.0 - dr) * dcol
            + mp[r1, c1] * dr * dcol
        )


@compiled(fastmath=True, parallel=True)
def _project_many(quaternions: np.ndarray, dc: np.ndarray, upper: np.ndarray, lower: np.ndarray,
                  out: np.ndarray) -> None:  # fmt: skip
    for i in numba.prange(quaternions.shape[0]):
        project_kernel(quaternions[i], dc, upper, lower, out[i])


#: numba's default threading layer (workqueue) aborts when two threads launch parallel kernels at once: every
#: launch here holds this lock.
PARALLEL_LOCK = threading.Lock()


@dataclass(frozen=True)
class MasterPattern:
    """A master pattern's two Lambert hemispheres as float64 arrays (``(npx, npx)`` each)."""

    upper: np.ndarray
    lower: np.ndarray

    @classmethod
    def from_kikuchipy(cls, master_pattern: object) -> MasterPattern:
        """From a one-energy kikuchipy ``EBSDMasterPattern`` in the Lambert projection with both hemispheres
        (``data`` of shape ``(2, npx, npx)``: upper, lower), such as the Ni one bundled with kikuchipy."""
        data = np.asarray(master_pattern.data)  # type: ignore[attr-defined]
        if data.ndim != 3 or data.shape[0] != 2:
            raise ValueError(f"need one energy and both hemispheres, shape (2, npx, npx); got {data.shape}")
        return cls(np.ascontiguousarray(data[0], dtype=np.float64), np.ascontiguousarray(data[1], dtype=np.float64))

    def project(self, quaternions: np.ndarray, pc: np.ndarray, shape: tuple[int, int] = (60, 60)) -> np.ndarray:
        """Patterns ``(n, rows, cols)`` float32 at one PC for ``(n, 4)`` orientations (not rescaled)."""
        directions = direction_cosines(np.asarray(pc, dtype=np.float64).reshape(1, 3), shape)[0]
        return self.project_along(quaternions, directions).reshape(len(quaternions), *shape)

    def project_along(self, quaternions: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Patterns ``(n, pixels)`` float32 for ``(n, 4)`` orientations, given the detector's ``(pixels, 3)``
        direction cosines (:func:`direction_cosines`)."""
        quaternions = np.ascontiguousarray(quaternions, dtype=np.float64)
        out = np.empty((len(quaternions), directions.shape[0]))
        with PARALLEL_LOCK:
            _project_many(quaternions, np.ascontiguousarray(directions), self.upper, self.lower, out)
        return out.astype(np.float32)


def prepare_for_matching(patterns: np.ndarray, background_sigma_px: float | None = None) -> np.ndarray:
    """Patterns ``(n, h, w)`` -> ``(n, h*w)`` float64, background-removed (the codec's normalisation with a
    :data:`MATCHING_BACKGROUND_SIGMA_PX` background unless given), zero mean, unit norm: the form every NCC here
    uses."""
    sigma = MATCHING_BACKGROUND_SIGMA_PX if background_sigma_px is None else background_sigma_px
    flat = normalize_patterns(patterns, background_sigma_px=sigma).reshape(len(patterns), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    flat /= np.where(norms > 0, norms, 1.0)
    return flat
