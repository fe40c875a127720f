"""Master-pattern matching for the EBSD indexer: pattern projection, a compressed dictionary and fast refinement.

Everything here compares a measured pattern with patterns projected from the dynamical Ni master pattern that
ships inside the kikuchipy wheel (square Lambert, both hemispheres, 20 kV). Projection follows kikuchipy's
``EBSDMasterPattern.get_patterns`` exactly (same direction cosines, quaternion rotation, Lambert mapping and
bilinear interpolation; a test compares the two), but is written here as small numba kernels so that:

* :func:`refine` polishes many orientations per second: a Levenberg-Marquardt search over a small rotation
  (3 parameters, finite-difference Jacobian of the standardised simulated pattern) that maximises the
  normalised cross-correlation (NCC) between a pattern and the simulation at the pattern's own PC;
* :class:`CompressedDictionary` indexes coarsely by matching patterns against a dictionary of simulations on a
  grid of the m-3m fundamental zone, compared in the space of the dictionary's leading principal components
  (cosine similarity there approximates the NCC of the full patterns).

Modules: :mod:`~matserve.matching.projection` (geometry, warps, projection, the prepared form),
:mod:`~matserve.matching.refinement` (:func:`refine`), :mod:`~matserve.matching.dictionary`
(:class:`CompressedDictionary`). Numeric kernels only: no model, registry or HTTP code; the served model's use of
them (the bundled Ni master pattern, run-time dictionaries) is :mod:`matserve.models.ebsd_refinement`.

Conventions: orix quaternions ``(a, b, c, d)`` rotating the sample frame into the crystal frame (as kikuchipy's
crystal maps); PCs in the Bruker convention; sample tilt 70 deg, detector tilt 0 deg unless given; angles in
radians unless a name ends in ``_deg``.
"""

from __future__ import annotations

from matserve.matching.dictionary import BUILD_CHUNK, SEARCH_CHUNK, CompressedDictionary, fundamental_zone_grid
from matserve.matching.projection import (
    MATCHING_BACKGROUND_SIGMA_PX,
    MasterPattern,
    direction_cosines,
    gnomonic_bounds,
    prepare_for_matching,
    sample_to_detector_matrix,
    warp_to_pc,
)
from matserve.matching.refinement import (
    CONVERGED_STEP_RAD,
    JACOBIAN_STEP_RAD,
    SCREEN_BINNING,
    SCREEN_ITERATIONS,
    refine,
)

__all__ = [
    "BUILD_CHUNK",
    "CONVERGED_STEP_RAD",
    "JACOBIAN_STEP_RAD",
    "MATCHING_BACKGROUND_SIGMA_PX",
    "SCREEN_BINNING",
    "SCREEN_ITERATIONS",
    "SEARCH_CHUNK",
    "CompressedDictionary",
    "MasterPattern",
    "direction_cosines",
    "fundamental_zone_grid",
    "gnomonic_bounds",
    "prepare_for_matching",
    "refine",
    "sample_to_detector_matrix",
    "warp_to_pc",
]
