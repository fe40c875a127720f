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
   pixels. Steps 1-3 are one pass over the image (a numba kernel that releases the GIL, so the served model
   encodes a batch's images on several threads); only the clipping level is estimated first, from a sample.
   Blocks with less than half their pixels valid are masked. The binned image is centred in the 128 x 128 frame; the frame outside it is
   masked. Images smaller than 64 on their long side are upsampled by the integer factor that fits (pixel
   repetition). The frame's long side is therefore filled to within one factor's rounding (a Pilatus 2M,
   1679 rows binned 14 x 14, fills 120 of 128 rows); where the image sits is :attr:`EncodedImage.placement`.

4. **Log-scaled and normalised per image**: ``v = log1p(mean counts)``, then ``(v - p1) / (p99.8 - p1)`` over the
   valid blocks, clipped to [0, 1]: exposure time, flux and detector gain drop out.

Channel 0 is that intensity (0 where masked); channel 1 the valid fraction of each block, to 1/255 (0 outside
the detector, in gaps and under the beamstop's mask, 1 in full blocks). An image with fewer than
:data:`MIN_VALID_PIXELS` valid pixels, or with all valid pixels equal (empty, constant), is refused with
:class:`ImageError`.

5. **The setup, when known** (:class:`Setup`: sample-detector distance, wavelength, pixel size, from the file's
   header or the request). Step 4 removes the image's scale, so the network is also given the q span of the
   detector, ``q_span = 4 pi / lambda sin(atan(d / D) / 2)`` (1/Angstrom) with ``d`` the detector's diagonal and
   ``D`` the distance: the largest |q| the detector can see (with the beam at a corner), wherever the beam
   really is. :func:`setup_features` gives the network ``(log10 q_span, 1)``, or ``(0, 0)`` when any of the three
   is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from matserve.kernels import compiled

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


SETUP_FEATURES = 2
"""Width of :func:`setup_features`: log10 of the q span (1/Angstrom) and a flag that it is known."""
SETUP_LIMITS = {
    "distance_m": (0.01, 100.0),
    "wavelength_angstrom": (0.05, 20.0),
    "pixel_size_m": (1e-6, 2e-3),
}
"""Accepted range of each setup value (metres, Angstrom): 1 cm to 100 m; 0.05-20 Angstrom (0.6-250 keV);
1 um to 2 mm pixels."""


class ImageError(ValueError):
    """An image that cannot be sorted, with the reason and what is accepted."""


def setup_value_error(name: str, value: float, scale: float = 1.0, shown: str | None = None) -> str | None:
    """Why a setup value is refused (``None``: it is accepted): not finite, or outside :data:`SETUP_LIMITS`.

    Parameters
    ----------
    name : str
        A key of :data:`SETUP_LIMITS`.
    value : float
        The value in the caller's units, ``scale`` of them per unit of ``name`` (1e6 for micrometres of
        ``pixel_size_m``).
    shown : str, optional
        The name in the message (default ``name``).
    """
    low, high = (limit * scale for limit in SETUP_LIMITS[name])
    if math.isfinite(value) and low <= value <= high:
        return None
    return f"{shown or name} = {value} is outside the accepted range {low:g}-{high:g}"


@dataclass(frozen=True)
class Setup:
    """The measurement setup of a detector image, as far as it is known (``None``: unknown).

    Attributes
    ----------
    distance_m : float or None
        Sample-detector distance along the beam, metres.
    wavelength_angstrom : float or None
        X-ray wavelength, Angstrom (``12.398 / energy_kev``).
    pixel_size_m : float or None
        Detector pixel size, metres (square pixels; Pilatus 172e-6, Eiger 75e-6).
    source : str
        Where the values came from. Per value, ``name=where`` joined by ``"; "`` in :data:`SETUP_LIMITS` order, e.g.
        ``distance_m=header:NeXus /entry/instrument/detector/distance (mm, inferred); wavelength_angstrom=header:EDF
        WaveLength; pixel_size_m=request``; one word (``"request"``, ``"header"``) when every known value came from
        that one place (``""``: nowhere). See :meth:`sources` and :func:`format_sources`.
    """

    distance_m: float | None = None
    wavelength_angstrom: float | None = None
    pixel_size_m: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name in SETUP_LIMITS:
            value = getattr(self, name)
            if value is not None and (error := setup_value_error(name, value)):
                raise ImageError(error)

    @property
    def complete(self) -> bool:
        """Whether the distance, wavelength and pixel size are all known."""
        return None not in (self.distance_m, self.wavelength_angstrom, self.pixel_size_m)

    def sources(self) -> dict[str, str]:
        """Where each known value came from: ``{name: where}`` for the values that are not ``None``.

        A per-value :attr:`source` (``name=where; ...``) is split; a one-word source applies to every known value.
        """
        known = [name for name in SETUP_LIMITS if getattr(self, name) is not None]
        parsed: dict[str, str] = {}
        if "=" in self.source:
            for part in self.source.split("; "):
                name, sep, where = part.partition("=")
                if sep and name.strip() in SETUP_LIMITS:
                    parsed[name.strip()] = where.strip()
            return {name: parsed.get(name, "") for name in known}
        return {name: self.source for name in known}

    @classmethod
    def from_sources(cls, values: dict[str, tuple[float, str]]) -> Setup:
        """A setup of ``{name: (value, where)}`` (units of :data:`SETUP_LIMITS`), its :attr:`source` per value."""
        return cls(**{name: value for name, (value, _) in values.items()},
                   source=format_sources({name: where for name, (_, where) in values.items()}))  # fmt: skip

    def updated(self, other: Setup) -> Setup:
        """This setup with every value ``other`` knows replaced by ``other``'s (a request overrides a header); the
        :attr:`source` says per value where it came from."""
        mine, theirs = self.sources(), other.sources()
        values: dict[str, tuple[float, str]] = {}
        for name in SETUP_LIMITS:
            for setup, where in ((other, theirs), (self, mine)):
                value = getattr(setup, name)
                if value is not None:
                    values[name] = (value, where.get(name, ""))
                    break
        return Setup.from_sources(values)

    def q_span_inv_angstrom(self, shape: tuple[int, int]) -> float | None:
        """The detector's q span (see the module docstring), 1/Angstrom, or ``None`` if the setup is incomplete.

        Parameters
        ----------
        shape : tuple of int
            Detector ``(rows, cols)``, pixels of ``pixel_size_m``.
        """
        if not self.complete:
            return None
        diagonal_m = math.hypot(*shape) * self.pixel_size_m  # type: ignore[operator]
        return q_span_inv_angstrom(diagonal_m, self.distance_m, self.wavelength_angstrom)  # type: ignore[arg-type]


def format_sources(sources: dict[str, str]) -> str:
    """:attr:`Setup.source` of per-value sources ``{name: where}``: ``name=where`` joined by ``"; "`` (in
    :data:`SETUP_LIMITS` order), or the one word when every value came from one plain place (``"request"``)."""
    shown = {name: sources[name] for name in SETUP_LIMITS if name in sources}
    places = set(shown.values())
    if len(places) == 1 and not any(c in next(iter(places)) for c in ":=; "):
        return next(iter(places))
    return "; ".join(f"{name}={where}" for name, where in shown.items())


def q_span_inv_angstrom(diagonal_m: float, distance_m: float, wavelength_angstrom: float) -> float:
    """``4 pi / lambda sin(atan(diagonal / distance) / 2)``, 1/Angstrom: |q| at a detector's diagonal."""
    return 4.0 * math.pi / wavelength_angstrom * math.sin(0.5 * math.atan(diagonal_m / distance_m))


def setup_features(q_span: float | None) -> np.ndarray:
    """The network's ``setup`` input for one image: float32 ``(log10 q_span, 1)``, or ``(0, 0)`` if unknown."""
    if q_span is None:
        return np.zeros(SETUP_FEATURES, dtype=np.float32)
    return np.array([math.log10(q_span), 1.0], dtype=np.float32)


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
    rule = _invalid_rule(image.dtype)
    if rule == RULE_NEGATIVE:
        bad = image < 0
    elif rule == RULE_DTYPE_MAX:
        bad = image == np.iinfo(image.dtype).max
    elif rule == RULE_NOT_FINITE:
        bad = ~np.isfinite(image)
    else:
        bad = np.zeros(image.shape, dtype=bool)
    if mask is not None:
        if mask.shape != image.shape:
            raise ImageError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
        bad |= mask.astype(bool, copy=False)
    return bad


_KERNEL_DTYPES = tuple(
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.float32, np.float64)
)
_EMPTY_MASK = np.zeros((1, 1), dtype=np.uint8)
RULE_NONE, RULE_NEGATIVE, RULE_DTYPE_MAX, RULE_NOT_FINITE = 0, 1, 2, 3


def _invalid_rule(dtype: np.dtype) -> int:
    """Which values of ``dtype`` a detector writes for invalid pixels (see :func:`invalid_pixels`)."""
    kind = dtype.kind
    if kind == "i":
        return RULE_NEGATIVE
    if kind == "u":
        return RULE_DTYPE_MAX if dtype.itemsize >= 2 else RULE_NONE
    if kind == "f":
        return RULE_NOT_FINITE
    if kind == "b":
        return RULE_NONE
    raise ImageError(f"image dtype {dtype} is not numeric; accepted: {ACCEPTED_DTYPES}")


@compiled
def _is_invalid(value, rule: int, dtype_max) -> bool:
    if rule == RULE_NEGATIVE:
        return value < 0
    if rule == RULE_DTYPE_MAX:
        return value == dtype_max
    if rule == RULE_NOT_FINITE:
        return not np.isfinite(value)
    return False


@compiled
def _bin_valid_clipped(image, mask, use_mask, rule, dtype_max, ceiling, step, summed, n_valid, extremes):
    """One pass: per ``step x step`` block, the sum of the valid pixels clipped to [0, ceiling] and their count.

    Also the smallest and largest valid value (``extremes``) for the constant-image check. Releases the GIL.
    """
    rows, cols = image.shape
    low, high = extremes[0], extremes[1]
    for r in range(rows):
        br = r // step
        for bc in range(summed.shape[1]):
            block_sum = 0.0
            block_n = 0
            for c in range(bc * step, min(bc * step + step, cols)):
                value = image[r, c]
                if _is_invalid(value, rule, dtype_max) or (use_mask and mask[r, c] != 0):
                    continue
                v = float(value)
                if v < low:
                    low = v
                if v > high:
                    high = v
                block_sum += min(max(v, 0.0), ceiling)
                block_n += 1
            summed[br, bc] += block_sum
            n_valid[br, bc] += block_n
    extremes[0], extremes[1] = low, high


@compiled
def _valid_values(image, mask, use_mask, rule, dtype_max):
    """The valid pixels' values of an image as float32 (1D)."""
    rows, cols = image.shape
    out = np.empty(rows * cols, dtype=np.float32)
    n = 0
    for r in range(rows):
        for c in range(cols):
            value = image[r, c]
            if _is_invalid(value, rule, dtype_max) or (use_mask and mask[r, c] != 0):
                continue
            out[n] = value
            n += 1
    return out[:n]


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
    rule = _invalid_rule(image.dtype)
    if image.dtype.kind == "b" or image.dtype not in _KERNEL_DTYPES:  # rare dtypes: the nearest kernel dtype
        image = image.astype(np.float64 if image.dtype.kind == "f" else np.int64)
    image = np.ascontiguousarray(image)  # one compiled kernel per dtype (C order)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ImageError(f"mask shape {mask.shape} differs from the image shape {image.shape}")
        mask = np.ascontiguousarray(mask.astype(bool, copy=False)).view(np.uint8)
    rows, cols = image.shape
    factor = bin_factor((rows, cols))
    step = max(factor, 1)
    out_rows, out_cols = -(-rows // step), -(-cols // step)
    # The clipping ceiling from every 7th row and column's valid pixels, then one fused pass over the image.
    use_mask = mask is not None
    mask = mask if use_mask else _EMPTY_MASK
    dtype_max = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 0
    sample_mask = np.ascontiguousarray(mask[::7, ::7]) if use_mask else mask
    sample = _valid_values(np.ascontiguousarray(image[::7, ::7]), sample_mask, use_mask, rule, dtype_max)
    if sample.size < 16:
        sample = _valid_values(image, mask, use_mask, rule, dtype_max)
    if sample.size == 0:
        raise ImageError(_too_few_valid_message(0))
    (ceiling,) = _quantiles(sample, (CLIP_PERCENTILE,))
    summed = np.zeros((out_rows, out_cols), dtype=np.float64)
    n_valid_block = np.zeros((out_rows, out_cols), dtype=np.int32)
    extremes = np.array([np.inf, -np.inf])
    _bin_valid_clipped(image, mask, use_mask, rule, dtype_max, max(ceiling, 0.0), step, summed, n_valid_block, extremes)
    n_valid = int(n_valid_block.sum())
    if n_valid < MIN_VALID_PIXELS:
        raise ImageError(_too_few_valid_message(n_valid))
    if extremes[0] == extremes[1]:
        raise ImageError(CONSTANT_MESSAGE)
    # Block means of the valid pixels; the valid fraction of each block to 1/255 (what the network trained on).
    fraction = (np.rint(n_valid_block * (255.0 / (step * step))) / 255.0).astype(np.float32)
    summed = (summed / (step * step)).astype(np.float32)
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


def _too_few_valid_message(n_valid: int) -> str:
    return (
        f"only {n_valid} valid pixels (gaps, masked, negative or saturated values excluded); "
        f"at least {MIN_VALID_PIXELS} are needed"
    )


def warm_up() -> None:
    """Compile the codec's kernels for the dtypes detectors write (int32, uint16, uint32, float32), with and
    without a mask, so that the first requests do not pay for it (numba caches the machine code on disk)."""
    rng = np.random.default_rng(0)
    image = rng.poisson(5.0, (64, 64))
    mask = np.zeros(image.shape, dtype=bool)
    for dtype in (np.int32, np.uint16, np.uint32, np.float32):
        encode_image(image.astype(dtype))
        encode_image(image.astype(dtype), mask)


def encode_images(images: list[np.ndarray], masks: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Encode several images into one ``(n, 128, 128, 2)`` float32 batch (errors propagate)."""
    masks = masks or [None] * len(images)
    return np.stack([encode_image(image, mask).tensor for image, mask in zip(images, masks, strict=True)])
