"""EBSD indexer: Kikuchi patterns in, crystal orientations (m-3m, nickel) out.

Patterns are checked and area-resampled to 60x60 by :mod:`matserve.codecs.ebsd` (the function the training
simulator uses). Two kinds of registry versions, told apart by the card's ``orientation_decoding.method``:

* **dictionary** (2.0.0, active): each resampled pattern is first warped from its PC onto the detector as seen
  from the nominal PC (:func:`matserve.models.ebsd_matching.warp_to_pc`, exact geometry); the graph removes its
  background, standardises it and matches it against a compressed dictionary (30,443 dynamical simulations on a
  3 deg grid of the m-3m fundamental zone at the nominal PC, compared on 300 principal components), and answers
  the best :data:`REFINE_CANDIDATES` matches. The answer is the best one; ``expected_error_deg`` is the card's
  validation calibration of its similarity (:func:`expected_error_from_similarity`). Built, not trained:
  ``python -m training.ebsd.dictionary``;
* **network** (1.0.0, the CNN preview): the graph takes normalised patterns and answers a cube-axis proximity map
  per pattern, which :mod:`matserve.codecs.orientation` turns into the orientation for the pattern's PC by least
  squares; the fit's residual, calibrated on validation data, is the error estimate.

Conventions of every result
---------------------------
* ``quaternion``: unit quaternion (a, b, c, d), orix convention, the rotation from the sample to the crystal
  frame (as ``kikuchipy``'s ``CrystalMap.rotations``), reduced to the m-3m fundamental zone (the
  symmetry-equivalent with the smallest rotation angle, at most 62.8 deg; orix's ``Orientation.reduce()``),
  with ``a >= 0``: equal orientations give equal numbers.
* ``euler_bunge_rad`` / ``euler_bunge_deg``: Bunge (ZXZ, passive) Euler angles (phi1, Phi, phi2) of that
  quaternion, as orix's ``Rotation.to_euler()`` (phi1, phi2 in [0, 360) deg; Phi in [0, 62.8] deg here).
* ``expected_error_deg``: the estimated disorientation error, degrees (see above);
  ``confidence = exp(-expected_error_deg / 1 deg)`` (1 for a perfect estimate, 0.37 at 1 deg, 0.05 at 3 deg).
* ``pc``: the projection centre used, Bruker convention (PCx, PCy, PCz fractions of detector width, height,
  width).

``refine=True`` (:meth:`EbsdIndexerModel.index`) then refines each orientation against the Ni master pattern
shipped in the kikuchipy wheel (20 kV, the pattern's own PC; :func:`refine_orientations`): it starts from a
dictionary version's candidates (a network version: from the CNN's orientation and the best matches in the same
dictionary, built at run time, ~40 s), runs Levenberg-Marquardt on the normalised cross-correlation from each
(:mod:`matserve.models.ebsd_matching`), and answers the best, with ``refined: true``, the NCC
``refinement_score`` and ``refinement_change_deg`` (disorientation between the fast path's and the refined
orientation: large when another start won). kikuchipy and orix are imported on first use of refinement, scans or
IPF maps (a few seconds; ~40 s more with the refinement kernels' first compilation), or at start-up with
``MATSERVE_EBSD_PRELOAD``; the fast path needs neither.

Not cached: patterns never repeat byte for byte, and hashing 3,600+ intensities costs about what the network
does per pattern.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.ebsd import (
    NOMINAL_PC,
    EbsdBatch,
    EbsdInputError,
    EbsdPatternInput,
    EbsdTooLarge,
    Geometry,
    encode_batch,
    encode_patterns,
)
from matserve.codecs.orientation import (
    disorientation_deg,
    orientations_from_axis_map,
    quaternion_to_euler_bunge,
    reduce_to_fundamental_zone,
)
from matserve.metrics import ITEMS, REQUESTS
from matserve.models.base import Prediction, ServedModel
from matserve.models.ebsd_matching import (
    CompressedDictionary,
    MasterPattern,
    prepare_for_matching,
    refine,
    warp_to_pc,
)
from matserve.registry import ModelVersion

logger = logging.getLogger("matserve.ebsd")

INPUT_PATTERNS = "patterns"
OUTPUT_AXIS_MAP = "axis_map"
OUTPUT_QUATERNION = "quaternion"
OUTPUT_ERROR = "expected_error_deg"
OUTPUT_CANDIDATE_QUATERNIONS = "candidate_quaternions"
OUTPUT_CANDIDATE_SIMILARITY = "candidate_similarity"
OUTPUT_CANDIDATES = "candidates"
RUN_BATCH = 1024
"""Most patterns per runtime call (or the card's ``serving.max_batch_size``, Triton's limit, if smaller); also
bounds ONNX Runtime's working memory."""
SCAN_CHUNK = 512
"""Patterns a scan is decoded, normalised and indexed in at a time: 512 keeps a request's peak memory within the
pixel budget plus 100 MiB (4096 added ~400 MiB for a scan at the budget) at the same speed."""
CONFIDENCE_SCALE_DEG = 1.0
"""``confidence = exp(-expected_error_deg / CONFIDENCE_SCALE_DEG)``."""
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


