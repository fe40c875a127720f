"""Settings read from the environment, with embedded defaults for a local run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

MIB = 1024 * 1024
DAY_S = 24 * 3600


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _optional_str(name: str) -> str | None:
    return os.environ.get(name) or None


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Server and worker settings.

    Attributes
    ----------
    models_dir : Path
        The registry root (``MATSERVE_MODELS_DIR``; default: the repository's ``models/``).
    max_body_bytes : int
        Largest request body accepted (``MATSERVE_MAX_BODY_BYTES``, 4 MiB), else 413; ``POST /v1/jobs``
        has its own limit, ``max_job_body_bytes``.
    max_formulas : int
        Most formulas in one synchronous request and most items in one page of job results
        (``MATSERVE_MAX_FORMULAS``), else 413.
    max_patterns : int
        Most diffraction patterns in one synchronous XRD request (``MATSERVE_MAX_PATTERNS``, 1024), else 413.
    max_xrd_body_bytes : int
        Largest body of the XRD routes (``MATSERVE_MAX_XRD_BODY_BYTES``, 64 MiB: 1024 patterns of 2048
        points as JSON are ~45 MB), else 413.
    max_ebsd_patterns : int
        Most EBSD patterns in one ``POST /v1/ebsd/index`` request (``MATSERVE_MAX_EBSD_PATTERNS``, 4096), else 413.
    max_ebsd_scan_patterns : int
        Most patterns in one ``POST /v1/ebsd/scan`` request (``MATSERVE_MAX_EBSD_SCAN_PATTERNS``, 250,000), else
        413; the SDK sends bigger scans in row blocks.
    max_ebsd_refine_patterns : int
        Most patterns one ``refine=true`` request may carry (``MATSERVE_MAX_EBSD_REFINE_PATTERNS``, 256), else
        413: refinement runs at about 100 patterns/s on 2 cores.
    max_ebsd_body_bytes : int
        Largest body of the EBSD routes, JSON, binary or multipart (``MATSERVE_MAX_EBSD_BODY_BYTES``, 256 MiB),
        else 413.
    max_scattering_body_bytes : int
        Largest body of ``POST /v1/scattering/sort``, file, JSON or multipart (``MATSERVE_MAX_SCATTERING_BODY_BYTES``,
        64 MiB: a Pilatus 2M int32 frame is ~10 MB, an Eiger 4M uint32 frame ~18 MB uncompressed), else 413; checked
        from ``Content-Length`` before the body is read.
    max_scattering_frames : int
        Most detector frames in one ``POST /v1/scattering/sort`` request (``MATSERVE_MAX_SCATTERING_FRAMES``, 256),
        else 413.
    max_scattering_pixels : int
        Most decoded pixels in one ``POST /v1/scattering/sort`` request, summed over frames
        (``MATSERVE_MAX_SCATTERING_PIXELS``, 2**27 = 134 M, 512 MiB as 32-bit counts), else 413: compressed HDF5,
        CBF and TIFF files expand when decoded, and this bounds the memory a request can take.
    max_ebsd_pixels : int
        Most decoded pixels in one EBSD request (``MATSERVE_MAX_EBSD_PIXELS``, 2**26 = 67 M: 64 patterns of
        1024x1024 or 18,641 of 60x60; 256 MiB as float32), summed over every pattern of ``POST /v1/ebsd/index`` or
        the whole scan of ``POST /v1/ebsd/scan``, checked from the file's header (PNG/TIFF dimensions and pages, NPY
        header, HDF5 dataset shape) before any pixel is decoded, else 413.
    max_image_json_body_bytes : int
        Largest JSON body of the EBSD and scattering routes (``MATSERVE_MAX_IMAGE_JSON_BODY_BYTES``, 16 MiB), else
        413: numbers parsed from JSON take ~11x their text's size in Python objects before the pixel budget can
        apply; binary files (NPY, TIFF, PNG, HDF5) keep the route's own, higher limit.
    rate_limit_per_minute : int
        Requests per minute one client may make to the public prediction routes (``MATSERVE_RATE_LIMIT_PER_MINUTE``;
        0 turns rate limiting off, API keys included), else 429 with ``Retry-After``; see :mod:`matserve.rate_limit`.
        A client is its address (``X-Forwarded-For`` is not read).
    rate_limit_burst : int
        Size of each client's token bucket, in requests (``MATSERVE_RATE_LIMIT_BURST``; 0 = ``rate_limit_per_minute``).
    api_keys : str or None
        ``MATSERVE_API_KEYS``: optional API keys with their own per-minute limits, ``key1:600,key2:6000`` (optionally
        ``key:per_minute:burst``; limit 0: not limited); a request that sends one in ``X-API-Key`` (or
        ``Authorization: Bearer``) is limited by key instead of by address. An unknown key is counted by address,
        like no key, not refused.
    http_header_timeout_s : float
        A connection must send a request's complete headers within this many seconds of opening (or of its
        previous response), else it is closed (``MATSERVE_HTTP_HEADER_TIMEOUT_S``; 0: no limit); see
        :mod:`matserve.http_timeouts`.
    http_body_timeout_s : float
        Longest wait for the next part of a request body, in seconds (``MATSERVE_HTTP_BODY_TIMEOUT_S``; 0: no limit),
        else 408 and the connection is closed.
    ebsd_preload : bool
        ``MATSERVE_EBSD_PRELOAD`` (default off): import kikuchipy/orix, load the Ni master pattern, build the
        refinement dictionary and compile the refinement kernels in a background thread at start-up, so that
        the first refinement, HDF5 scan or IPF map does not pay the ~80 s this takes (start-up itself stays
        fast).
    ort_threads : int
        ONNX Runtime intra-op threads (``MATSERVE_ORT_THREADS``; 0 = one per core).
    ort_spinning : bool
        Let ONNX Runtime's idle threads spin-wait (``MATSERVE_ORT_SPINNING``, default off): lower small-batch
        latency, but CPU burnt while waiting, which hurts when other processes share the cores.
    admin_token : str or None
        ``MATSERVE_ADMIN_TOKEN``: bearer token of the admin routes (``/v1/admin/...``); unset, they answer 403.
    triton_url : str or None
        ``TRITON_URL``: when set, tensor work goes to this Triton (``grpc://host:8001`` or
        ``http://host:8000``) instead of in-process ONNX Runtime; unset (default) runs in-process.
    triton_timeout_s : float
        Longest a Triton call may take (``MATSERVE_TRITON_TIMEOUT_S``, default 60 s); an unreachable
        Triton is reported at once (connection refused), well inside 1 s.
    redis_url : str or None
        ``REDIS_URL``, e.g. ``redis://localhost:6379/0``. When set, the prediction cache and the batch jobs
        live in Redis (shared by every replica and worker, jobs survive restarts); when unset, both live in
        the API process's memory (lost on restart, jobs run only by the embedded worker).
    cache_enabled : bool
        ``MATSERVE_CACHE`` (default on; ``0`` turns the prediction cache off).
    cache_ttl_s : int
        Lifetime of a cached prediction, in seconds (``MATSERVE_CACHE_TTL_S``, 1 day).
    cache_max_items : int
        Most predictions kept by the in-memory cache used without Redis (``MATSERVE_CACHE_MAX_ITEMS``);
        the least recently used go first.
    redis_timeout_s : float
        Connect and read timeout of the cache's Redis calls, in seconds (``MATSERVE_REDIS_TIMEOUT_S``, 0.25):
        a hung Redis costs a request at most about this long.
    redis_retry_after_s : float
        After a failed Redis call the cache is bypassed for this long, in seconds, then one request probes
        Redis again (``MATSERVE_REDIS_RETRY_AFTER_S``, 5).
    max_job_body_bytes : int
        Largest ``POST /v1/jobs`` body (``MATSERVE_MAX_JOB_BODY_BYTES``, 64 MiB).
    max_job_items : int
        Most inputs in one job (``MATSERVE_MAX_JOB_ITEMS``, 10⁶).
    job_chunk_size : int
        Inputs per chunk, the unit of work a worker takes, finishes and records (``MATSERVE_JOB_CHUNK_SIZE``,
        1000).
    job_ttl_s : int
        How long a job and its results are kept, in seconds (``MATSERVE_JOB_TTL_S``, 7 days); renewed when
        the job finishes.
    job_claim_idle_s : float
        A chunk taken by a worker that has not finished it after this many seconds is handed to another
        worker (``MATSERVE_JOB_CLAIM_IDLE_S``, 60). Keep it well above the time one chunk takes.
    job_max_attempts : int
        A chunk started this many times without finishing (its workers crashed or hung) fails its job
        (``MATSERVE_JOB_MAX_ATTEMPTS``, 3).
    job_chunk_pause_s : float
        Seconds a worker sleeps after each chunk (``MATSERVE_JOB_CHUNK_PAUSE_S``, 0): throttles batch work so
        that an embedded worker leaves CPU to interactive requests; the tests use it to slow jobs down.
    embedded_workers : int
        Job worker threads inside the API server process (``MATSERVE_EMBEDDED_WORKERS``, 1), so that
        ``matserve serve`` alone completes jobs. Set 0 where separate ``matserve worker`` processes run jobs
        (Kubernetes); without Redis, 0 means jobs are refused (503).
    worker_metrics_port : int
        Port on which ``matserve worker`` exposes Prometheus metrics (``MATSERVE_WORKER_METRICS_PORT``; 0 = off).
    """

    models_dir: Path = field(default_factory=lambda: Path(os.environ.get("MATSERVE_MODELS_DIR", REPO_MODELS_DIR)))
    max_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_BODY_BYTES", 4 * MIB))
    max_formulas: int = field(default_factory=lambda: _int("MATSERVE_MAX_FORMULAS", 10_000))
    max_patterns: int = field(default_factory=lambda: _int("MATSERVE_MAX_PATTERNS", 1024))
    max_xrd_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_XRD_BODY_BYTES", 64 * MIB))
    max_ebsd_patterns: int = field(default_factory=lambda: _int("MATSERVE_MAX_EBSD_PATTERNS", 4096))
    max_ebsd_scan_patterns: int = field(default_factory=lambda: _int("MATSERVE_MAX_EBSD_SCAN_PATTERNS", 250_000))
    max_ebsd_refine_patterns: int = field(default_factory=lambda: _int("MATSERVE_MAX_EBSD_REFINE_PATTERNS", 256))
    max_ebsd_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_EBSD_BODY_BYTES", 256 * MIB))
    max_scattering_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_SCATTERING_BODY_BYTES", 64 * MIB))
    max_scattering_frames: int = field(default_factory=lambda: _int("MATSERVE_MAX_SCATTERING_FRAMES", 256))
    max_scattering_pixels: int = field(default_factory=lambda: _int("MATSERVE_MAX_SCATTERING_PIXELS", 2**27))
    max_ebsd_pixels: int = field(default_factory=lambda: _int("MATSERVE_MAX_EBSD_PIXELS", 2**26))
    max_image_json_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_IMAGE_JSON_BODY_BYTES", 16 * MIB))
    rate_limit_per_minute: int = field(default_factory=lambda: _int("MATSERVE_RATE_LIMIT_PER_MINUTE", 600))
    rate_limit_burst: int = field(default_factory=lambda: _int("MATSERVE_RATE_LIMIT_BURST", 0))
    api_keys: str | None = field(default_factory=lambda: _optional_str("MATSERVE_API_KEYS"), repr=False)
    http_header_timeout_s: float = field(default_factory=lambda: _float("MATSERVE_HTTP_HEADER_TIMEOUT_S", 10.0))
    http_body_timeout_s: float = field(default_factory=lambda: _float("MATSERVE_HTTP_BODY_TIMEOUT_S", 30.0))
    ebsd_preload: bool = field(default_factory=lambda: _bool("MATSERVE_EBSD_PRELOAD", False))
    ort_threads: int = field(default_factory=lambda: _int("MATSERVE_ORT_THREADS", 0))
    ort_spinning: bool = field(default_factory=lambda: _bool("MATSERVE_ORT_SPINNING", False))
    admin_token: str | None = field(default_factory=lambda: _optional_str("MATSERVE_ADMIN_TOKEN"), repr=False)
    triton_url: str | None = field(default_factory=lambda: os.environ.get("TRITON_URL") or None)
    triton_fallback: str = field(default_factory=lambda: os.environ.get("MATSERVE_TRITON_FALLBACK", "ort").lower())
    triton_retry_after_s: float = field(default_factory=lambda: _float("MATSERVE_TRITON_RETRY_AFTER_S", 2.0))
    triton_timeout_s: float = field(default_factory=lambda: float(os.environ.get("MATSERVE_TRITON_TIMEOUT_S", 60)))
    redis_url: str | None = field(default_factory=lambda: _optional_str("REDIS_URL"))
    cache_enabled: bool = field(default_factory=lambda: _bool("MATSERVE_CACHE", True))
    cache_ttl_s: int = field(default_factory=lambda: _int("MATSERVE_CACHE_TTL_S", DAY_S))
    cache_max_items: int = field(default_factory=lambda: _int("MATSERVE_CACHE_MAX_ITEMS", 100_000))
    redis_timeout_s: float = field(default_factory=lambda: _float("MATSERVE_REDIS_TIMEOUT_S", 0.25))
    redis_retry_after_s: float = field(default_factory=lambda: _float("MATSERVE_REDIS_RETRY_AFTER_S", 5.0))
    max_job_body_bytes: int = field(default_factory=lambda: _int("MATSERVE_MAX_JOB_BODY_BYTES", 64 * MIB))
    max_job_items: int = field(default_factory=lambda: _int("MATSERVE_MAX_JOB_ITEMS", 1_000_000))
    job_chunk_size: int = field(default_factory=lambda: _int("MATSERVE_JOB_CHUNK_SIZE", 1000))
    job_ttl_s: int = field(default_factory=lambda: _int("MATSERVE_JOB_TTL_S", 7 * DAY_S))
    job_claim_idle_s: float = field(default_factory=lambda: _float("MATSERVE_JOB_CLAIM_IDLE_S", 60.0))
    job_max_attempts: int = field(default_factory=lambda: _int("MATSERVE_JOB_MAX_ATTEMPTS", 3))
    job_chunk_pause_s: float = field(default_factory=lambda: _float("MATSERVE_JOB_CHUNK_PAUSE_S", 0.0))
    embedded_workers: int = field(default_factory=lambda: _int("MATSERVE_EMBEDDED_WORKERS", 1))
    worker_metrics_port: int = field(default_factory=lambda: _int("MATSERVE_WORKER_METRICS_PORT", 0))
