"""Round active areas (MarCCD/Rayonix): the zero corners are masked only when they are exactly that case."""

from __future__ import annotations

import numpy as np

from matserve.codecs.active_area import inactive_disc_mask


def _ccd(side: int = 512, counts: int = 50) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.poisson(counts, (side, side)).astype(np.uint16) + 1
    axis = (np.arange(side) - (side - 1) / 2) ** 2
    image[axis[:, None] + axis[None, :] > (side / 2) ** 2] = 0
    return image


def test_the_outside_of_the_disc_is_masked_and_the_inside_kept() -> None:
    image = _ccd()
    mask = inactive_disc_mask(image)
    assert mask is not None and mask.dtype == np.uint8 and mask.shape == image.shape
    assert mask[0, 0] == 1 and mask[256, 0] == 1  # a corner and the rim
    assert mask[256, 256] == 0 and mask[256, 20] == 0
    assert np.all(image[mask == 0] > 0)


def test_images_with_counts_outside_the_disc_or_not_square_are_left_alone() -> None:
    image = _ccd()
    image[3, 40] = 7  # one count in the corner region: not an inactive area
    assert inactive_disc_mask(image) is None
    assert inactive_disc_mask(_ccd()[:, :500]) is None
    assert inactive_disc_mask(np.zeros((100, 100), np.uint16)) is None  # too small to be a CCD
    full = np.ones((512, 512), np.int32)
    assert inactive_disc_mask(full) is None
