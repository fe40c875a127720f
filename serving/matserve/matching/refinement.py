"""Orientation refinement against a master pattern: Levenberg-Marquardt on the normalised cross-correlation (NCC).

:func:`refine` polishes many orientations per second: a search over a small rotation (3 parameters,
finite-difference Jacobian of the standardised simulated pattern) that maximises the NCC between a pattern and the
simulation at the pattern's own PC (numba kernels; projection from :mod:`matserve.matching.projection`).

Conventions: orix quaternions ``(a, b, c, d)``, sample -> crystal; PCs in the Bruker convention; angles in radians
unless a name ends in ``_deg``.
"""

from __future__ import annotations

import numba
import numpy as np

from matserve.kernels import compiled
from matserve.matching.projection import PARALLEL_LOCK, MasterPattern, direction_cosines, project_kernel

#: Finite-difference step of the refinement's Jacobian, radians (0.15 deg: below a master-pattern pixel).
JACOBIAN_STEP_RAD = float(np.deg2rad(0.15))
#: Refinement stops when a step is smaller than this, radians.
CONVERGED_STEP_RAD = float(np.deg2rad(0.002))
#: With several starts per pattern, each runs this many iterations; only the best-scoring one continues.
SCREEN_ITERATIONS = 3
#: Screening runs on patterns binned this much (4x fewer pixels; the bins average noise out).
SCREEN_BINNING = 2


# -------------------------------------------------------------------------------------------- numba kernels


@compiled(fastmath=True)
def _standardise(values: np.ndarray) -> None:
    """Zero mean, unit norm, in place (a constant vector becomes zeros)."""
    values -= values.mean()
    norm = np.sqrt(np.sum(values * values))
    if norm > 0:
        values /= norm


@compiled(fastmath=True)
def _perturbed(q: np.ndarray, delta: np.ndarray, out: np.ndarray) -> None:
    """``out = exp(delta) * q``: ``q`` followed by a rotation of ``|delta|`` radians about ``delta``."""
    angle = np.sqrt(delta[0] ** 2 + delta[1] ** 2 + delta[2] ** 2)
    if angle < 1e-15:
        out[:] = q
        return
    s = np.sin(angle / 2.0) / angle
    pa, pb, pc, pd = np.cos(angle / 2.0), s * delta[0], s * delta[1], s * delta[2]
    a, b, c, d = q[0], q[1], q[2], q[3]
    out[0] = pa * a - pb * b - pc * c - pd * d
    out[1] = pa * b + pb * a + pc * d - pd * c
    out[2] = pa * c - pb * d + pc * a + pd * b
    out[3] = pa * d + pb * c - pc * b + pd * a
    norm = np.sqrt(out[0] ** 2 + out[1] ** 2 + out[2] ** 2 + out[3] ** 2)
    out /= norm


@compiled(fastmath=True)
def _refine_one(
    pattern: np.ndarray,
    dc: np.ndarray,
    q_start: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    max_iterations: int,
    q_out: np.ndarray,
) -> float:
    """Levenberg-Marquardt refinement of one orientation; returns the final NCC and writes ``q_out``."""
    n = pattern.shape[0]
    simulated = np.empty(n)
    shifted = np.empty(n)
    jacobian = np.empty((3, n))
    q = q_start.copy()
    trial = np.empty(4)
    delta = np.zeros(3)
    project_kernel(q, dc, upper, lower, simulated)
    _standardise(simulated)
    score = np.sum(pattern * simulated)
    damping = 1e-3
    for _ in range(max_iterations):
        for k in range(3):
            delta[:] = 0.0
            delta[k] = JACOBIAN_STEP_RAD
            _perturbed(q, delta, trial)
            project_kernel(trial, dc, upper, lower, shifted)
            _standardise(shifted)
            jacobian[k] = (shifted - simulated) / JACOBIAN_STEP_RAD
        # Variable projection: the pattern is modelled as ``score * simulated`` plus noise, so the Gauss-Newton
        # step for the orientation is the plain one divided by the current correlation (without it, steps on
        # noisy patterns, NCC ~0.2, are five times too short).
        residual = pattern - score * simulated
        jtj = jacobian @ jacobian.T
        jtr = (jacobian @ residual) / max(score, 0.02)
        improved = False
        for _attempt in range(4):
            system = jtj + damping * np.diag(np.diag(jtj)) + 1e-12 * np.eye(3)
            step = np.linalg.solve(system, jtr)
            _perturbed(q, step, trial)
            project_kernel(trial, dc, upper, lower, shifted)
            _standardise(shifted)
            trial_score = np.sum(pattern * shifted)
            if trial_score > score:
                q[:] = trial
                simulated[:] = shifted
                score = trial_score
                damping = max(damping / 3.0, 1e-6)
                improved = True
                break
            damping *= 10.0
        if not improved or np.sqrt(np.sum(step * step)) < CONVERGED_STEP_RAD:
            break
    q_out[:] = q
    return score


