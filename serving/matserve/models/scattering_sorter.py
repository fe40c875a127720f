"""Scattering sorter: 2D X-ray detector images in; technique, geometry and features out, with a Grad-CAM map.

(Over 500 lines: the lifecycle, its label rules and the item encoding are one unit that the HTTP API, jobs and
Triton all call; splitting them would scatter one model's conventions over several files.)

Each image is encoded by :func:`matserve.codecs.scattering.encode_image` (the function the training simulator
uses: invalid pixels masked, hot pixels clipped, binned into a letterboxed 128 x 128 frame, log-scaled), in a
small thread pool (the codec's kernel releases the GIL). The network answers, per image:

* ``technique_probabilities``: softmax over the card's ``labels.technique`` (saxs, waxs, gisaxs, giwaxs);
  ``technique`` is the most probable; ``technique_confident`` whether its probability reaches the card's
  ``technique_confidence_thresholds`` (calibrated on validation so that confident answers are right 99.5 % of
  the time; one threshold with the setup known, one without; ``null`` for versions without them): a pipeline
  can sort the confident images automatically and send the rest to a person;
* ``geometry_probabilities``: softmax over ``labels.geometry`` (transmission, grazing); ``geometry`` the most
  probable;
* ``feature_probabilities``: independent sigmoids over ``labels.features`` (rings, arcs, rods, bragg_peaks,
  diffuse_halo); ``features`` lists those at or above their threshold (the card's ``feature_thresholds``,
  calibrated on validation; else 0.5), in label order;
* ``class_activation_maps`` ``(16, 16, 11)``: Grad-CAM before its ReLU for every label (techniques, geometries,
  features), on the network's 16 x 16 grid over the 128 x 128 input;
* from 1.4.0, ``feature_distance``: how far the image lies from the simulated training images in the network's
  pooled-feature space (:mod:`training.scattering.feature_density`, computed in the graph); above the card's
  ``feature_distance.threshold`` the result says ``out_of_distribution`` and is never ``technique_confident``.
  From 1.4.0 the confidence thresholds are also calibrated on real images (the card's ``real_development_set``).

Every result also has ``detector_shape`` ``[rows, cols]`` (pixels) and ``valid_fraction`` (share of the
detector's pixels that were valid).

**The setup.** Versions whose card lists a ``setup`` input (1.2.0 on) are also given the detector's q span
(:func:`matserve.codecs.scattering.setup_features`), computed from the sample-detector distance, wavelength
and pixel size: the file's header (:mod:`matserve.codecs.detector_files`), with any value the request gives
overriding it. ``q_span_inv_angstrom`` reports what the network was given (``null``: the setup was incomplete,
the image was sorted from its pixels alone, and accuracy is lower; see the card's ``metrics_without_setup``),
``setup_source`` where each value came from (e.g. ``distance_m=request; wavelength_angstrom=header:CBF Wavelength (A); ...``).

With saliency asked for (:class:`ScatteringOptions`), ``saliency_png_base64`` is an RGB PNG of the image as the
network saw it (normalised log intensity, grey) cropped to the detector's area of the letterboxed
frame, under the ReLU'd Grad-CAM map of ``saliency_label`` (default: the predicted technique), bilinearly
upsampled to 128 x 128 and scaled to [0, 1] over the crop, each input pixel drawn 4 x 4
(:func:`matserve.plots.saliency_png`).

An image that cannot be used (constant, too few valid pixels, wrong shape or dtype) gets a per-item ``error``
and the others go on. Not cached: images rarely repeat byte for byte, and hashing megapixels costs about what
the network does (calls with options never use the cache anyway).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import numpy as np
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

from matserve.codecs.active_area import inactive_disc_mask
from matserve.codecs.detector_files import Frame
from matserve.codecs.scattering import (
    INPUT_SIDE_PX,
    MAX_SIDE_PX,
    SETUP_FEATURES,
    EncodedImage,
    ImageError,
    Setup,
    as_image_array,
    encode_image,
    setup_features,
    setup_value_error,
)
from matserve.errors import InputRejected
from matserve.models.base import Prediction, ServedModel
from matserve.registry import ModelVersion

INPUT = "images"
SETUP_INPUT = "setup"
TECHNIQUE_OUTPUT = "technique_probabilities"
GEOMETRY_OUTPUT = "geometry_probabilities"
FEATURE_OUTPUT = "feature_probabilities"
CAM_OUTPUT = "class_activation_maps"
DISTANCE_OUTPUT = "feature_distance"
OUTPUTS = (TECHNIQUE_OUTPUT, GEOMETRY_OUTPUT, FEATURE_OUTPUT, CAM_OUTPUT)
"""Every version's outputs; versions from 1.4.0 on also have :data:`DISTANCE_OUTPUT`."""
RUN_BATCH = 256
"""Most images per runtime call (or the card's ``serving.max_batch_size`` if smaller): 256 x 128 KiB inputs."""
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads encoding the images of a request (the codec's kernel releases the GIL)."""
DEFAULT_FEATURE_THRESHOLD = 0.5
EMPTY_RESULT: dict[str, Any] = {
    "technique": None, "technique_probabilities": None, "technique_confident": None, "geometry": None,
    "geometry_probabilities": None, "features": None, "feature_probabilities": None, "detector_shape": None,
    "valid_fraction": None, "q_span_inv_angstrom": None, "setup_source": None, "feature_distance": None,
    "out_of_distribution": None, "saliency_png_base64": None, "saliency_label": None,
}  # fmt: skip

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="matserve-scattering-encode")
        return _POOL


