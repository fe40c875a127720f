"""Prometheus metrics per model and version (exported on BentoML's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_SECONDS = Histogram(
    "matserve_stage_duration_seconds",
    "Time spent in each lifecycle stage (preprocess, predict, postprocess) per request.",
    ["model", "version", "stage"],
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
)
REQUESTS = Counter(
    "matserve_requests_total", "Prediction requests answered, by outcome.", ["model", "version", "outcome"]
)
ITEMS = Counter("matserve_items_total", "Items (e.g. formulas) predicted, by outcome.", ["model", "version", "outcome"])
CACHE_REQUESTS = Counter(
    "matserve_cache_requests_total",
    "Prediction cache look-ups per item, by result (hit or miss); items whose look-up bypassed the cache are not counted.",
    ["model", "version", "result"],
)
CACHE_BYPASS = Counter(
    "matserve_cache_bypass_total",
    "Cache operations skipped or failed, by reason: redis_error (a Redis call failed or timed out) or "
    "circuit_open (Redis skipped for a while after a failure). Predictions go on without the cache.",
    ["reason"],
)
JOBS = Counter("matserve_jobs_total", "Batch job events (submitted, succeeded, failed, cancelled).", ["model", "event"])
JOB_CHUNKS = Counter(
    "matserve_job_chunks_total",
    "Job chunks handled by workers in this process, by outcome (done, skipped, failed).",
    ["outcome"],
)
JOB_ITEMS = Counter("matserve_job_items_total", "Job items predicted by workers in this process.", ["model"])
RUNTIME_FALLBACKS = Counter(
    "matserve_runtime_fallback_total",
    "Predictions run by in-process ONNX Runtime because Triton (TRITON_URL) was unreachable.",
    ["model", "version"],
)
MODEL_DEGRADED = Gauge(
    "matserve_model_degraded",
    "1 while a model's active version is refused by the registry (requests without a pinned version get 503), else 0.",
    ["model"],
    multiprocess_mode="max",
)
RATE_LIMITED = Counter(
    "matserve_rate_limited_total",
    "Requests refused with 429 by the per-client rate limit, by route (the limited route prefix, e.g. "
    "/v1/formation-enthalpy) and by what the client was counted by (address or api_key).",
    ["route", "by"],
)
RATE_LIMIT_FALLBACK = Counter(
    "matserve_rate_limit_fallback_total",
    "Rate-limit decisions taken by this process's in-memory buckets because the shared Redis ones were unusable, "
    "by reason: redis_error (the Redis call failed or timed out) or circuit_open (Redis skipped for a while after a "
    "failure). Requests are never refused because Redis is down.",
    ["reason"],
)
HTTP_TIMEOUTS = Counter(
    "matserve_http_timeouts_total",
    "Connections closed for being too slow, by phase: headers (a request's headers incomplete after "
    "MATSERVE_HTTP_HEADER_TIMEOUT_S), idle (no request at all in that time) or body (no body data for "
    "MATSERVE_HTTP_BODY_TIMEOUT_S: answered 408).",
    ["phase"],
)
