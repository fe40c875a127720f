"""Refinement of the EBSD indexer's orientations against the Ni master pattern bundled with kikuchipy.

What :class:`~matserve.models.ebsd_indexer.EbsdIndexerModel` runs for ``refine=True``
(:class:`~matserve.models.ebsd_indexer.EbsdOptions`): the master pattern and the run-time dictionary (loaded and
built once per process, under a lock), :func:`refine_orientations` from several starts per pattern
(:func:`matserve.matching.refine`), and the request-level checks (:func:`refine_batch`, :func:`check_refine_size`).
kikuchipy and orix are imported on first use (a few seconds), or at start-up by :func:`warm_up`
(``MATSERVE_EBSD_PRELOAD``).

Conventions: quaternions ``(a, b, c, d)``, orix convention, sample -> crystal; PCs in the Bruker convention
(fractions of detector width, height, width); angles in degrees where a name ends in ``_deg``.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from matserve.codecs.ebsd import NOMINAL_PC, EbsdBatch, EbsdInputError, EbsdTooLarge, Geometry
from matserve.matching import CompressedDictionary, MasterPattern, prepare_for_matching, refine, warp_to_pc
from matserve.registry import ModelVersion

if TYPE_CHECKING:
    from matserve.models.ebsd_indexer import Orientations

logger = logging.getLogger("matserve.ebsd")

REFINE_DICTIONARY_RESOLUTION_DEG = 3.0
"""Grid spacing of the refinement's coarse dictionary, degrees (30,443 orientations in the m-3m zone)."""
REFINE_DICTIONARY_COMPONENTS = 300
"""Principal components the coarse dictionary keeps. Measured on 300 held-out noisy patterns (starts within 3 deg
among the best 3, with the rotation PC correction used before the warp): 200 components 94 %, 300 components 97 %."""
REFINE_CANDIDATES = 4
"""Dictionary matches refined per pattern (and the matches a dictionary version's graph answers), besides a network
version's own orientation (with 300 components, the best 3 hold a start within 3 deg for 97 % of noisy patterns,
the best 6 for 98 %; 4 balance outliers and speed)."""
MIN_STATIC_BACKGROUND_PATTERNS = 9
"""``static_background=True`` needs at least this many patterns (their mean estimates the camera's background)."""

_REFINE_LOCK = threading.Lock()
_MASTER_PATTERN: Any = None
_PROJECTOR: MasterPattern | None = None
_DICTIONARIES: dict[tuple[float, ...], CompressedDictionary] = {}


def master_pattern() -> Any:
    """The Ni master pattern shipped inside the kikuchipy wheel (square Lambert, both hemispheres), loaded once.

    Never downloads anything (``kikuchipy.data.nickel_ebsd_master_pattern_small`` reads a file of the wheel).
    """
    global _MASTER_PATTERN
    if _MASTER_PATTERN is None:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import kikuchipy

            _MASTER_PATTERN = kikuchipy.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
        logger.info("kikuchipy and the Ni master pattern loaded in %.1f s", time.perf_counter() - started)
    return _MASTER_PATTERN


def projector() -> MasterPattern:
    """The Ni master pattern as the refinement's projector, loaded once per process."""
    global _PROJECTOR
    if _PROJECTOR is None:
        _PROJECTOR = MasterPattern.from_kikuchipy(master_pattern())
    return _PROJECTOR


def warm_up(card: dict[str, Any] | None = None) -> None:
    """Import kikuchipy/orix, load the master pattern and compile the refinement kernels now
    (``MATSERVE_EBSD_PRELOAD``), not at the first request, refinement, scan upload or IPF map.

    Parameters
    ----------
    card : dict, optional
        The active version's card. Unless it is a dictionary version, the run-time dictionary that refines a
        network version's orientations (:func:`matcher`) is built too (~40 s).
    """
    try:
        with _REFINE_LOCK:
            master_pattern()
        pattern = np.full((1, 60, 60), 1.0, np.float32) + np.eye(60, dtype=np.float32)
        start = np.array([[1.0, 0.0, 0.0, 0.0]])
        in_graph = (card or {}).get("orientation_decoding", {}).get("method") == "dictionary"
        refine_orientations(pattern, np.array([NOMINAL_PC]), start, starts=start[:, None] if in_graph else None)
        warp_to_pc(pattern, np.array([NOMINAL_PC]), np.asarray(NOMINAL_PC))
        from matserve.plots import ipf_z_rgb

        ipf_z_rgb(start)
    except Exception:  # pragma: no cover - a warm-up failure only costs the first request its time
        logger.exception("EBSD warm-up failed")