def confidence(expected_error_deg: np.ndarray) -> np.ndarray:
    """``exp(-expected_error_deg / 1 deg)``: 1 for no expected error, 0.37 at 1 deg, 0.05 at 3 deg."""
    return np.exp(-np.clip(np.asarray(expected_error_deg, dtype=np.float64), 0.0, None) / CONFIDENCE_SCALE_DEG)


def expected_error_from_similarity(similarity: np.ndarray, calibration: dict[str, list[float]]) -> np.ndarray:
    """Expected disorientation (degrees) of a dictionary match from its cosine similarity: linear interpolation
    in a card's ``orientation_decoding.error_by_similarity`` table (validation-split means per similarity decile;
    constant beyond its ends)."""
    return np.interp(np.asarray(similarity, dtype=np.float64), calibration["similarity"], calibration["mean_error_deg"])


@dataclass
class Orientations:
    """Indexing results as arrays, one row per indexed pattern.

    Attributes
    ----------
    quaternion : numpy.ndarray
        ``(m, 4)`` unit quaternions, fundamental zone, ``a >= 0`` (see the module docstring).
    euler_bunge_rad : numpy.ndarray
        ``(m, 3)`` Bunge Euler angles, radians.
    expected_error_deg : numpy.ndarray
        ``(m,)`` the network's error estimate, degrees.
    confidence : numpy.ndarray
        ``(m,)`` ``exp(-expected_error_deg / 1 deg)``.
    refinement_score : numpy.ndarray or None
        ``(m,)`` NCC of the refined orientation (``None`` without refinement).
    refinement_change_deg : numpy.ndarray or None
        ``(m,)`` disorientation between the fast path's and the refined orientation, degrees.
    candidates : numpy.ndarray or None
        ``(m, k, 4)`` a dictionary version's best matches at each pattern's PC (the refinement's starts).
    """

    quaternion: np.ndarray
    euler_bunge_rad: np.ndarray
    expected_error_deg: np.ndarray
    confidence: np.ndarray
    refinement_score: np.ndarray | None = None
    refinement_change_deg: np.ndarray | None = None
    candidates: np.ndarray | None = None

    @classmethod
    def from_network(cls, outputs: dict[str, np.ndarray]) -> Orientations:
        """From :meth:`EbsdIndexerModel.predict`'s ``quaternion``, ``expected_error_deg`` (and ``candidates``)."""
        quaternion = reduce_to_fundamental_zone(outputs[OUTPUT_QUATERNION])
        error = np.asarray(outputs[OUTPUT_ERROR], dtype=np.float64).reshape(-1)
        return cls(quaternion, quaternion_to_euler_bunge(quaternion), error, confidence(error),
                   candidates=outputs.get(OUTPUT_CANDIDATES))  # fmt: skip

    def refined(self, quaternion: np.ndarray, score: np.ndarray) -> Orientations:
        """The same patterns with refined orientations (the fast path's error estimate and confidence are kept)."""
        reduced = reduce_to_fundamental_zone(quaternion)
        return Orientations(reduced, quaternion_to_euler_bunge(reduced), self.expected_error_deg, self.confidence,
                            np.asarray(score, dtype=np.float64), disorientation_deg(self.quaternion, reduced))  # fmt: skip

    def fill(self, results: list[dict[str, Any]], rows: list[int]) -> None:
        """Write each orientation into its result dict (rows: positions in ``results``), rounded for JSON."""
        quaternion = np.round(self.quaternion, 8).tolist()
        radians = np.round(self.euler_bunge_rad, 8).tolist()
        degrees = np.round(np.degrees(self.euler_bunge_rad), 6).tolist()
        error = np.round(self.expected_error_deg, 6).tolist()
        conf = np.round(self.confidence, 6).tolist()
        score = None if self.refinement_score is None else np.round(self.refinement_score, 6).tolist()
        change = None if self.refinement_change_deg is None else np.round(self.refinement_change_deg, 6).tolist()
        for k, row in enumerate(rows):
            results[row].update({
                "euler_bunge_deg": degrees[k], "euler_bunge_rad": radians[k], "quaternion": quaternion[k],
                "expected_error_deg": error[k], "confidence": conf[k], "refined": score is not None,
                "refinement_score": None if score is None else score[k],
                "refinement_change_deg": None if change is None else change[k],
            })  # fmt: skip


