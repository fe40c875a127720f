"""Settings read from the environment, with embedded defaults for a local run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Settings:
    """Server settings.

    Attributes
    ----------
    models_dir : Path
        The registry root (``MATSERVE_MODELS_DIR``; default: the repository's ``models/``).
    max_body_bytes : int
        Largest request body accepted (``MATSERVE_MAX_BODY_BYTES``), else 413.
    max_formulas : int
        Most formulas in one request (``MATSERVE_MAX_FORMULAS``), else 413.
    ort_threads : int
        ONNX Runtime intra-op threads (``MATSERVE_ORT_THREADS``; 0 = one per core).
    triton_url : str or None
        ``TRITON_URL``: when set, tensor work goes to this Triton (``grpc://host:8001`` or
        ``http://host:8000``) instead of in-process ONNX Runtime; unset (default) runs in-process.
    triton_timeout_s : float
        Longest a Triton call may take (``MATSERVE_TRITON_TIMEOUT_S``, default 60 s); an unreachable
        Triton is reported at once (connection refused), well inside 1 s.
    """

    models_dir: Path = field(default_factory=lambda: Path(os.environ.get("MATSERVE_MODELS_DIR", REPO_MODELS_DIR)))
    max_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_BODY_BYTES", 4 * 1024 * 1024))
    max_formulas: int = field(default_factory=lambda: _int("MATSERVE_MAX_FORMULAS", 10_000))
    ort_threads: int = field(default_factory=lambda: _int("MATSERVE_ORT_THREADS", 0))
    triton_url: str | None = field(default_factory=lambda: os.environ.get("TRITON_URL") or None)
    triton_timeout_s: float = field(default_factory=lambda: float(os.environ.get("MATSERVE_TRITON_TIMEOUT_S", 60)))
