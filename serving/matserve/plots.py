"""PNG pictures returned by the endpoints on request.

* :func:`xrd_reconstruction_png`: a pattern against its VAE reconstruction on the model grid, with the
  residual underneath: where the model could not explain the pattern.
* :func:`xrd_latent_map_png`: the VAE's latent map (2-d projection), validation patterns of the known phases
  coloured by phase, the queried pattern(s) marked.
* :func:`add_xrd_novelty_plots`: both of them, base64, into each scored result of ``POST /v1/xrd/novelty``.
* :func:`ipf_z_rgb` and :func:`rgb_png`: the IPF-Z colour map of an EBSD scan (orix's TSL colour key), one
  pixel per pattern, upscaled without interpolation.
* :func:`saliency` and :func:`saliency_png`: a scattering image under the Grad-CAM map of one label.

Heavy imports are lazy, so that importing this module costs almost nothing: matplotlib (headless Agg backend;
~1-2 s) on the first XRD figure, OpenCV and Pillow on the first saliency PNG, orix on the first IPF colours.
"""

from __future__ import annotations

import base64
import functools
import io
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from matserve.codecs.xrd import MODEL_GRID_DEG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from matserve.codecs.scattering import EncodedImage

DPI = 100
PHASE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
SALIENCY_SCALE = 4
"""Screen pixels per input pixel in the saliency PNG (the 128 x 128 frame becomes at most 512 x 512)."""
SALIENCY_OPACITY = 0.6
"""Opacity of the colour map where the saliency is 1 (it fades to transparent at 0)."""


@functools.cache
def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the headless Agg backend, imported on first use.

    pyplot is imported first: if another thread (the EBSD warm-up, through kikuchipy) is importing it, the import
    waits for that one to finish, where ``matplotlib.use`` would have met a partly initialised pyplot."""
    import matplotlib.pyplot as plt

    if plt.get_backend().lower() != "agg":
        plt.switch_backend("Agg")
    return plt


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(figure)
    return buffer.getvalue()


def xrd_reconstruction_png(pattern: np.ndarray, reconstruction: np.ndarray, title: str) -> bytes:
    """The pattern (black) and its reconstruction (red) over 2θ (Cu Kα, degrees), residual below.

    Parameters
    ----------
    pattern, reconstruction : numpy.ndarray
        (2048,) intensities on :data:`~matserve.codecs.xrd.MODEL_GRID_DEG`, in [0, 1].
    title : str
        Figure title (e.g. the error and percentile).
    """
    figure, (top, bottom) = _pyplot().subplots(
        2, 1, figsize=(7.0, 4.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
    )
    top.plot(MODEL_GRID_DEG, pattern, color="black", linewidth=0.8, label="pattern")
    top.plot(MODEL_GRID_DEG, reconstruction, color="tab:red", linewidth=0.8, label="VAE reconstruction")
    top.set_ylabel("intensity (normalised)")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title, fontsize=9)
    bottom.plot(MODEL_GRID_DEG, pattern - reconstruction, color="tab:gray", linewidth=0.7)
    bottom.axhline(0.0, color="black", linewidth=0.5)
    bottom.set_ylabel("residual")
    bottom.set_xlabel("2θ (°, Cu Kα)")
    return _png(figure)


def xrd_latent_map_png(
    reference_latent: np.ndarray,
    reference_label: np.ndarray,
    class_names: list[str],
    query_latent: np.ndarray,
    title: str,
) -> bytes:
    """The known phases' latent points, coloured by phase, with the queried points as black crosses.

    Parameters
    ----------
    reference_latent : numpy.ndarray
        (M, 2) map coordinates of validation patterns of the known phases.
    reference_label : numpy.ndarray
        (M,) their index into ``class_names``.
    class_names : list of str
        Known phases.
    query_latent : numpy.ndarray
        (Q, 2) map coordinates of the queried pattern(s).
    title : str
        Figure title.
    """
    figure, axes = _pyplot().subplots(figsize=(5.0, 4.4), layout="constrained")
    for j, name in enumerate(class_names):
        points = reference_latent[reference_label == j]
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.4, color=PHASE_COLOURS[j % len(PHASE_COLOURS)],
                     label=f"{name} (known)")  # fmt: skip
    query = np.atleast_2d(query_latent)
    axes.scatter(query[:, 0], query[:, 1], s=90, marker="X", color="black", edgecolor="white", label="query")
    axes.set_xlabel("latent map axis 1")
    axes.set_ylabel("latent map axis 2")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="best", fontsize=7, markerscale=2)
    return _png(figure)


def ipf_z_rgb(quaternions: np.ndarray) -> np.ndarray:
    """IPF-Z colours of m-3m orientations, as orix's ``IPFColorKeyTSL(symmetry.Oh)`` colours them.

    Parameters
    ----------
    quaternions : numpy.ndarray
        ``(n, 4)`` unit quaternions (a, b, c, d), sample -> crystal (orix/kikuchipy convention).

    Returns
    -------
    numpy.ndarray
        uint8 ``(n, 3)`` RGB: the crystal direction parallel to the sample Z axis (the surface normal) in the
        m-3m standard triangle, red [001], green [101], blue [111] (the TSL key). orix is imported on first use.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from orix.plot import IPFColorKeyTSL
        from orix.quaternion import Orientation, symmetry
        from orix.vector import Vector3d

        quaternions = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
        if not len(quaternions):
            return np.zeros((0, 3), dtype=np.uint8)
        key = IPFColorKeyTSL(symmetry.Oh, direction=Vector3d.zvector())
        rgb = key.orientation2color(Orientation(quaternions, symmetry=symmetry.Oh))
    return np.clip(np.rint(np.asarray(rgb).reshape(-1, 3) * 255), 0, 255).astype(np.uint8)