@dataclass(frozen=True)
class Labels:
    """The label sets of a version (from its card), in the network's output order.

    Attributes
    ----------
    technique, geometry, features : tuple of str
        Class labels of the three heads.
    feature_thresholds : tuple of float
        Per feature (in ``features`` order): the feature is reported when its probability is at least this.
    confidence_thresholds : dict of str to float
        The card's ``technique_confidence_thresholds``: the top technique probability at or above which the
        technique is called confident, with the setup known (``setup_known``) and unknown (``setup_unknown``);
        empty for versions calibrated before 1.3.0.
    distance_threshold : float or None
        The card's ``feature_distance.threshold``: an image whose ``feature_distance`` exceeds it is out of
        distribution (never confident); ``None`` for versions without the output (before 1.4.0).
    """

    technique: tuple[str, ...]
    geometry: tuple[str, ...]
    features: tuple[str, ...]
    feature_thresholds: tuple[float, ...]
    confidence_thresholds: Mapping[str, float]
    distance_threshold: float | None = None

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Labels:
        """``card["labels"]``; thresholds from ``card["feature_thresholds"]`` (per feature, calibrated on
        validation), else ``card["feature_threshold"]`` for every feature, else 0.5."""
        labels = card["labels"]
        default = float(card.get("feature_threshold", DEFAULT_FEATURE_THRESHOLD))
        per_feature = card.get("feature_thresholds") or {}
        thresholds = tuple(float(per_feature.get(name, default)) for name in labels["features"])
        confidence = {key: float(value) for key, value in (card.get("technique_confidence_thresholds") or {}).items()}
        distance = (card.get("feature_distance") or {}).get("threshold")
        return cls(tuple(labels["technique"]), tuple(labels["geometry"]), tuple(labels["features"]), thresholds,
                   confidence, None if distance is None else float(distance))  # fmt: skip

    def present_features(self, probabilities: np.ndarray) -> list[str]:
        """The features at or above their thresholds, in label order."""
        return [f for f, p, t in zip(self.features, probabilities, self.feature_thresholds, strict=True) if p >= t]

    def out_of_distribution(self, distance: float | None) -> bool | None:
        """Whether ``feature_distance`` exceeds the card's threshold (``None`` for versions without one)."""
        if distance is None or self.distance_threshold is None:
            return None
        return bool(distance > self.distance_threshold)

    def technique_confident(
        self, probabilities: np.ndarray, setup_known: bool, out_of_distribution: bool | None = None
    ) -> bool | None:
        """Whether the top technique probability reaches the card's threshold for this setup case and the image is
        not out of distribution (``None`` if the card has no thresholds)."""
        threshold = self.confidence_thresholds.get("setup_known" if setup_known else "setup_unknown")
        if threshold is None:
            return None
        return bool(float(probabilities.max()) >= threshold) and not out_of_distribution

    @property
    def maps(self) -> tuple[str, ...]:
        """The labels of the ``class_activation_maps`` channels: techniques, geometries, features."""
        return self.technique + self.geometry + self.features


