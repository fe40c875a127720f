"""EBSD indexer: Kikuchi patterns in, crystal orientations (m-3m, nickel) out.

Patterns are checked and area-resampled to 60x60 by :mod:`matserve.codecs.ebsd` (the function the training
simulator uses). Two kinds of registry versions, told apart by the card's ``orientation_decoding.method``:

* **dictionary** (2.0.0, active): each resampled pattern is first warped from its PC onto the detector as seen
  from the nominal PC (:func:`matserve.matching.warp_to_pc`, exact geometry); the graph removes its
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

``refine=True`` (:meth:`EbsdIndexerModel.index`, :class:`EbsdOptions`) then refines each orientation against the
Ni master pattern shipped in the kikuchipy wheel (20 kV, the pattern's own PC;
:func:`matserve.models.ebsd_refinement.refine_orientations`): it starts from a
dictionary version's candidates (a network version: from the CNN's orientation and the best matches in the same
dictionary, built at run time, ~40 s), runs Levenberg-Marquardt on the normalised cross-correlation from each
(:mod:`matserve.matching`), and answers the best, with ``refined: true``, the NCC
``refinement_score`` and ``refinement_change_deg`` (disorientation between the fast path's and the refined
orientation: large when another start won). kikuchipy and orix are imported on first use of refinement, scans or
IPF maps (a few seconds; ~40 s more with the refinement kernels' first compilation), or at start-up with
``MATSERVE_EBSD_PRELOAD``; the fast path needs neither.

Every call goes through :meth:`~matserve.models.base.ServedModel.__call__` (``index`` with :class:`EbsdOptions`;
``index_scan`` through its helpers, chunk by chunk). Not cached: patterns never repeat byte for byte, and hashing
3,600+ intensities costs about what the network does per pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from matserve.codecs.ebsd import (
    EbsdBatch,
    EbsdPatternInput,
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
from matserve.matching import warp_to_pc
from matserve.models.base import Prediction, ServedModel

# Re-exported: the refinement's helpers and constants lived here before models/ebsd_refinement.py.
from matserve.models.ebsd_refinement import MIN_STATIC_BACKGROUND_PATTERNS as MIN_STATIC_BACKGROUND_PATTERNS
from matserve.models.ebsd_refinement import REFINE_CANDIDATES as REFINE_CANDIDATES
from matserve.models.ebsd_refinement import REFINE_DICTIONARY_COMPONENTS as REFINE_DICTIONARY_COMPONENTS
from matserve.models.ebsd_refinement import REFINE_DICTIONARY_RESOLUTION_DEG as REFINE_DICTIONARY_RESOLUTION_DEG
from matserve.models.ebsd_refinement import check_refine_size as check_refine_size
from matserve.models.ebsd_refinement import master_pattern as master_pattern
from matserve.models.ebsd_refinement import matcher as matcher
from matserve.models.ebsd_refinement import refine_batch
from matserve.models.ebsd_refinement import refine_orientations as refine_orientations
from matserve.models.ebsd_refinement import warm_up as warm_up
from matserve.registry import ModelVersion

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


@dataclass(frozen=True)
class EbsdOptions:
    """Per-call options of :class:`EbsdIndexerModel` (:meth:`~EbsdIndexerModel.index`).

    With options, a call's items are decoded patterns (2-D arrays, or the reason an item was refused while
    decoding) rather than batch-job objects, and their PCs come from here.

    Attributes
    ----------
    pc : array-like, optional
        ``[PCx, PCy, PCz]`` for all patterns or ``(n, 3)``, Bruker convention (fractions of detector width, height,
        width); default the card's nominal PC. Checked against the trained range.
    refine : bool
        Refine each orientation against the master pattern
        (:func:`~matserve.models.ebsd_refinement.refine_orientations`), timed as the stage ``refine``.
    static_background : bool
        With ``refine``: subtract the mean of the request's patterns before the refinement's background removal.
    """

    pc: object = None
    refine: bool = False
    static_background: bool = False


@dataclass
class PreparedEbsd:
    """Encoded patterns of a request, the geometry of the version that indexes them, and that version."""

    batch: EbsdBatch
    geometry: Geometry
    model: ModelVersion


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


class EbsdIndexerModel(ServedModel[PreparedEbsd, EbsdOptions]):
    """Orientation regressor served from ``models/ebsd_indexer/<version>`` (trained geometry and phase in the card).

    Batch jobs and :meth:`__call__` without options take :class:`~matserve.codecs.ebsd.EbsdPatternInput` items;
    with :class:`EbsdOptions`, decoded arrays. The HTTP API uses :meth:`index` (that call: decoded arrays, optional
    refinement) and :meth:`index_scan` (a whole scan, chunk by chunk).
    """

    name = "ebsd_indexer"
    item_type = EbsdPatternInput

    def geometry(self, version: str | None = None) -> Geometry:
        """The detector geometry a version was trained for."""
        return Geometry.from_card(self.card(version))

    # -- the lifecycle (__call__: batch jobs without options, index with EbsdOptions) ------------------------------

    def preprocess(self, items: list[Any], model: ModelVersion, options: EbsdOptions | None = None) -> PreparedEbsd:
        """Check, resample and normalise the patterns: batch-job :class:`~matserve.codecs.ebsd.EbsdPatternInput`
        items without options (each with its own PC), decoded patterns with the PCs of ``options``.

        Raises
        ------
        EbsdInputError
            ``options.pc`` has the wrong shape or is outside the trained range.
        """
        geometry = Geometry.from_card(model.card)
        if options is None:
            batch = encode_batch(items, geometry)
        else:
            batch = encode_patterns(items, geometry.projection_centres(options.pc, len(items)))
        return self._prepared(batch, geometry, model)

    def predict(self, prepared: PreparedEbsd, model: ModelVersion) -> dict[str, np.ndarray]:
        """Run the version's graph and decode each pattern's orientation for its PC: ``quaternion`` and
        ``expected_error_deg``, plus ``candidates`` ``(m, k, 4)`` for a dictionary version.

        * dictionary versions (card ``orientation_decoding.method == "dictionary"``): the resampled patterns,
          warped from their PCs to the nominal one (:func:`matserve.matching.warp_to_pc`), go through
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

    def postprocess(
        self, prepared: PreparedEbsd, outputs: dict[str, np.ndarray], options: EbsdOptions | None = None
    ) -> list[dict[str, Any]]:
        """Orientations into the results; refined first (the stage ``refine``) with ``options.refine``.

        Raises
        ------
        EbsdInputError
            Refinement options that cannot be used (:func:`~matserve.models.ebsd_refinement.refine_batch`).
        """
        batch = prepared.batch
        if batch.rows:
            orientations = Orientations.from_network(outputs)
            if options is not None and options.refine:
                with self._timed(self._labels(prepared.model), "refine"):
                    orientations = refine_batch(batch, orientations, prepared.model, options.static_background)
            orientations.fill(batch.results, batch.rows)
        return batch.results

    @staticmethod
    def _prepared(batch: EbsdBatch, geometry: Geometry, model: ModelVersion) -> PreparedEbsd:
        for result in batch.results:
            for key, value in EMPTY_RESULT.items():
                result.setdefault(key, value)
        return PreparedEbsd(batch, geometry, model)

    # -- the HTTP API's entry points: thin wrappers of __call__ and its helpers ------------------------------------

    def index(
        self,
        patterns: list[np.ndarray | str],
        *,
        pc: object = None,
        version: str | None = None,
        refine: bool = False,
        static_background: bool = False,
    ) -> Prediction:
        """Index decoded patterns (one result per pattern, refused ones with ``error``), optionally refined.

        ``self(patterns, version, options=EbsdOptions(pc, refine, static_background))``: timed, counted, never
        cached.

        Parameters
        ----------
        patterns : list of numpy.ndarray or str
            2-D detector images (or the reason an item was refused while decoding).
        pc : array-like, optional
            ``[PCx, PCy, PCz]`` for all patterns or ``(n, 3)``; default the card's nominal PC.
        version : str, optional
            Registry version (default the active one).
        refine : bool
            Refine each orientation against the master pattern (see
            :func:`~matserve.models.ebsd_refinement.refine_orientations`).
        static_background : bool
            With ``refine``: subtract the mean of the request's patterns (an estimate of the camera's static
            background) before the refinement's background removal; needs at least
            :data:`~matserve.models.ebsd_refinement.MIN_STATIC_BACKGROUND_PATTERNS` patterns. The network's input
            is never changed.

        Raises
        ------
        EbsdInputError
            A PC outside the trained range, or refinement options that cannot be used.
        """
        options = EbsdOptions(pc=pc, refine=bool(refine), static_background=bool(static_background))
        return self(list(patterns), version, options=options)

    def index_scan(
        self,
        scan: np.ndarray,
        *,
        pc: object = None,
        version: str | None = None,
        refine: bool = False,
        static_background: bool = False,
    ) -> tuple[ModelVersion, ScanOrientations]:
        """Index a scan ``(rows, cols, h, w)`` pixel by pixel, :data:`SCAN_CHUNK` patterns at a time.

        Each chunk runs the lifecycle's :meth:`preprocess` and :meth:`predict` (with :class:`EbsdOptions` for its
        PCs), timed and counted as one request by the helpers :meth:`__call__` uses; no result dicts are built
        (the orientations stay arrays), and nothing is cached.

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
        labels = self._labels(model)
        indexed = np.zeros(len(flat), dtype=bool)
        errors: dict[int, str] = {}
        parts: list[Orientations] = []
        normalised: list[np.ndarray] = []
        resampled: list[np.ndarray] = []
        with self._request(labels) as tally:
            for start in range(0, len(flat), SCAN_CHUNK):
                chunk = slice(start, start + SCAN_CHUNK)
                with self._timed(labels, "preprocess"):
                    prepared = self.preprocess(list(flat[chunk]), model, EbsdOptions(pc=centres[chunk]))
                batch = prepared.batch
                for k, result in enumerate(batch.results):
                    if result["error"]:
                        errors[start + k] = result["error"]
                if not batch.rows:
                    continue
                indexed[np.asarray(batch.rows) + start] = True
                with self._timed(labels, "predict"):
                    outputs = self.predict(prepared, model)
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
            tally.ok += int(indexed.sum())
            tally.failed += len(errors)
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
