"""Prometheus metrics per model and version (exported on BentoML's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