class ScatteringImageInput(TypedDict):
    """One image on the wire, as batch jobs (``POST /v1/jobs``, model ``scattering_sorter``) take it.

    Attributes
    ----------
    image : list of list of number
        Detector counts, rows x cols (each side 32 to 4500 px). Integers keep the integer conventions of
        :func:`~matserve.codecs.scattering.invalid_pixels` (negative values are gaps); floats are floats.
    mask : list of list of number, optional
        Same shape, nonzero = bad pixel.
    distance_m, wavelength_angstrom, pixel_size_um : float, optional
        The measurement setup (sample-detector distance in metres, wavelength in Angstrom, pixel size in
        micrometres), for versions with a setup input.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    image: Annotated[list[Annotated[list[int | float], Field(max_length=MAX_SIDE_PX)]], Field(max_length=MAX_SIDE_PX)]
    mask: NotRequired[list[list[int | float]] | None]
    distance_m: NotRequired[float | None]
    wavelength_angstrom: NotRequired[float | None]
    pixel_size_um: NotRequired[float | None]


@dataclass(frozen=True)
class ScatteringOptions:
    """Per-call options of :class:`ScatteringSorterModel` (:meth:`ScatteringSorterModel.sort`).

    Attributes
    ----------
    saliency : bool
        Add ``saliency_png_base64`` and ``saliency_label`` to each result.
    saliency_label : str, optional
        Draw this label's map (any technique, geometry or feature label of the card; implies ``saliency``);
        default each image's predicted technique.
    setup : Setup, optional
        The request's setup values: each overrides the file header's (the others stay as the header says).
    """

    saliency: bool = False
    saliency_label: str | None = None
    setup: Setup | None = None

    @property
    def drawn_label(self) -> str | None:
        """The label whose map is drawn: ``None`` no saliency PNG, ``""`` each image's predicted technique."""
        if self.saliency_label is not None:
            return self.saliency_label
        return "" if self.saliency else None


@dataclass
class PreparedScattering:
    """Encoded images of a request, with per-item errors and what postprocessing needs.

    Attributes
    ----------
    results : list of dict
        One per item, ``error`` set for refused ones.
    rows : list of int
        Positions in ``results`` of the encoded images.
    encoded : list of EncodedImage
        One per row.
    shapes : list of tuple of int
        Detector shape ``(rows, cols)`` of each encoded image.
    setups : list of Setup
        The setup of each encoded image (file header, then the request's values).
    labels : Labels
        The version's labels.
    saliency_label : str or None
        Label whose map is drawn (``""``: each image's predicted technique); ``None``: no saliency PNG.
    q_spans : list of float or None, or None
        Each encoded image's q span (1/Angstrom; ``None`` where its setup is incomplete); the list itself is
        ``None`` when the version takes no ``setup`` input (:func:`uses_setup`).
    """

    results: list[dict[str, Any]]
    rows: list[int]
    encoded: list[EncodedImage]
    shapes: list[tuple[int, int]]
    setups: list[Setup]
    labels: Labels
    saliency_label: str | None = None
    q_spans: list[float | None] | None = None

    @property
    def tensors(self) -> np.ndarray:
        """float32 ``(len(rows), 128, 128, 2)`` network input."""
        if not self.encoded:
            return np.zeros((0, INPUT_SIDE_PX, INPUT_SIDE_PX, 2), dtype=np.float32)
        return np.stack([e.tensor for e in self.encoded])

    @property
    def setup_tensor(self) -> np.ndarray:
        """float32 ``(len(rows), 2)`` setup input (:func:`~matserve.codecs.scattering.setup_features`)."""
        if not self.q_spans:
            return np.zeros((0, SETUP_FEATURES), dtype=np.float32)
        return np.stack([setup_features(q) for q in self.q_spans])


