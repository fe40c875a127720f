"""Detectors whose active area is a disc: CCDs behind a round taper or image plate (MarCCD, Rayonix, MAR345).

Such a detector writes a square image whose corners, outside the round active area, are exactly 0. Left as they
are, those zeros are valid-looking pixels, and the edge of the disc is a sharp circular step in intensity that the
sorter reads as a ring (a lab GISAXS series on a MarCCD was called WAXS for that). :func:`inactive_disc_mask`
recognises the case and masks the outside of the disc, so the network sees it as the edge of the detector.

Recognised only when the image is square (at least :data:`MIN_SIDE_PX` pixels), its four corner pixels are 0, and
*every* pixel beyond the inscribed circle (radius ``side / 2`` plus :data:`EDGE_PX`) is exactly 0: a real
scattering image with counts in its corners is never touched, and the check costs four reads for other images.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE_PX = 256
EDGE_PX = 2
"""Pixels beyond the inscribed circle that must all be 0 (the disc's rim may be a pixel or two off-centre)."""
RIM_PX = 3
"""The mask reaches this many pixels inside the inscribed circle, where the taper's rim is dim but not 0."""


def inactive_disc_mask(image: np.ndarray) -> np.ndarray | None:
    """The outside of a round active area (uint8, 1 = inactive), or ``None`` when the image is not that case.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` detector image in its own dtype.
    """
    rows, cols = image.shape
    if rows != cols or rows < MIN_SIDE_PX:
        return None
    if image[0, 0] != 0 or image[0, -1] != 0 or image[-1, 0] != 0 or image[-1, -1] != 0:
        return None
    centre = (rows - 1) / 2.0
    axis = (np.arange(rows, dtype=np.float32) - centre) ** 2
    radius_squared = axis[:, None] + axis[None, :]
    outside = radius_squared > (rows / 2.0 + EDGE_PX) ** 2
    if np.any(image[outside] != 0):
        return None
    return (radius_squared > (rows / 2.0 - RIM_PX) ** 2).astype(np.uint8)
