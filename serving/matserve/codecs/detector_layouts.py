"""Known detectors' module layouts: their image shapes, the module gaps, and masks for gaps written as zeros.

Hybrid pixel detectors are tiled from modules with inactive gaps between them. The detectors write the gaps as
invalid values (Pilatus -1, Eiger the unsigned maximum), which :func:`matserve.codecs.scattering.invalid_pixels`
masks; but a file converted by other software (MATLAB, ImageJ...) often has them as 0, which would be read as
valid pixels with no counts. :func:`zero_gap_mask` masks the gaps when the image has a known detector's shape
(either orientation) and every pixel of its gap rows and columns is exactly 0; images of other shapes are never
masked this way.

Layouts are computed from the module size and gaps (rows x cols):

* Pilatus: modules of 195 x 487 pixels, gaps of 17 rows and 7 columns: 100k (1 x 1 modules, 195 x 487), 200k
  (2 x 1, 407 x 487), 300k (3 x 1, 619 x 487), 300k-W (1 x 3, 195 x 1475), 900k-W (3 x 3, 619 x 1475), 1M
  (5 x 2, 1043 x 981), 2M (8 x 3, 1679 x 1475), 6M (12 x 5, 2527 x 2463);
* Eiger and Eiger2: modules of 514 x 1030 pixels, gaps of 37 rows and 10 columns: 500k (1 x 1, 514 x 1030), 1M
  (2 x 1, 1065 x 1030), 4M (4 x 2, 2167 x 2070), 9M (6 x 3, 3269 x 3110), 16M (8 x 4, 4371 x 4150);
* MarCCD/Rayonix (no gaps): 2048 x 2048 and 4096 x 4096.

Each layout also names the dtypes the detector writes, for :mod:`matserve.codecs.raw_frames` (headerless files
recognised by their byte count).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Layout:
    """One detector's pixel layout.

    Attributes
    ----------
    name : str
        E.g. ``"Pilatus 1M"``.
    modules : tuple of int
        Modules along ``(rows, cols)``.
    module : tuple of int
        One module's ``(rows, cols)``, pixels.
    gap : tuple of int
        Inactive ``(rows, cols)`` between neighbouring modules, pixels.
    dtypes : tuple of str
        The dtypes the detector writes (little-endian), for headerless raw files.
    """

    name: str
    modules: tuple[int, int]
    module: tuple[int, int]
    gap: tuple[int, int]
    dtypes: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the full image, pixels."""
        return (self.modules[0] * self.module[0] + (self.modules[0] - 1) * self.gap[0],
                self.modules[1] * self.module[1] + (self.modules[1] - 1) * self.gap[1])  # fmt: skip

    def gap_bands(self) -> tuple[list[slice], list[slice]]:
        """Slices of the gap rows and of the gap columns."""
        bands = []
        for axis in (0, 1):
            step = self.module[axis] + self.gap[axis]
            bands.append([slice(k * step - self.gap[axis], k * step) for k in range(1, self.modules[axis])])
        return bands[0], bands[1]


_PILATUS = ((195, 487), (17, 7), ("int32",))
_EIGER = ((514, 1030), (37, 10), ("uint16", "uint32"))
LAYOUTS: tuple[Layout, ...] = (
    *(Layout(f"Pilatus {name}", modules, *_PILATUS)
      for name, modules in (("100k", (1, 1)), ("200k", (2, 1)), ("300k", (3, 1)), ("300k-W", (1, 3)),
                            ("900k-W", (3, 3)), ("1M", (5, 2)), ("2M", (8, 3)), ("6M", (12, 5)))),
    *(Layout(f"Eiger {name}", modules, *_EIGER)
      for name, modules in (("500k", (1, 1)), ("1M", (2, 1)), ("4M", (4, 2)), ("9M", (6, 3)), ("16M", (8, 4)))),
    Layout("MarCCD/Rayonix 2048", (1, 1), (2048, 2048), (0, 0), ("uint16",)),
    Layout("MarCCD/Rayonix 4096", (1, 1), (4096, 4096), (0, 0), ("uint16",)),
)  # fmt: skip
"""Every known layout (Eiger2 shares the Eiger layouts)."""


_BY_SHAPE = {
    **{layout.shape[::-1]: (layout, True) for layout in LAYOUTS},
    **{layout.shape: (layout, False) for layout in LAYOUTS},
}


def layout_of(shape: tuple[int, ...]) -> tuple[Layout, bool] | None:
    """``(layout, transposed)`` of a known detector with this ``(rows, cols)`` shape (either orientation)."""
    return _BY_SHAPE.get(tuple(shape))


@cache
def _bands(layout: Layout) -> tuple[list[slice], list[slice]]:
    return layout.gap_bands()


@cache
def _gap_mask(layout: Layout, transposed: bool) -> np.ndarray:
    """Boolean mask of the layout's gap pixels (read-only, cached)."""
    mask = np.zeros(layout.shape, dtype=bool)
    rows, cols = layout.gap_bands()
    for band in rows:
        mask[band, :] = True
    for band in cols:
        mask[:, band] = True
    mask = np.ascontiguousarray(mask.T) if transposed else mask
    mask.setflags(write=False)
    return mask


def zero_gap_mask(image: np.ndarray) -> np.ndarray | None:
    """The module-gap mask (True = gap) of an image of a known detector's shape whose gaps are all exactly 0, else
    ``None`` (no gaps, another shape, or a gap pixel that is not 0)."""
    if image.ndim != 2:
        return None
    known = layout_of(image.shape)
    if known is None:
        return None
    layout, transposed = known
    rows, cols = _bands(layout)
    if not rows and not cols:
        return None
    if transposed:
        rows, cols = cols, rows
    if any(image[band.start, 0] for band in rows) or any(image[0, band.start] for band in cols):
        return None  # the usual case (-1 or the unsigned maximum in the gaps), told from one pixel per band
    for band in rows:
        if image[band, :].any():
            return None
    for band in cols:
        if image[:, band].any():
            return None
    return _gap_mask(layout, transposed)