WIRE_SETUP = (("distance_m", "distance_m", 1.0), ("wavelength_angstrom", "wavelength_angstrom", 1.0),
              ("pixel_size_um", "pixel_size_m", 1e6))  # fmt: skip
"""``(wire name, Setup field, wire units per Setup unit)`` of the setup values a request carries."""


def setup_of(values: Mapping[str, Any], source: str) -> Setup:
    """A :class:`Setup` from wire values ``distance_m``, ``wavelength_angstrom``, ``pixel_size_um`` (any may be
    missing or ``None``); :class:`ImageError` for a value that is not a number in the accepted range."""
    converted: dict[str, float | None] = {}
    for wire, name, scale in WIRE_SETUP:
        value = values.get(wire)
        converted[name] = None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ImageError(f"{wire} must be a number, got {value!r}")
        if error := setup_value_error(name, value, scale, wire):
            raise ImageError(error)
        converted[name] = float(value) / scale
    return Setup(**converted, source=source if any(v is not None for v in converted.values()) else "")


def _item_arrays(item: Any) -> tuple[np.ndarray, np.ndarray | None, Setup]:
    """``(image, mask, setup)`` of one item: a :class:`Frame`, a mapping ``{"image", "mask", setup values}`` or a
    2D array."""
    if isinstance(item, Frame):
        return item.image, item.mask, item.setup
    if isinstance(item, Mapping):
        if "image" not in item:
            raise ImageError('an item is an object {"image": [[...], ...], "mask": optional}')
        mask = item.get("mask")
        image = as_image_array(item["image"], "image")
        return image, None if mask is None else as_image_array(mask, "mask"), setup_of(item, "request")
    return as_image_array(item, "image"), None, Setup()


def _encode(item: Any) -> tuple[EncodedImage | None, tuple[int, int] | None, Setup | None, str | None]:
    """Encode one item: ``(encoded, detector shape, setup, None)`` or ``(None, None, None, reason)``."""
    if isinstance(item, str):
        return None, None, None, item
    try:
        image, mask, setup = _item_arrays(item)
        disc = inactive_disc_mask(image)
        if disc is not None:
            mask = disc if mask is None else np.maximum(disc, np.asarray(mask) != 0).astype(np.uint8)
        encoded = encode_image(image, mask)
    except ImageError as error:
        return None, None, None, str(error)
    return encoded, (int(image.shape[0]), int(image.shape[1])), setup, None


