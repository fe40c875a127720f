"""Runtimes run a registry version's tensors: in-process ONNX Runtime (default) or Triton (``TRITON_URL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matserve.models.base import Runtime
    from matserve.settings import Settings


def make_runtime(settings: Settings) -> Runtime:
    """Triton when ``settings.triton_url`` is set (with in-process ONNX Runtime as its fallback unless
    ``triton_fallback`` is ``"none"``), else in-process ONNX Runtime."""
    from matserve.runtimes.onnxruntime import OnnxRuntime

    local = OnnxRuntime(intra_op_threads=settings.ort_threads, allow_spinning=settings.ort_spinning)
    if not settings.triton_url:
        return local
    from matserve.runtimes.triton import TritonRuntime

    if settings.triton_fallback not in ("ort", "none"):
        raise ValueError(f"MATSERVE_TRITON_FALLBACK must be 'ort' or 'none', not {settings.triton_fallback!r}")
    return TritonRuntime(
        settings.triton_url,
        timeout_s=settings.triton_timeout_s,
        fallback=local if settings.triton_fallback == "ort" else None,
        retry_after_s=settings.triton_retry_after_s,
    )