def matcher(nominal_pc: tuple[float, float, float]) -> tuple[MasterPattern, CompressedDictionary]:
    """The Ni master pattern and a run-time compressed dictionary at ``nominal_pc``, built once per process and PC
    (for network versions, whose graph has no dictionary).

    The dictionary (m-3m cubochoric grid at :data:`REFINE_DICTIONARY_RESOLUTION_DEG`, 60x60 patterns at the
    nominal PC, :data:`REFINE_DICTIONARY_COMPONENTS` principal components) is simulated from the bundled master
    pattern, deterministically: about 40 s on 2 cores, ~36 MB; dictionary versions (2.0.0) ship the same one in
    their graph. Call with the refinement lock held.
    """
    key = tuple(round(float(c), 6) for c in nominal_pc)
    if key not in _DICTIONARIES:
        started = time.perf_counter()
        _DICTIONARIES[key] = CompressedDictionary.build(
            projector(), np.asarray(key), REFINE_DICTIONARY_RESOLUTION_DEG, REFINE_DICTIONARY_COMPONENTS
        )
        logger.info("EBSD refinement dictionary (%d orientations at PC %s) built in %.1f s",
                    len(_DICTIONARIES[key].quaternions), key, time.perf_counter() - started)  # fmt: skip
    return projector(), _DICTIONARIES[key]


def refine_orientations(
    patterns: np.ndarray,
    pc: np.ndarray,
    quaternions: np.ndarray,
    nominal_pc: tuple[float, float, float] = NOMINAL_PC,
    starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine orientations against the Ni master pattern, from several starts per pattern.

    Parameters
    ----------
    patterns : numpy.ndarray
        ``(m, 60, 60)`` patterns (detector intensities; the background is removed here).
    pc : numpy.ndarray
        ``(m, 3)`` projection centres (Bruker convention); sample tilt 70 deg, detector tilt 0 deg.
    quaternions : numpy.ndarray
        ``(m, 4)`` the fast path's orientations (sample -> crystal, orix convention).
    nominal_pc : tuple of float
        The PC of the run-time dictionary (the model's nominal PC); used only without ``starts``.
    starts : numpy.ndarray, optional
        ``(m, k, 4)`` starts already found (a dictionary version's candidates). Without them, the starts are
        ``quaternions`` and the :data:`REFINE_CANDIDATES` best matches of the patterns, warped to the nominal PC,
        in the run-time dictionary (:func:`matcher`).

    Returns
    -------
    quaternions : numpy.ndarray
        ``(m, 4)`` refined orientations (not reduced to the fundamental zone).
    scores : numpy.ndarray
        ``(m,)`` normalised cross-correlation between each background-removed pattern and the simulation at its
        refined orientation and PC (-1 to 1).

    Notes
    -----
    Each start runs a few Levenberg-Marquardt iterations on the NCC at the pattern's own PC (on 2x2-binned
    patterns), and the best-scoring one is refined to the end (:func:`matserve.matching.refine`;
    converges from up to ~3-4 deg away). Patterns no start is within reach of (2-3 % of noisy simulated ones, most
    low-dose ones; ``training/ebsd/refinement.json``) stay wrong.
    """
    with _REFINE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patterns = np.asarray(patterns, dtype=np.float32)
        prepared = prepare_for_matching(patterns)
        pc = np.asarray(pc, dtype=np.float64).reshape(-1, 3)
        if starts is None:
            _, dictionary = matcher(nominal_pc)
            warped = warp_to_pc(patterns, pc, np.asarray(nominal_pc))
            candidates, _ = dictionary.candidates(prepare_for_matching(warped), REFINE_CANDIDATES)
            starts = np.concatenate([np.asarray(quaternions, dtype=np.float64)[:, None, :], candidates], axis=1)
        return refine(projector(), prepared, pc, np.asarray(starts, dtype=np.float64))


def refine_batch(batch: EbsdBatch, orientations: Orientations, model: ModelVersion,
                 static_background: bool) -> Orientations:  # fmt: skip
    """Refine a batch's fast-path orientations (see :func:`refine_orientations`); checks the card's phase is Ni.

    Raises
    ------
    EbsdInputError
        The version's phase has no master pattern here, or ``static_background`` with too few patterns.
    """
    phase = (model.card.get("phase") or {}).get("name", "ni")
    if str(phase).lower() not in ("ni", "nickel"):
        raise EbsdInputError(f"refinement needs a master pattern of the model's phase ({phase!r}); only Ni is bundled")
    patterns = batch.patterns
    if static_background:
        if len(batch.rows) < MIN_STATIC_BACKGROUND_PATTERNS:
            raise EbsdInputError(
                f"static_background needs at least {MIN_STATIC_BACKGROUND_PATTERNS} patterns from different grains "
                f"(their mean is the background estimate); got {len(batch.rows)}"
            )
        patterns = batch.resampled - batch.resampled.mean(axis=0, keepdims=True)
    else:
        patterns = batch.resampled
    started = time.perf_counter()
    nominal_pc = Geometry.from_card(model.card).nominal_pc
    quaternions, scores = refine_orientations(patterns, batch.pc, orientations.quaternion, nominal_pc,
                                              starts=orientations.candidates)  # fmt: skip
    elapsed = time.perf_counter() - started
    logger.info("refined %d orientation(s) in %.2f s (%.1f patterns/s)", len(scores), elapsed,
                len(scores) / max(elapsed, 1e-9))  # fmt: skip
    return orientations.refined(quaternions, scores)


def check_refine_size(count: int, limit: int) -> None:
    """Refuse refinement of more than ``limit`` patterns in one request (413)."""
    if count > limit:
        raise EbsdTooLarge(
            f"refine=true takes at most {limit} patterns per request (refinement runs at about 100 patterns/s); "
            f"got {count}: send fewer (the Python SDK sends 64 at a time) or leave refine off"
        )