def thread_map(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[function(item) for item in items]`` on the encode threads when there are several items (decoders and
    the codec's kernel release the GIL); exceptions propagate."""
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(_pool().map(function, items))


def encode_items(
    items: Sequence[Any],
) -> list[tuple[EncodedImage | None, tuple[int, int] | None, Setup | None, str | None]]:
    """:func:`_encode` every item, on the encode threads when there are several."""
    return thread_map(_encode, items)


def uses_setup(card: Mapping[str, Any]) -> bool:
    """Whether a version's network takes the ``setup`` input (its card lists it)."""
    return any(spec.get("name") == SETUP_INPUT for spec in card.get("inputs", []))


def _probabilities(labels: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 6) for label, p in zip(labels, values, strict=True)}


class ScatteringSorterModel(ServedModel[PreparedScattering, ScatteringOptions]):
    """Technique/geometry/feature classifier served from ``models/scattering_sorter/<version>``.

    Batch jobs and :meth:`__call__` take :class:`ScatteringImageInput` items (or decoded
    :class:`~matserve.codecs.detector_files.Frame` objects); the HTTP API uses :meth:`sort` (decoded frames,
    optional saliency PNGs).
    """

    name = "scattering_sorter"
    item_type = ScatteringImageInput

    def labels(self, version: str | None = None) -> Labels:
        """The label sets of a version."""
        return Labels.from_card(self.card(version))

    # -- the lifecycle ---------------------------------------------------------------------------------------

    def preprocess(
        self, items: list[Any], model: ModelVersion, options: ScatteringOptions | None = None
    ) -> PreparedScattering:
        """Encode the items (on the encode threads); checks ``options.saliency_label`` is a label of the version."""
        if options is None:
            return self._prepare(items, model, None)
        if options.saliency_label is not None:
            _check_label(model, Labels.from_card(model.card), options.saliency_label)
        return self._prepare(items, model, options.drawn_label, options.setup)

    def predict(self, prepared: PreparedScattering, model: ModelVersion) -> dict[str, np.ndarray]:
        """Run the network in chunks of at most :data:`RUN_BATCH` images; every output, concatenated."""
        if not prepared.rows:
            return {}
        size = min(RUN_BATCH, int(model.card.get("serving", {}).get("max_batch_size", RUN_BATCH)))
        inputs = {INPUT: prepared.tensors}
        if prepared.q_spans is not None:
            inputs[SETUP_INPUT] = prepared.setup_tensor
        parts = [
            self.runtime.run(model, {name: value[i : i + size] for name, value in inputs.items()})
            for i in range(0, len(prepared.rows), size)
        ]
        names = (*OUTPUTS, DISTANCE_OUTPUT) if DISTANCE_OUTPUT in parts[0] else OUTPUTS
        return {name: np.concatenate([np.asarray(part[name]) for part in parts]) for name in names}

    def postprocess(
        self, prepared: PreparedScattering, outputs: dict[str, np.ndarray], options: ScatteringOptions | None = None
    ) -> list[dict[str, Any]]:
        """Probabilities, labels and setup per image; the saliency PNG when ``prepared.saliency_label`` (from
        ``options``) is set."""
        results, labels = prepared.results, prepared.labels
        if not prepared.rows:
            return results
        technique = outputs[TECHNIQUE_OUTPUT].reshape(len(prepared.rows), -1)
        geometry = outputs[GEOMETRY_OUTPUT].reshape(len(prepared.rows), -1)
        features = outputs[FEATURE_OUTPUT].reshape(len(prepared.rows), -1)
        widths = (technique.shape[1], geometry.shape[1], features.shape[1])
        if widths != (len(labels.technique), len(labels.geometry), len(labels.features)):
            raise RuntimeError(f"{self.name}: the graph answers {widths} probabilities but the card has "
                               f"{len(labels.technique)}, {len(labels.geometry)}, {len(labels.features)} labels")  # fmt: skip
        q_spans = prepared.q_spans if prepared.q_spans is not None else [None] * len(prepared.rows)
        distances = outputs.get(DISTANCE_OUTPUT)
        for k, row in enumerate(prepared.rows):
            encoded, shape = prepared.encoded[k], prepared.shapes[k]
            best = labels.technique[int(technique[k].argmax())]
            distance = None if distances is None else float(np.asarray(distances).reshape(-1)[k])
            unusual = labels.out_of_distribution(distance)
            results[row].update({
                "technique": best,
                "technique_probabilities": _probabilities(labels.technique, technique[k]),
                "technique_confident": labels.technique_confident(technique[k], q_spans[k] is not None, unusual),
                "geometry": labels.geometry[int(geometry[k].argmax())],
                "geometry_probabilities": _probabilities(labels.geometry, geometry[k]),
                "features": labels.present_features(features[k]),
                "feature_probabilities": _probabilities(labels.features, features[k]),
                "detector_shape": [shape[0], shape[1]],
                "valid_fraction": round(encoded.valid_fraction, 6),
                "q_span_inv_angstrom": None if q_spans[k] is None else round(q_spans[k], 6),
                "setup_source": None if q_spans[k] is None else (prepared.setups[k].source or None),
                "feature_distance": None if distance is None else round(distance, 4),
                "out_of_distribution": unusual,
            })  # fmt: skip
            if prepared.saliency_label is not None:
                from matserve.plots import SALIENCY_SCALE, saliency, saliency_png

                label = prepared.saliency_label or best
                cam = outputs[CAM_OUTPUT][k, :, :, labels.maps.index(label)]
                intensity, level = saliency(encoded, shape, cam)
                png = saliency_png(intensity, level, SALIENCY_SCALE)
                results[row]["saliency_png_base64"] = base64.b64encode(png).decode("ascii")
                results[row]["saliency_label"] = label
        return results

    def _prepare(
        self, items: Sequence[Any], model: ModelVersion, saliency_label: str | None, setup: Setup | None = None
    ) -> PreparedScattering:
        labels = Labels.from_card(model.card)
        results: list[dict[str, Any]] = []
        rows: list[int] = []
        encoded: list[EncodedImage] = []
        shapes: list[tuple[int, int]] = []
        setups: list[Setup] = []
        for i, (image, shape, item_setup, error) in enumerate(encode_items(items)):
            results.append({**EMPTY_RESULT, "error": error})
            if image is not None and shape is not None and item_setup is not None:
                rows.append(i)
                encoded.append(image)
                shapes.append(shape)
                setups.append(item_setup.updated(setup) if setup is not None else item_setup)
        q_spans = ([s.q_span_inv_angstrom(shape) for s, shape in zip(setups, shapes, strict=True)]
                   if uses_setup(model.card) else None)  # fmt: skip
        return PreparedScattering(results, rows, encoded, shapes, setups, labels, saliency_label, q_spans)

    # -- the HTTP API's entry point ----------------------------------------------------------------------------

    def check_options(self, version: str | None = None, saliency_label: str | None = None) -> ModelVersion:
        """The version to use, after checking ``saliency_label`` is one of its labels.

        Raises
        ------
        VersionNotFound
            Unknown version (404).
        InputRejected
            ``saliency_label`` is not a technique, geometry or feature label of the version (422, listing them).
        """
        model = self.version(version)
        if saliency_label is not None:
            _check_label(model, Labels.from_card(model.card), saliency_label)
        return model

    def sort(
        self,
        items: Sequence[Frame | str],
        *,
        version: str | None = None,
        saliency: bool = False,
        saliency_label: str | None = None,
        setup: Setup | None = None,
    ) -> Prediction:
        """Sort decoded frames (one result per item, refused ones with ``error``), optionally with saliency PNGs.

        A thin wrapper of :meth:`__call__` with :class:`ScatteringOptions` (timed, counted, never cached).

        Parameters
        ----------
        items : sequence of Frame or str
            Decoded detector frames, or the reason an item was already refused while decoding.
        version : str, optional
            Registry version (default the active one).
        saliency : bool
            Add ``saliency_png_base64`` and ``saliency_label`` to each result.
        saliency_label : str, optional
            Draw this label's map (any technique, geometry or feature label of the card; implies ``saliency``);
            default each image's predicted technique.
        setup : Setup, optional
            The request's setup values: each overrides the file header's (the others stay as the header says).

        Raises
        ------
        InputRejected
            ``saliency_label`` is not one of the version's labels (before the request is counted).
        """
        model = self.check_options(version, saliency_label)
        options = ScatteringOptions(saliency=bool(saliency), saliency_label=saliency_label, setup=setup)
        return self(list(items), model.version, options=options)


def _check_label(model: ModelVersion, labels: Labels, label: str) -> None:
    """:class:`InputRejected` (HTTP 422, listing the accepted labels) unless ``label`` is one of the version's."""
    if label not in labels.maps:
        raise InputRejected(f"saliency_label {label!r} is not a label of {model.name} {model.version}; "
                           f"accepted: {', '.join(labels.maps)}")  # fmt: skip
