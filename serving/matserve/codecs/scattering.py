"""Scattering codec: a 2D detector image of any shape and dtype -> the sorter's fixed, masked, log-scaled input.

Shared by the training simulator and the service, so the network sees real images exactly as it saw the
simulated ones. One image (``rows x cols``, any integer or float dtype) becomes a float32
``(128, 128, 2)`` array:

1. **Invalid pixels** are found from the data and an optional mask (True = bad), as detectors write them:

   * signed integers: negative values (Pilatus/CBF write -1 in module gaps, -2 for bad pixels);
   * unsigned integers of 16 bits or more: the dtype's maximum (Eiger/Dectris write 2**16-1 or 2**32-1 in gaps
     and dead pixels; a genuinely saturated pixel is masked too, which is what reduction software does); 8-bit
     images (converted PNG/TIFF) have no invalid value;
   * floats: NaN and +-inf; negative values (dark-subtracted noise) are kept and clipped to 0 counts.

2. **Hot pixels and saturated spots are clipped** at the 99.9th percentile of the valid pixels (estimated on
   every 7th row and column), so an isolated hot pixel cannot look like a Bragg peak after binning.

3. **Binned to fit 128 x 128, keeping the aspect ratio**: the integer factor ``f = ceil(max(rows, cols) / 128)``
   (a Pilatus 1M, 1043 x 981, is binned 9 x 9 into 116 x 109); each block's value is the mean of its valid
   pixels (OpenCV area resampling of the counts and of the valid mask). Blocks with less than half their
   pixels valid are masked. The binned image is centred in the 128 x 128 frame; the frame outside it is
   masked. Images smaller than 64 on their long side are upsampled by the integer factor that fits (pixel
   repetition). The frame's long side is therefore filled to within one factor's rounding (a Pilatus 2M,
   1679 rows binned 14 x 14, fills 120 of 128 rows); where the image sits is :attr:`EncodedImage.placement`.

4. **Log-scaled and normalised per image**: ``v = log1p(mean counts)``, then ``(v - p1) / (p99.8 - p1)`` over the
   valid blocks, clipped to [0, 1]: exposure time, flux and detector gain drop out.

Channel 0 is that intensity (0 where masked); channel 1 the valid fraction of each block, to 1/255 (0 outside
the detector, in gaps and under the beamstop's mask, 1 in full blocks). An image with fewer than
:data:`MIN_VALID_PIXELS` valid pixels, or with all valid pixels equal (empty, constant), is refused with
:class:`ImageError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

INPUT_SIDE_PX = 128
"""Side of the network's square input, pixels."""
N_CHANNELS = 2
MIN_SIDE_PX = 32
"""Smallest accepted detector side, pixels (the smallest real detector here, a Pilatus 100k, is 195 x 487)."""
MAX_SIDE_PX = 4500
"""Largest accepted detector side, pixels (an Eiger2 16M is 4371 x 4150)."""
MIN_VALID_PIXELS = 1024
CLIP_PERCENTILE = 99.9
NORM_PERCENTILES = (1.0, 99.8)
MIN_BLOCK_VALID_FRACTION = 0.5
CONSTANT_MESSAGE = (
    "the image is constant (all valid pixels have the same value, e.g. empty or all zero); "
    "a detector image with scattered intensity is expected"
)
ACCEPTED_DTYPES = "integer (int8-int64, uint8-uint64), float16/32/64 or bool"


class ImageError(ValueError):
    """An image that cannot be sorted, with the reason and what is accepted."""


@dataclass(frozen=True)
class EncodedImage:
    """One image as the network sees it.

    Attributes
    ----------
    tensor : numpy.ndarray
        float32 ``(128, 128, 2)``: normalised log intensity and block valid fraction.
    bin_factor : int
        Detector pixels per input pixel along each axis (``< 0``: upsampled by ``-bin_factor``).
    valid_fraction : float
        Fraction of the detector's pixels that were valid.
    placement : tuple of int
        ``(top, left, height, width)``: where the detector lies in the 128 x 128 frame, input pixels.
    """

    tensor: np.ndarray
    bin_factor: int
    valid_fraction: float
    placement: tuple[int, int, int, int]