EMPTY_RESULT = {"euler_bunge_deg": None, "euler_bunge_rad": None, "quaternion": None, "expected_error_deg": None,
                "confidence": None, "refined": False, "refinement_score": None, "refinement_change_deg": None}  # fmt: skip


@dataclass
class PreparedEbsd:
    """Encoded patterns of a request and the geometry of the version that indexes them."""

    batch: EbsdBatch
    geometry: Geometry


@dataclass
class ScanOrientations:
    """A scan indexed pixel by pixel (row-major ``rows x cols``).

    Attributes
    ----------
    rows, cols : int
        Scan shape.
    indexed : numpy.ndarray
        bool ``(rows * cols,)``: pixels with an orientation.
    orientations : Orientations
        One row per indexed pixel, in pixel order.
    errors : dict of int to str
        Flat pixel index -> why it was not indexed.
    pc : numpy.ndarray
        ``(rows * cols, 3)`` projection centres used.
    """

    rows: int
    cols: int
    indexed: np.ndarray
    orientations: Orientations
    errors: dict[int, str]
    pc: np.ndarray


class EbsdIndexerModel(ServedModel[PreparedEbsd]):
    """Orientation regressor served from ``models/ebsd_indexer/<version>`` (trained geometry and phase in the card).

    Batch jobs and :meth:`__call__` take :class:`~matserve.codecs.ebsd.EbsdPatternInput` items; the HTTP API
    uses :meth:`index` (decoded arrays, optional refinement) and :meth:`index_scan`.
    """

    name = "ebsd_indexer"
    item_type = EbsdPatternInput

    def geometry(self, version: str | None = None) -> Geometry:
        """The detector geometry a version was trained for."""
        return Geometry.from_card(self.card(version))

    # -- the lifecycle (jobs, __call__) ----------------------------------------------------------------------

    def preprocess(self, items: list[Any], model: ModelVersion) -> PreparedEbsd:
        geometry = Geometry.from_card(model.card)
        return self._prepared(encode_batch(items, geometry), geometry)

    def predict(self, prepared: PreparedEbsd, model: ModelVersion) -> dict[str, np.ndarray]:
        """Run the version's graph and decode each pattern's orientation for its PC: ``quaternion`` and
        ``expected_error_deg``, plus ``candidates`` ``(m, k, 4)`` for a dictionary version.

        * dictionary versions (card ``orientation_decoding.method == "dictionary"``): the resampled patterns,
          warped from their PCs to the nominal one (:func:`matserve.models.ebsd_matching.warp_to_pc`), go through
          the graph, which answers the best dictionary matches; the error estimate is the card's calibration of
          the best similarity;
        * network versions: the graph takes normalised patterns and answers axis maps, which
          :func:`matserve.codecs.orientation.orientations_from_axis_map` fits (the fit residual times the card's
          validation calibration is the error estimate).
        """
        batch = prepared.batch
        if not batch.rows:
            return {}
        size = min(RUN_BATCH, int(model.card.get("serving", {}).get("max_batch_size", RUN_BATCH)))
        decoding = model.card.get("orientation_decoding", {})
        if decoding.get("method") == "dictionary":
            geometry = prepared.geometry
            parts = [
                self.runtime.run(model, {INPUT_PATTERNS: warp_to_pc(batch.resampled[i : i + size], batch.pc[i : i + size],
                                                                    np.asarray(geometry.nominal_pc))})
                for i in range(0, len(batch.rows), size)
            ]  # fmt: skip
            candidates = np.concatenate([np.asarray(p[OUTPUT_CANDIDATE_QUATERNIONS], dtype=np.float64) for p in parts])
            similarity = np.concatenate([np.asarray(p[OUTPUT_CANDIDATE_SIMILARITY], dtype=np.float64) for p in parts])
            error = expected_error_from_similarity(similarity[:, 0], decoding["error_by_similarity"])
            return {OUTPUT_QUATERNION: candidates[:, 0], OUTPUT_ERROR: error, OUTPUT_CANDIDATES: candidates}
        maps = np.concatenate([
            np.asarray(self.runtime.run(model, {INPUT_PATTERNS: batch.patterns[i : i + size]})[OUTPUT_AXIS_MAP])
            for i in range(0, len(batch.rows), size)
        ])  # fmt: skip
        quaternion, residual = orientations_from_axis_map(maps, batch.pc)
        deg_per_residual = float(decoding.get("error_deg_per_fit_residual", 1.0))
        return {OUTPUT_QUATERNION: quaternion, OUTPUT_ERROR: deg_per_residual * residual}

    def postprocess(self, prepared: PreparedEbsd, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        results = prepared.batch.results
        if prepared.batch.rows:
            Orientations.from_network(outputs).fill(results, prepared.batch.rows)
        return results

    @staticmethod
    def _prepared(batch: EbsdBatch, geometry: Geometry) -> PreparedEbsd:
        for result in batch.results:
            for key, value in EMPTY_RESULT.items():
                result.setdefault(key, value)
        return PreparedEbsd(batch, geometry)

    # -- the HTTP API's entry points ---------------------------------------------------------------------------

    def index(
        self,
        patterns: list[np.ndarray | str],
        pc: object = None,
        version: str | None = None,
        refine: bool = False,
        static_background: bool = False,
    ) -> Prediction:
        """Index decoded patterns (one result per pattern, refused ones with ``error``), optionally refined.

        Parameters
        ----------
        patterns : list of numpy.ndarray or str
            2-D detector images (or the reason an item was refused while decoding).
        pc : array-like, optional
            ``[PCx, PCy, PCz]`` for all patterns or ``(n, 3)``; default the card's nominal PC.
        version : str, optional
            Registry version (default the active one).
        refine : bool
            Refine each orientation against the master pattern (see :func:`refine_orientations`).
        static_background : bool
            With ``refine``: subtract the mean of the request's patterns (an estimate of the camera's static
            background) before the refinement's background removal; needs at least
            :data:`MIN_STATIC_BACKGROUND_PATTERNS` patterns. The network's input is never changed.

        Raises
        ------
        EbsdInputError
            A PC outside the trained range, or refinement options that cannot be used.
        """
        model = self.version(version)
        geometry = Geometry.from_card(model.card)
        centres = geometry.projection_centres(pc, len(patterns))
        labels = {"model": model.name, "version": model.version}
        try:
            with self._timed(labels, "preprocess"):
                prepared = self._prepared(encode_patterns(patterns, centres), geometry)
            with self._timed(labels, "predict"):
                outputs = self.predict(prepared, model)
            with self._timed(labels, "postprocess"):
                batch = prepared.batch
                if batch.rows:
                    orientations = Orientations.from_network(outputs)
                    if refine:
                        with self._timed(labels, "refine"):
                            orientations = refine_batch(batch, orientations, model, static_background)
                    orientations.fill(batch.results, batch.rows)
        except Exception:
            REQUESTS.labels(**labels, outcome="error").inc()
            raise
        REQUESTS.labels(**labels, outcome="ok").inc()
        failed = len(batch.results) - len(batch.rows)
        ITEMS.labels(**labels, outcome="ok").inc(len(batch.rows))
        ITEMS.labels(**labels, outcome="error").inc(failed)
        return Prediction(model=model.name, version=model.version, results=batch.results)

    def index_scan(
        self,
        scan: np.ndarray,
        pc: object = None,
        version: str | None = None,
        refine: bool = False,
        static_background: bool = False,
    ) -> tuple[ModelVersion, ScanOrientations]:
        """Index a scan ``(rows, cols, h, w)`` pixel by pixel, :data:`SCAN_CHUNK` patterns at a time.

        Parameters
        ----------
        scan : numpy.ndarray
            ``(rows, cols, h, w)`` patterns, any numeric dtype.
        pc : array-like, optional
            ``[PCx, PCy, PCz]``, or ``(rows, cols, 3)`` / ``(rows * cols, 3)`` per pixel; default nominal.
        version, refine, static_background
            As for :meth:`index` (refinement is done over the whole scan at the end).

        Returns
        -------
        model : ModelVersion
            The version that answered.
        scan : ScanOrientations
            Orientations of the indexed pixels and the reasons of the others.
        """
        model = self.version(version)
        geometry = Geometry.from_card(model.card)
        rows, cols = int(scan.shape[0]), int(scan.shape[1])
        flat = scan.reshape(rows * cols, *scan.shape[2:])
        if pc is not None:
            pc = np.asarray(pc, dtype=np.float64)
            if pc.shape == (rows, cols, 3):
                pc = pc.reshape(rows * cols, 3)
        centres = geometry.projection_centres(pc, len(flat))
        labels = {"model": model.name, "version": model.version}
        indexed = np.zeros(len(flat), dtype=bool)
        errors: dict[int, str] = {}
        parts: list[Orientations] = []
        normalised: list[np.ndarray] = []
        resampled: list[np.ndarray] = []
        try:
            for start in range(0, len(flat), SCAN_CHUNK):
                with self._timed(labels, "preprocess"):
                    batch = encode_patterns(list(flat[start : start + SCAN_CHUNK]), centres[start : start + SCAN_CHUNK])
                for k, result in enumerate(batch.results):
                    if result["error"]:
                        errors[start + k] = result["error"]
                if not batch.rows:
                    continue
                indexed[np.asarray(batch.rows) + start] = True
                with self._timed(labels, "predict"):
                    outputs = self.predict(PreparedEbsd(batch, geometry), model)
                parts.append(Orientations.from_network(outputs))
                if refine:
                    normalised.append(batch.patterns)
                    resampled.append(batch.resampled)
            orientations = _concatenate(parts)
            if refine and len(orientations.quaternion):
                whole = EbsdBatch(results=[], rows=list(range(int(indexed.sum()))), resampled=np.concatenate(resampled),
                                  patterns=np.concatenate(normalised), pc=centres[indexed])  # fmt: skip
                with self._timed(labels, "refine"):
                    orientations = refine_batch(whole, orientations, model, static_background)
        except Exception:
            REQUESTS.labels(**labels, outcome="error").inc()
            raise
        REQUESTS.labels(**labels, outcome="ok").inc()
        ITEMS.labels(**labels, outcome="ok").inc(int(indexed.sum()))
        ITEMS.labels(**labels, outcome="error").inc(len(errors))
        return model, ScanOrientations(rows, cols, indexed, orientations, errors, centres)


def _concatenate(parts: list[Orientations]) -> Orientations:
    if not parts:
        empty = np.zeros(0)
        return Orientations(np.zeros((0, 4)), np.zeros((0, 3)), empty, empty)
    joined = Orientations(*(np.concatenate([getattr(p, name) for p in parts])
                            for name in ("quaternion", "euler_bunge_rad", "expected_error_deg", "confidence")))  # fmt: skip
    if all(p.candidates is not None for p in parts):
        joined.candidates = np.concatenate([p.candidates for p in parts])  # type: ignore[misc]
    return joined


# -- refinement (kikuchipy, imported on first use) ------------------------------------------------------------------

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
    patterns), and the best-scoring one is refined to the end (:func:`matserve.models.ebsd_matching.refine`;
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
