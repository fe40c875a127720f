"""Dictionary indexing: patterns matched against simulations on a grid of the m-3m fundamental zone.

:class:`CompressedDictionary` keeps the simulations as their leading principal components; a pattern's cosine
similarity with them there approximates the normalised cross-correlation of the full patterns.

Conventions: orix quaternions ``(a, b, c, d)``, sample -> crystal; PCs in the Bruker convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matserve.matching.projection import MasterPattern, direction_cosines, prepare_for_matching

#: Patterns compared with the whole dictionary at a time (bounds the similarity matrix to ~60 MB).
SEARCH_CHUNK = 512
#: Dictionary patterns simulated and prepared at a time while building a :class:`CompressedDictionary`.
BUILD_CHUNK = 4096


def fundamental_zone_grid(resolution_deg: float) -> np.ndarray:
    """Orientations ``(n, 4)`` on orix's cubochoric grid of the m-3m fundamental zone at ``resolution_deg``."""
    from orix.quaternion import symmetry
    from orix.sampling import get_sample_fundamental

    rotations = get_sample_fundamental(resolution=resolution_deg, point_group=symmetry.Oh, method="cubochoric")
    return np.asarray(rotations.data, dtype=np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class CompressedDictionary:
    """A dictionary of simulated patterns kept as their leading principal components.

    Attributes
    ----------
    quaternions : numpy.ndarray
        ``(n, 4)`` the dictionary's orientations.
    mean : numpy.ndarray
        ``(h*w,)`` mean of the prepared dictionary patterns.
    basis : numpy.ndarray
        ``(h*w, k)`` orthonormal principal axes.
    coefficients : numpy.ndarray
        ``(n, k)`` each dictionary pattern's coordinates, scaled to unit norm.
    """

    quaternions: np.ndarray
    mean: np.ndarray
    basis: np.ndarray
    coefficients: np.ndarray

    @classmethod
    def build(cls, master: MasterPattern, pc: np.ndarray, resolution_deg: float, components: int,
              shape: tuple[int, int] = (60, 60)) -> CompressedDictionary:  # fmt: skip
        """Simulate the grid at one PC, prepare like measured patterns, keep ``components`` principal axes."""
        quaternions = fundamental_zone_grid(resolution_deg)
        chunks = [
            (start, quaternions[start : start + BUILD_CHUNK]) for start in range(0, len(quaternions), BUILD_CHUNK)
        ]

        directions = direction_cosines(np.asarray(pc, dtype=np.float64).reshape(1, 3), shape)[0]

        def prepared(chunk: np.ndarray) -> np.ndarray:
            patterns = master.project_along(chunk, directions).reshape(len(chunk), *shape)
            return prepare_for_matching(patterns).astype(np.float32)

        # Two passes over the grid, simulating each chunk twice (~3 s each): the principal axes from the (h*w, h*w)
        # scatter matrix (float32 products, float64 sums), then each pattern's coordinates. Keeping the prepared
        # patterns between the passes would hold 440 MB; this way memory stays ~150 MB.
        pixels = shape[0] * shape[1]
        total, scatter = np.zeros(pixels), np.zeros((pixels, pixels))
        for _, chunk in chunks:
            block = prepared(chunk)
            total += block.sum(axis=0, dtype=np.float64)
            scatter += block.T @ block
        mean = total / len(quaternions)
        covariance = scatter / len(quaternions) - np.outer(mean, mean)
        _, vectors = np.linalg.eigh(covariance)
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :components], dtype=np.float32)
        mean = mean.astype(np.float32)
        coefficients = np.empty((len(quaternions), components), dtype=np.float32)
        for start, chunk in chunks:
            coefficients[start : start + len(chunk)] = (prepared(chunk) - mean) @ basis
        coefficients /= np.linalg.norm(coefficients, axis=1, keepdims=True)
        return cls(quaternions, mean, basis, coefficients)

    def candidates(self, prepared: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` best-matching dictionary orientations ``(m, count, 4)`` and their similarities ``(m, count)``
        (cosine in the principal-component space), best first; ``prepared`` from :func:`prepare_for_matching`."""
        found = [self._candidates(prepared[start : start + SEARCH_CHUNK], count)
                 for start in range(0, len(prepared), SEARCH_CHUNK)]  # fmt: skip
        return np.concatenate([q for q, _ in found]), np.concatenate([s for _, s in found])

    def _candidates(self, prepared: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        projected = (prepared.astype(np.float32) - self.mean) @ self.basis
        projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        similarity = projected @ self.coefficients.T
        best = np.argpartition(-similarity, count - 1, axis=1)[:, :count]
        rows = np.arange(len(prepared))[:, None]
        order = np.argsort(-similarity[rows, best], axis=1)
        best = best[rows, order]
        return self.quaternions[best], similarity[rows, best]