def _quantiles(values: np.ndarray, percentiles: tuple[float, ...]) -> list[float]:
    """Lower order statistics at ``percentiles`` of a 1D array (np.partition: faster than np.percentile)."""
    ranks = [int(p / 100.0 * (values.size - 1)) for p in percentiles]
    ordered = np.partition(values, ranks)
    return [float(ordered[rank]) for rank in ranks]


def invalid_pixels(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean map of the pixels a detector marks as invalid (see the module docstring), or'ed with ``mask``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` raw detector counts, any numeric dtype.
    mask : numpy.ndarray, optional
        ``(rows, cols)``; nonzero = bad pixel (the NeXus ``pixel_mask`` / pyFAI convention).
    """
    kind = image.dtype.kind
    if kind == "i":
        bad = image < 0
    elif kind == "u" and image.dtype.itemsize >= 2:
        bad = image == np.iinfo(image.dtype).max
    elif kind == "u":
        bad = np.zeros(image.shape, dtype=bool)
    elif kind == "f":
        bad = ~np.isfinite(image)
    elif kind == "b":
        bad = np.zeros(image.shape, dtype=bool)
    else:
        raise ImageError(f"image dtype {image.dtype} is not numeric; accepted: {ACCEPTED_DTYPES}")
    if mask is not None:
        if mask.shape != image.shape:
            raise ImageError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
        bad |= mask.astype(bool, copy=False)
    return bad


def as_image_array(value: object, what: str) -> np.ndarray:
    """A JSON-style nested list (or an array) as a numeric array, else :class:`ImageError` naming ``what``.

    Integers stay integers (negative integers are detector gaps); the shape is checked later.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = np.empty(0, dtype=object)
    if array.dtype == object or array.dtype.kind not in "uifb":
        raise ImageError(
            f"{what}: rows have different lengths or are not numbers; send a rectangular 2D array of counts"
        )
    return array


def check_shape(shape: tuple[int, ...]) -> None:
    """Refuse anything but a 2D image of :data:`MIN_SIDE_PX` to :data:`MAX_SIDE_PX` pixels a side."""
    if len(shape) != 2:
        raise ImageError(
            f"expected one 2D detector image (rows x cols), got a {len(shape)}D array of shape {tuple(shape)}; "
            "send stacks as separate images or as a multi-frame file (TIFF, EDF, HDF5)"
        )
    if min(shape) < MIN_SIDE_PX or max(shape) > MAX_SIDE_PX:
        raise ImageError(
            f"image of {shape[0]} x {shape[1]} pixels is outside the accepted size: each side "
            f"{MIN_SIDE_PX}-{MAX_SIDE_PX} pixels (Pilatus 100k 195 x 487 up to Eiger2 16M)"
        )


def bin_factor(shape: tuple[int, int]) -> int:
    """Integer binning factor of a detector shape (``< 0``: upsampling by ``-factor``)."""
    longest = max(shape)
    if longest >= INPUT_SIDE_PX:
        return math.ceil(longest / INPUT_SIDE_PX)
    return -(INPUT_SIDE_PX // longest)


def encode_image(image: np.ndarray, mask: np.ndarray | None = None) -> EncodedImage:
    """One detector image -> the network input (see the module docstring for every step).

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` detector counts, any numeric dtype.
    mask : numpy.ndarray, optional
        ``(rows, cols)`` nonzero = bad pixel, or'ed with the invalid values found in the data.

    Returns
    -------
    EncodedImage

    Raises
    ------
    ImageError
        Not 2D, out of the size range, not numeric, too few valid pixels, or constant.
    """
    image = np.asarray(image)
    check_shape(image.shape)
    bad = invalid_pixels(image, mask)
    rows, cols = image.shape
    factor = bin_factor((rows, cols))
    step = max(factor, 1)
    out_rows, out_cols = -(-rows // step), -(-cols // step)
    # Counts and validity (0 or 255) on a canvas padded to whole blocks (the padding is invalid).
    counts = np.empty((out_rows * step, out_cols * step), dtype=np.float32)
    valid = np.empty(counts.shape, dtype=np.uint8)
    counts[:rows, :cols] = image
    np.logical_not(bad, out=valid[:rows, :cols].view(bool))
    counts[rows:], counts[:rows, cols:], valid[rows:], valid[:rows, cols:] = 0.0, 0.0, 0, 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid < MIN_VALID_PIXELS:
        raise ImageError(
            f"only {n_valid} valid pixels (gaps, masked, negative or saturated values excluded); "
            f"at least {MIN_VALID_PIXELS} are needed"
        )
    if image.dtype.kind in "uf" or mask is not None:  # invalid pixels that may hold positive values or NaN
        np.copyto(counts[:rows, :cols], 0.0, where=bad)
    sample = np.ascontiguousarray(counts[:rows:7, :cols:7])[np.ascontiguousarray(valid[:rows:7, :cols:7]) > 0]
    if sample.size < 16:
        sample = counts[valid > 0]
    (ceiling,) = _quantiles(sample, (CLIP_PERCENTILE,))
    if float(sample.min()) == ceiling:  # most pixels share one value: is every valid pixel the same?
        values = counts[:rows, :cols][~bad]
        if float(values.min()) == float(values.max()):
            raise ImageError(CONSTANT_MESSAGE)
    # Clip to [0, ceiling] (OpenCV's SIMD thresholds); negative values, i.e. signed-integer gaps, become 0.
    cv2.threshold(counts, max(ceiling, 0.0), 0.0, cv2.THRESH_TRUNC, dst=counts)
    cv2.threshold(counts, 0.0, 0.0, cv2.THRESH_TOZERO, dst=counts)
    valid *= 255
    if factor > 1:  # block means: the valid pixels' counts sum / n, and the valid fraction (to 1/255)
        size = (out_cols, out_rows)
        summed = cv2.resize(counts, size, interpolation=cv2.INTER_AREA)
        fraction = cv2.resize(valid, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    else:
        summed, fraction = counts, valid.astype(np.float32) / 255.0
        if factor < -1:
            summed = np.repeat(np.repeat(summed, -factor, axis=0), -factor, axis=1)
            fraction = np.repeat(np.repeat(fraction, -factor, axis=0), -factor, axis=1)
    good = fraction >= MIN_BLOCK_VALID_FRACTION
    mean_counts = np.divide(summed, fraction, out=np.zeros_like(summed), where=good)
    log_counts = np.log1p(mean_counts)
    values = log_counts[good]
    lo, hi = _quantiles(values, NORM_PERCENTILES) if values.size else (0.0, 0.0)
    if not hi > lo:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not hi > lo:
        raise ImageError(CONSTANT_MESSAGE)
    scaled = np.clip((log_counts - lo) / (hi - lo), 0.0, 1.0)
    scaled[~good] = 0.0
    tensor = np.zeros((INPUT_SIDE_PX, INPUT_SIDE_PX, N_CHANNELS), dtype=np.float32)
    height, width = scaled.shape
    top, left = (INPUT_SIDE_PX - height) // 2, (INPUT_SIDE_PX - width) // 2
    tensor[top : top + height, left : left + width, 0] = scaled
    tensor[top : top + height, left : left + width, 1] = np.where(good, fraction, 0.0)
    return EncodedImage(tensor, factor, n_valid / float(rows * cols), (top, left, height, width))


def encode_images(images: list[np.ndarray], masks: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Encode several images into one ``(n, 128, 128, 2)`` float32 batch (errors propagate)."""
    masks = masks or [None] * len(images)
    return np.stack([encode_image(image, mask).tensor for image, mask in zip(images, masks, strict=True)])
