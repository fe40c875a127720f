"""Orientation codec of the EBSD indexer: the cubic-invariant embedding the network regresses, and back.

Conventions: orix unit quaternions ``(a, b, c, d)`` with ``a >= 0``; the orientation maps the sample frame
to the crystal frame (as in kikuchipy crystal maps); its matrix's rows are the crystal's cube axes expressed
in the sample frame. The fundamental-zone reduction, Bunge Euler angles and disorientation below are numpy
versions of orix's (m-3m), so that serving needs no orix import; tests compare them with orix.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

# --------------------------------------------------------------------------- orientation embedding
#
# The network does not regress a quaternion directly (a symmetry-aware quaternion loss has to pick one of 24
# equivalent targets, so early in training its gradients point every which way and the output collapses to a
# constant). It regresses the cubic-invariant embedding of the orientation instead: the fourth-order tensor
# T = sum_i a_i (x) a_i (x) a_i (x) a_i, where a_i (rows of the orientation matrix) are the crystal's cube
# axes in the sample frame. T is the same for the 24 symmetry equivalents (they permute and flip the a_i),
# different for any two orientations that are not equivalent, and a smooth function of the pattern, so it is
# an ordinary regression target. Decoding maximises <T(R), T_predicted> over rotations R (the least-squares
# fit, as ||T(R)|| is constant).

#: Index tuples (j <= k <= l <= m) of the 15 distinct entries of a symmetric 3x3x3x3 tensor, and how many
#: entries of the full tensor each stands for (so that the weighted squared error is the Frobenius norm).
EMBEDDING_INDICES = tuple(
    (j, k, ell, m) for j in range(3) for k in range(j, 3) for ell in range(k, 3) for m in range(ell, 3)
)
EMBEDDING_MULTIPLICITY = np.array(
    [len(set(itertools.permutations(index))) for index in EMBEDDING_INDICES],
    dtype=np.float32,
)


#: Directions tried for the second cube axis, on the half circle perpendicular to the first.
CIRCLE_DIRECTIONS = 36


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(n, 3, 3)`` of orix unit quaternions ``(a, b, c, d)`` (same matrix as orix)."""
    q = np.asarray(quaternions, dtype=np.float64)
    a, b, c, d = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack(
        [
            np.stack([a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)], axis=-1),
            np.stack([2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)], axis=-1),
            np.stack([2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d], axis=-1),
        ],
        axis=1,
    )


def matrix_to_quaternion(matrices: np.ndarray) -> np.ndarray:
    """Unit quaternions ``(n, 4)`` with ``a >= 0`` of rotation matrices ``(n, 3, 3)`` (inverse of the above)."""
    m = np.asarray(matrices, dtype=np.float64)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = np.stack(
        [
            np.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - trace, m[:, 0, 1] + m[:, 1, 0],
                      m[:, 0, 2] + m[:, 2, 0]], -1),
            np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - trace,
                      m[:, 1, 2] + m[:, 2, 1]], -1),
            np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                      1 + 2 * m[:, 2, 2] - trace], -1),
        ],
        axis=1,
    )  # fmt: skip
    best = np.argmax(np.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1), axis=1)
    q = candidates[np.arange(len(m)), best]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def cubic_embedding(quaternions: np.ndarray) -> np.ndarray:
    """The 15 distinct entries ``(n, 15)`` of ``T = sum_i a_i^(x4)`` for orix quaternions (see above)."""
    axes = quaternion_to_matrix(quaternions)  # rows a_i
    tensor = np.einsum("nij,nik,nil,nim->njklm", axes, axes, axes, axes)
    return np.stack([tensor[:, j, k, ell, m] for j, k, ell, m in EMBEDDING_INDICES], axis=1).astype(np.float32)


#: For each of the 81 entries of the full tensor (j, k, l, m), the column of the embedding holding it.
FULL_TENSOR_COLUMNS = np.array([EMBEDDING_INDICES.index(tuple(sorted(i))) for i in np.ndindex(3, 3, 3, 3)])
_FACTORS = np.array(EMBEDDING_INDICES).T  # (4, 15): the four direction components of each monomial