@compiled(fastmath=True, parallel=True)
def _refine_many(
    patterns: np.ndarray,
    dcs: np.ndarray,
    dc_index: np.ndarray,
    starts: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    max_iterations: int,
    q_out: np.ndarray,
    scores: np.ndarray,
) -> None:
    for i in numba.prange(starts.shape[0]):
        scores[i] = _refine_one(patterns[i], dcs[dc_index[i]], starts[i], upper, lower, max_iterations, q_out[i])


# -------------------------------------------------------------------------------------------- public API


def _binned(prepared: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Prepared patterns binned :data:`SCREEN_BINNING` x :data:`SCREEN_BINNING` (and prepared again), and the
    binned shape; unchanged when the shape does not divide."""
    rows, cols = shape
    b = SCREEN_BINNING
    if rows % b or cols % b:
        return prepared, shape
    binned = prepared.reshape(len(prepared), rows // b, b, cols // b, b).mean(axis=(2, 4)).reshape(len(prepared), -1)
    binned -= binned.mean(axis=1, keepdims=True)
    binned /= np.maximum(np.linalg.norm(binned, axis=1, keepdims=True), 1e-12)
    return binned, (rows // b, cols // b)


def refine(
    master: MasterPattern,
    prepared: np.ndarray,
    pc: np.ndarray,
    starts: np.ndarray,
    shape: tuple[int, int] = (60, 60),
    max_iterations: int = 12,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine orientations by maximising NCC against master-pattern simulations at each pattern's PC.

    Parameters
    ----------
    master : MasterPattern
        The phase's master pattern.
    prepared : numpy.ndarray
        ``(n, h*w)`` patterns from :func:`prepare_for_matching`.
    pc : numpy.ndarray
        ``(n, 3)`` projection centres (Bruker).
    starts : numpy.ndarray
        ``(n, 4)`` starting orientations; ``(n, k, 4)`` tries ``k`` starts per pattern: each runs
        :data:`SCREEN_ITERATIONS` iterations on binned patterns, then the best-scoring one runs the rest at full
        resolution.
    shape : tuple of int
        Detector ``(rows, cols)``.
    max_iterations : int
        Levenberg-Marquardt iterations per start.

    Returns
    -------
    quaternions : numpy.ndarray
        ``(n, 4)`` refined orientations.
    scores : numpy.ndarray
        ``(n,)`` NCC at the refined orientation (-1 to 1).
    """
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim == 2:
        starts = starts[:, None, :]
    n, k = starts.shape[:2]
    pc = np.asarray(pc, dtype=np.float64).reshape(-1, 3)
    unique_pc, dc_index = np.unique(np.round(pc, 6), axis=0, return_inverse=True)
    dcs = direction_cosines(unique_pc, shape)
    dc_index = dc_index.reshape(-1)
    master_arrays = (master.upper, master.lower)
    if k > 1:  # screen: a few iterations from every start, then only each pattern's best start goes on
        flat = np.ascontiguousarray(starts.reshape(n * k, 4))
        repeated = np.repeat(np.arange(n), k)
        screened, screen_scores = np.empty_like(flat), np.empty(n * k)
        coarse, coarse_shape = _binned(prepared, shape)
        coarse_dcs = direction_cosines(unique_pc, coarse_shape)  # a coarser detector's pixels: the bins' centres
        with PARALLEL_LOCK:
            _refine_many(np.ascontiguousarray(coarse[repeated]), coarse_dcs, np.ascontiguousarray(dc_index[repeated]),
                         flat, *master_arrays, SCREEN_ITERATIONS, screened, screen_scores)  # fmt: skip
        best = screen_scores.reshape(n, k).argmax(axis=1)
        starts = screened.reshape(n, k, 4)[np.arange(n), best][:, None, :]
        max_iterations = max(max_iterations - SCREEN_ITERATIONS, 1)
    quaternions, scores = np.empty((n, 4)), np.empty(n)
    with PARALLEL_LOCK:
        _refine_many(np.ascontiguousarray(prepared, dtype=np.float64), dcs, np.ascontiguousarray(dc_index),
                     np.ascontiguousarray(starts[:, 0]), *master_arrays, max_iterations, quaternions, scores)  # fmt: skip
    quaternions *= np.where(quaternions[:, :1] < 0, -1.0, 1.0)
    return quaternions, scores
