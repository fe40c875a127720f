"""Runtimes run a registry version's tensors: in-process ONNX Runtime (default) or Triton (``TRITON_URL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matserve.models.base import Runtime
    from matserve.settings import Settings


def make_runtime(settings: Settings) -> Runtime:
    """Triton when ``settings.triton_url`` is set, else in-process ONNX Runtime."""
    if settings.triton_url:
        from matserve.runtimes.triton import TritonRuntime

        return TritonRuntime(settings.triton_url, timeout_s=settings.triton_timeout_s)
    from matserve.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime(intra_op_threads=settings.ort_threads, allow_spinning=settings.ort_spinning)