@functools.lru_cache(maxsize=1)
def start_directions() -> np.ndarray:
    """Unit vectors on a hemisphere (Fibonacci lattice, 200 points) to seed the first-axis search."""
    k = np.arange(200) + 0.5
    z = 1 - k / 200
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _monomials(directions: np.ndarray) -> np.ndarray:
    """``v_j v_k v_l v_m`` for each embedding index, times its multiplicity: ``(..., 3) -> (..., 15)``."""
    product = np.take(directions, _FACTORS[0], axis=-1)
    for factor in _FACTORS[1:]:
        product = product * np.take(directions, factor, axis=-1)
    return product * EMBEDDING_MULTIPLICITY


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def decode_cubic_embedding(embedding: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Orientations (orix unit quaternions ``(n, 4)``, ``a >= 0``) whose embedding best fits ``embedding``.

    The first cube axis is the best of 200 directions for ``p(v) = T(v, v, v, v)``, the second the best of
    ``CIRCLE_DIRECTIONS`` directions perpendicular to it, the third their cross product. Then ``iterations``
    steps of the higher-order power method (``a_i <- T(., a_i, a_i, a_i)``, which converges cubically for a sum
    of fourth powers), each followed by Gram-Schmidt, polish the frame.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    n = len(embedding)
    starts = start_directions()
    first = starts[np.argmax(embedding @ _monomials(starts).T, axis=1)]
    helper = np.where(np.abs(first[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    u = _unit(_cross(first, helper))
    w = _cross(first, u)
    angles = np.linspace(0, np.pi, CIRCLE_DIRECTIONS, endpoint=False)
    circle = np.cos(angles)[None, :, None] * u[:, None, :] + np.sin(angles)[None, :, None] * w[:, None, :]
    values = np.einsum("nc,nac->na", embedding, _monomials(circle))
    second = circle[np.arange(n), np.argmax(values, axis=1)]
    frame = np.stack([first, second, _cross(first, second)], axis=1)
    tensor = embedding[:, FULL_TENSOR_COLUMNS].reshape(n, 3, 27)  # T[j, (k, l, m)]
    for _ in range(iterations):
        outer = frame[:, :, :, None, None] * frame[:, :, None, :, None] * frame[:, :, None, None, :]
        power = np.matmul(outer.reshape(n, 3, 27), np.transpose(tensor, (0, 2, 1)))  # (n, axis i, j)
        first = _unit(power[:, 0])
        second = _unit(power[:, 1] - np.sum(power[:, 1] * first, axis=-1, keepdims=True) * first)
        frame = np.stack([first, second, _cross(first, second)], axis=1)
    return matrix_to_quaternion(frame)


# --------------------------------------------------------------------------- axis-proximity maps
#
# The network predicts, on an AXIS_MAP_SIDE x AXIS_MAP_SIDE grid over the detector, the cube-axis proximity of
# each pixel's ray: g = sum_i (c_i)^4 for the ray's unit direction c in the crystal frame (1 on a <100> axis,
# 1/2 on <110>, 1/3 on <111>). That is a local property of the pattern (what the bands near that pixel look
# like), and g = <T, d^(x4)> is linear in the orientation's embedding T for the ray's known direction d in the
# sample frame. So the orientation follows from the map by a small least-squares fit (15 unknowns, constrained
# to the 6 trace identities sum_k T_jmkk = delta_jm of any orientation) and the decoder above; the fit's
# residual says how well one orientation explains the map.

AXIS_MAP_SIDE = 15
#: Detector -> sample frame for a 70 deg sample tilt and an untilted detector (kikuchipy's
#: ``(~EBSDDetector.sample_to_detector).to_matrix()``; a test checks it against kikuchipy).
DETECTOR_TO_SAMPLE = np.array(
    [
        [0.0, -np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))],
        [1.0, 0.0, 0.0],
        [0.0, np.sin(np.deg2rad(20.0)), np.cos(np.deg2rad(20.0))],
    ]
)
TRACE_WEIGHT = 1e3
#: Up to this many distinct PCs in a batch, each gets a cached least-squares operator; beyond, per-pattern solves.
MAX_SHARED_PC_GROUPS = 16


def detector_directions(pc: np.ndarray, side: int = AXIS_MAP_SIDE) -> np.ndarray:
    """Unit sample-frame directions ``(n, side * side, 3)`` of the centres of a ``side x side`` grid of blocks.

    Same geometry as kikuchipy's direction cosines (Bruker PC, sample tilt 70 deg, detector tilt 0): row-major
    blocks, row 0 at the top of the detector.
    """
    pc = np.atleast_2d(np.asarray(pc, dtype=np.float64))
    centres = (np.arange(side) + 0.5) / side
    x = np.broadcast_to(centres[None, None, :] - pc[:, 0, None, None], (len(pc), side, side))
    y = np.broadcast_to(pc[:, 1, None, None] - centres[None, :, None], (len(pc), side, side))
    z = np.broadcast_to(pc[:, 2, None, None], (len(pc), side, side))
    rays = np.stack([x, y, z], axis=-1).reshape(len(pc), side * side, 3) @ DETECTOR_TO_SAMPLE.T
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def axis_map(quaternions: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Cube-axis proximity ``sum_i (R d)_i^4`` ``(n, pixels)`` of sample directions for orix quaternions."""
    crystal = np.einsum("nij,npj->npi", quaternion_to_matrix(quaternions), directions)
    return np.sum(crystal**4, axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def trace_constraints() -> tuple[np.ndarray, np.ndarray]:
    rows, targets = [], []
    for j in range(3):
        for m in range(j, 3):
            row = np.zeros(len(EMBEDDING_INDICES))
            for k in range(3):
                row[EMBEDDING_INDICES.index(tuple(sorted((j, m, k, k))))] += 1.0
            rows.append(row)
            targets.append(1.0 if j == m else 0.0)
    return np.array(rows), np.array(targets)


@functools.lru_cache(maxsize=64)
def _least_squares_operator(pc: tuple[float, float, float], side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one PC: ``(solve (15, P), offset (15,), design (P, 15))`` with ``embedding = solve @ g + offset``."""
    design = _monomials(detector_directions(np.array([pc]), side)[0])
    constraints, targets = trace_constraints()
    normal = design.T @ design + TRACE_WEIGHT * constraints.T @ constraints
    inverse = np.linalg.inv(normal)
    return inverse @ design.T, inverse @ (TRACE_WEIGHT * constraints.T @ targets), design


def embedding_from_axis_map(values: np.ndarray, pc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares embeddings ``(n, 15)`` and fit residual RMS ``(n,)`` of axis maps ``(n, side, side)``.

    The fit minimises ``||design t - g||^2 + TRACE_WEIGHT ||constraints t - identity||^2`` per pattern, where
    the design rows are the monomials of each block's ray for the pattern's PC ``(n, 3)``. Patterns sharing a PC
    share one precomputed operator (a matrix product per batch).
    """
    values = np.asarray(values, dtype=np.float64)
    side = values.shape[-1]
    flat = values.reshape(len(values), -1)
    pcs = np.round(np.asarray(pc, dtype=np.float64).reshape(-1, 3), 6)
    unique, inverse = np.unique(pcs, axis=0, return_inverse=True)
    if len(unique) > MAX_SHARED_PC_GROUPS:  # one PC per pattern: batched normal equations
        design = _monomials(detector_directions(pcs, side))  # (n, P, 15)
        constraints, targets = trace_constraints()
        normal = np.einsum("npc,npd->ncd", design, design) + TRACE_WEIGHT * constraints.T @ constraints
        right = np.einsum("npc,np->nc", design, flat) + TRACE_WEIGHT * constraints.T @ targets
        embedding = np.linalg.solve(normal, right[..., None])[..., 0]
        residual = np.sqrt(np.mean((np.einsum("npc,nc->np", design, embedding) - flat) ** 2, axis=1))
        return embedding, residual
    embedding = np.empty((len(flat), len(EMBEDDING_INDICES)))
    residual = np.empty(len(flat))
    for group, group_pc in enumerate(unique):
        rows = np.flatnonzero(inverse.ravel() == group)
        solve, offset, design = _least_squares_operator(tuple(group_pc), side)
        embedding[rows] = flat[rows] @ solve.T + offset
        residual[rows] = np.sqrt(np.mean((embedding[rows] @ design.T - flat[rows]) ** 2, axis=1))
    return embedding, residual


def orientations_from_axis_map(values: np.ndarray, pc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orix quaternions ``(n, 4)`` (``a >= 0``) and the fit residual RMS ``(n,)`` from axis maps
    ``(n, side, side)`` and PCs ``(n, 3)`` (Bruker convention)."""
    embedding, residual = embedding_from_axis_map(values, pc)
    return decode_cubic_embedding(embedding), residual


# --------------------------------------------------------------------------- symmetry, FZ, Euler angles


def _cubic_rotations() -> np.ndarray:
    """The 24 proper rotations of m-3m (point group 432) as unit quaternions (a >= 0 representatives)."""
    half = 0.5
    root = 1 / np.sqrt(2)
    candidates: set[tuple[float, ...]] = set()
    for axis in range(4):  # identity and the three 2-fold axes <100>
        q = [0.0] * 4
        q[axis] = 1.0
        candidates.add(tuple(q))
    for signs in np.ndindex(2, 2, 2):  # 3-fold axes <111>: (1/2)(1, +-1, +-1, +-1)
        candidates.add((half, *(half * (1 - 2 * s) for s in signs)))
    for i in range(4):  # 4-fold <100> and 2-fold <110>: (1/sqrt2)(e_i +- e_j)
        for j in range(i + 1, 4):
            for sign in (1.0, -1.0):
                q = [0.0] * 4
                q[i], q[j] = root, sign * root
                if q[0] < 0 or (q[0] == 0 and next(v for v in q if v != 0) < 0):
                    q = [-v for v in q]
                candidates.add(tuple(q))
    rotations = np.array(sorted(candidates, reverse=True))
    assert len(rotations) == 24
    return rotations


CUBIC_ROTATIONS = _cubic_rotations()
"""float64 ``(24, 4)``: the proper rotations of the m-3m Laue group (432), orix's (a, b, c, d) convention."""
CUBIC_FZ_MAX_ANGLE_DEG = 62.8
"""Largest rotation angle of an orientation in the m-3m fundamental zone (62.80 deg), degrees."""


def quaternion_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product ``p * q`` of quaternions ``(..., 4)`` (broadcast), (a, b, c, d) with a the scalar part."""
    a1, b1, c1, d1 = np.moveaxis(p, -1, 0)
    a2, b2, c2, d2 = np.moveaxis(q, -1, 0)
    return np.stack([
        a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
        a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
        a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
        a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
    ], axis=-1)  # fmt: skip


def reduce_to_fundamental_zone(quaternions: np.ndarray) -> np.ndarray:
    """Map orientations to the m-3m fundamental zone: the symmetry-equivalent with the smallest rotation angle.

    Parameters
    ----------
    quaternions : numpy.ndarray
        ``(n, 4)`` unit quaternions (a, b, c, d), orix convention, rotations from the sample to the crystal
        frame (as ``kikuchipy``'s ``CrystalMap.rotations``); they are normalised first.

    Returns
    -------
    numpy.ndarray
        float64 ``(n, 4)``: ``s * q`` for the crystal symmetry ``s`` of 432 with the largest ``|a|``, with
        the sign chosen so that ``a >= 0``. This is the orientation ``orix.quaternion.Orientation(q,
        symmetry=Oh).reduce()`` returns (the same rotation; up to the sign and ties on the zone's boundary),
        computed with one matrix product instead of importing orix.
    """
    q = np.asarray(quaternions, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    # scalar part of s * q for every symmetry s: a_s a_q - b_s b_q - c_s c_q - d_s d_q
    conjugated = CUBIC_ROTATIONS * np.array([1.0, -1.0, -1.0, -1.0])
    scalar = q @ conjugated.T  # (n, 24)
    best = np.abs(scalar).argmax(axis=1)
    reduced = quaternion_multiply(CUBIC_ROTATIONS[best], q)
    reduced *= np.where(reduced[:, :1] < 0, -1.0, 1.0)
    return reduced


def quaternion_to_euler_bunge(quaternions: np.ndarray) -> np.ndarray:
    """Bunge (ZXZ, passive) Euler angles of unit quaternions, radians, as ``orix`` ``Rotation.to_euler()``.

    Parameters
    ----------
    quaternions : numpy.ndarray
        ``(n, 4)`` unit quaternions (a, b, c, d).

    Returns
    -------
    numpy.ndarray
        float64 ``(n, 3)``: (phi1, Phi, phi2) in radians, phi1 and phi2 in [0, 2 pi), Phi in [0, pi]
        (Rowenhorst et al. 2015, eq. A.14 with P = +1, the formula orix uses).
    """
    q = np.asarray(quaternions, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    a, b, c, d = q.T
    q_ad = a * a + d * d
    q_bc = b * b + c * c
    chi = np.sqrt(q_ad * q_bc)
    euler = np.zeros((len(q), 3))
    regular = chi >= 1e-9
    safe = np.where(regular, chi, 1.0)
    euler[:, 0] = np.arctan2((b * d - a * c) / safe, (-a * b - c * d) / safe)
    euler[:, 1] = np.arctan2(2 * chi, q_ad - q_bc)
    euler[:, 2] = np.arctan2((a * c + b * d) / safe, (c * d - a * b) / safe)
    # Degenerate cases (Phi = 0 or pi): all of the rotation in phi1.
    zero_phi = ~regular & (q_bc < 1e-9)
    pi_phi = ~regular & ~zero_phi
    euler[zero_phi] = np.stack([np.arctan2(-2 * a * d, a * a - d * d), np.zeros(len(a)), np.zeros(len(a))],
                               axis=1)[zero_phi]  # fmt: skip
    euler[pi_phi] = np.stack([np.arctan2(-2 * b * c, b * b - c * c), np.full(len(a), np.pi), np.zeros(len(a))],
                             axis=1)[pi_phi]  # fmt: skip
    euler[np.abs(euler) < 1e-9] = 0.0
    return np.mod(euler, 2 * np.pi)


def disorientation_deg(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """m-3m disorientation angle between orientations ``p`` and ``q`` ``(n, 4)``, degrees (0 for equivalents)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    conjugate = q * np.array([1.0, -1.0, -1.0, -1.0])
    misorientation = quaternion_multiply(p, conjugate)  # p q^-1 in the crystal frame's symmetry: s p q^-1
    scalar = np.abs(misorientation @ (CUBIC_ROTATIONS * np.array([1.0, -1.0, -1.0, -1.0])).T).max(axis=1)
    return np.degrees(2 * np.arccos(np.clip(scalar, -1.0, 1.0)))