def ipf_scale(rows: int, cols: int, target_px: int = 512, max_scale: int = 32) -> int:
    """Integer upscaling so that a map's longer side is about ``target_px`` pixels (1 for big maps)."""
    return max(1, min(max_scale, target_px // max(rows, cols, 1)))


def rgb_png(rgb: np.ndarray, scale: int = 1) -> bytes:
    """PNG of a uint8 ``(rows, cols, 3)`` image, each pixel repeated ``scale`` x ``scale`` times (nearest)."""
    from PIL import Image

    image = np.repeat(np.repeat(np.asarray(rgb, dtype=np.uint8), scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def add_xrd_novelty_plots(version: Any, results: list[dict[str, Any]], curves: dict[int, tuple[Any, Any]]) -> None:
    """Render each scored pattern's reconstruction and latent-map PNGs into its result (base64).

    Parameters
    ----------
    version : ModelVersion
        The :class:`~matserve.models.xrd_novelty.XrdNoveltyModel` version that scored the patterns (its
        calibration holds the latent map of the known phases).
    results : list of dict
        Its results (:meth:`~matserve.models.xrd_novelty.XrdNoveltyModel.with_reconstructions`); each scored one
        gains ``plots``: ``{"reconstruction_png": base64, "latent_map_png": base64}``.
    curves : dict
        Result position -> (pattern, reconstruction), (2048,) each on the model grid.
    """
    from matserve.models.xrd_novelty import calibration

    cal = calibration(version)
    reference_map = cal.to_map(cal.reference_latent)
    for row, (pattern, reconstruction) in curves.items():
        result = results[row]
        verdict = "novel" if result["is_novel"] else "known"
        title = (f"reconstruction error {result['reconstruction_error']:.4f}, "
                 f"percentile {result['novelty_percentile']:.1f} ({verdict})")  # fmt: skip
        reconstruction_png = xrd_reconstruction_png(pattern, reconstruction, title)
        latent_png = xrd_latent_map_png(
            reference_map, cal.reference_label, cal.class_names, np.asarray([result["latent_map"]]),
            f"latent space; nearest known phase {result['nearest_known_phase']}",
        )  # fmt: skip
        result["plots"] = {
            "reconstruction_png": base64.b64encode(reconstruction_png).decode("ascii"),
            "latent_map_png": base64.b64encode(latent_png).decode("ascii"),
        }


def saliency(encoded: EncodedImage, shape: tuple[int, int], cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image and the saliency map over the detector's area of the input frame.

    Parameters
    ----------
    encoded : EncodedImage
        The image as the network saw it.
    shape : tuple of int
        Detector shape ``(rows, cols)``.
    cam : numpy.ndarray
        ``(16, 16)`` Grad-CAM map of one label, before ReLU.

    Returns
    -------
    intensity : numpy.ndarray
        ``(height, width)`` normalised log intensity in [0, 1] (0 where masked).
    level : numpy.ndarray
        ``(height, width)``: ``ReLU(cam)`` bilinearly upsampled to 128 x 128, cropped, divided by its maximum
        (all 0 when the label has no positive evidence anywhere).
    """
    import cv2

    from matserve.codecs.scattering import INPUT_SIDE_PX

    top, left, height, width = encoded.placement
    positive = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    upsampled = cv2.resize(positive, (INPUT_SIDE_PX, INPUT_SIDE_PX), interpolation=cv2.INTER_LINEAR)
    level = upsampled[top : top + height, left : left + width]
    peak = float(level.max(initial=0.0))
    level = level / peak if peak > 0 else np.zeros_like(level)
    return encoded.tensor[top : top + height, left : left + width, 0], level


def saliency_png(intensity: np.ndarray, level: np.ndarray, scale: int = SALIENCY_SCALE) -> bytes:
    """PNG of a saliency map over an image: the image in grey, the map in OpenCV's turbo colour map (blue -> red),
    at opacity ``SALIENCY_OPACITY * level``, so that the image shows where the map is 0.

    Parameters
    ----------
    intensity : numpy.ndarray
        ``(rows, cols)`` image in [0, 1] (the normalised log intensity), shown in grey.
    level : numpy.ndarray
        ``(rows, cols)`` saliency in [0, 1] (1 = the strongest evidence).
    scale : int
        Each pixel becomes ``scale`` x ``scale`` pixels (nearest).

    Returns
    -------
    bytes
        An 8-bit RGB PNG of ``(rows * scale, cols * scale)`` pixels.
    """
    import cv2
    from PIL import Image

    level = np.clip(np.asarray(level, dtype=np.float32), 0.0, 1.0)
    grey = np.repeat(np.clip(np.asarray(intensity, dtype=np.float32), 0.0, 1.0)[..., None], 3, axis=2)
    colour = cv2.applyColorMap(np.rint(level * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1] / 255.0
    alpha = SALIENCY_OPACITY * level[..., None]
    rgb = np.clip(np.rint(((1.0 - alpha) * grey + alpha * colour) * 255), 0, 255).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
