"""PNG pictures returned by the endpoints on request (matplotlib, headless Agg backend).

* :func:`xrd_reconstruction_png`: a pattern against its VAE reconstruction on the model grid, with the
  residual underneath: where the model could not explain the pattern.
* :func:`xrd_latent_map_png`: the VAE's latent map (2-d projection), validation patterns of the known phases
  coloured by phase, the queried pattern(s) marked.
* :func:`ipf_z_rgb` and :func:`rgb_png`: the IPF-Z colour map of an EBSD scan (orix's TSL colour key), one
  pixel per pattern, upscaled without interpolation.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from matserve.codecs.xrd import MODEL_GRID_DEG

DPI = 100
PHASE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
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
    figure, (top, bottom) = plt.subplots(
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
    figure, axes = plt.subplots(figsize=(5.0, 4.4), layout="constrained")
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
