"""The prediction cache against a real redis-server: hits, normalised keys, TTL, and Redis dying or hanging."""

from __future__ import annotations

import statistics
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from matserve.cache import MemoryCache
from tests.conftest import RedisStack

ENDPOINT = "/v1/formation-enthalpy"
MODEL = "formation_enthalpy"


def metric_total(url: str, sample: str, **labels: str) -> float:
    """Sum of the ``sample`` values on ``/metrics`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) of the formation enthalpy cache so far."""
    name = "matserve_cache_requests_total"
    return metric_total(url, name, model=MODEL, result="hit"), metric_total(url, name, model=MODEL, result="miss")


def predict(url: str, formulas: list[str]) -> tuple[dict, float]:
    """The response body and its latency in seconds; asserts HTTP 200."""
    started = time.perf_counter()
    response = httpx.post(url + ENDPOINT, json={"formulas": formulas}, timeout=30)
    elapsed_s = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return response.json(), elapsed_s


def values(body: dict) -> list[tuple]:
    """What must not change between a computed and a cached answer (formula echo aside)."""
    return [(r["normalized_formula"], r["formation_enthalpy_ev_per_atom"], r["uncertainty_ev_per_atom"], r["error"])
            for r in body["results"]]  # fmt: skip


def test_miss_then_hit_with_normalised_keys_and_the_ttl_setting(redis_stack: RedisStack) -> None:
    url, redis_client = redis_stack.url, redis_stack.redis.client()
    hits_before, misses_before = cache_counts(url)
    first, _ = predict(url, ["Mg2SiO4", "Xx2", "Cu"])
    hits_mid, misses_mid = cache_counts(url)
    cache_lines = [line for line in httpx.get(url + "/metrics").text.splitlines() if "matserve_cache" in line]
    assert (hits_mid - hits_before, misses_mid - misses_before) == (0, 2), cache_lines  # Xx2 is never looked up

    second, _ = predict(url, ["SiMg2O4", "Mg4Si2O8", "Xx2", "Cu"])
    hits_after, misses_after = cache_counts(url)
    assert (hits_after - hits_mid, misses_after - misses_mid) == (3, 0)
    assert second["model"] == first["model"] == MODEL and second["version"] == first["version"]
    assert [r["formula"] for r in second["results"]] == ["SiMg2O4", "Mg4Si2O8", "Xx2", "Cu"]
    assert values(second) == [values(first)[0], values(first)[0], *values(first)[1:]]
    assert "unknown element symbol 'Xx'" in second["results"][2]["error"]

    key = f"matserve:cache:v1:{MODEL}:{first['version']}:Mg2SiO4"
    assert 590 <= redis_client.ttl(key) <= 600  # MATSERVE_CACHE_TTL_S=600
    assert redis_client.keys("matserve:cache:*Xx*") == []  # per-item errors are not cached
    models = httpx.get(url + "/v1/models").json()
    assert models["cache"] == {"backend": "redis", "ttl_s": 600, "shared": True, "available": True}


def test_dead_redis_is_bypassed_without_delay_and_the_cache_comes_back(redis_stack: RedisStack) -> None:
    url, redis_server = redis_stack.url, redis_stack.redis
    formulas = [f"Li{i}Fe{i + 1}P2O7" for i in range(1, 21)]
    expected, _ = predict(url, formulas)  # computed and cached
    bypass_before = metric_total(url, "matserve_cache_bypass_total")
    warnings_before = redis_stack.log_path.read_text().count("is unavailable")

    redis_server.kill()
    latencies_s = []
    for _ in range(15):
        body, elapsed_s = predict(url, formulas)
        assert values(body) == values(expected) and body["version"] == expected["version"]
        latencies_s.append(elapsed_s)
    assert max(latencies_s) < 1.0, latencies_s  # a refused connection fails at once
    assert metric_total(url, "matserve_cache_bypass_total", reason="redis_error") >= 1
    assert metric_total(url, "matserve_cache_bypass_total") - bypass_before >= 15  # every request bypassed
    log = redis_stack.log_path.read_text()
    assert log.count("is unavailable") - warnings_before == 1, log[-3000:]  # one warning per outage

    redis_server.start()  # empty: the cache refills
    deadline = time.monotonic() + 10
    hits_before, _ = cache_counts(url)
    while cache_counts(url)[0] == hits_before:
        assert time.monotonic() < deadline, "the cache was not used again after Redis came back"
        body, _ = predict(url, formulas)
        assert values(body) == values(expected)
        time.sleep(0.2)
    assert redis_server.client().exists(f"matserve:cache:v1:{MODEL}:{expected['version']}:LiFe2P2O7")
    assert "reachable again" in redis_stack.log_path.read_text()


def test_hung_redis_costs_at_most_the_timeout_once_per_breaker_period(redis_stack: RedisStack) -> None:
    url, redis_server = redis_stack.url, redis_stack.redis
    formulas = ["NaCl", "KBr", "CsI", "LiF"]
    expected, _ = predict(url, formulas)
    baseline_s = statistics.median(predict(url, formulas)[1] for _ in range(8))  # the machine's own latency
    errors_before = metric_total(url, "matserve_cache_bypass_total", reason="redis_error")
    skipped_before = metric_total(url, "matserve_cache_bypass_total", reason="circuit_open")
    redis_server.pause()  # connections are accepted, nothing answers: a call waits for the read timeout
    started_s = time.monotonic()
    try:
        latencies_s = []
        for _ in range(12):
            body, elapsed_s = predict(url, formulas)
            assert values(body) == values(expected)
            latencies_s.append(elapsed_s)
            time.sleep(0.1)
    finally:
        redis_server.resume()
    paused_s = time.monotonic() - started_s
    # MATSERVE_REDIS_TIMEOUT_S=0.25: a probe costs ~0.25 s, and the breaker skips Redis for 1 s after it fails,
    # so most requests pay nothing and Redis is tried about once a second.
    assert max(latencies_s) < baseline_s + 1.0, (baseline_s, latencies_s)
    assert statistics.median(latencies_s) < baseline_s + 0.15, (baseline_s, latencies_s)
    errors = metric_total(url, "matserve_cache_bypass_total", reason="redis_error") - errors_before
    assert 1 <= errors <= paused_s / 1.0 + 2, (errors, paused_s)
    assert metric_total(url, "matserve_cache_bypass_total", reason="circuit_open") - skipped_before >= 12 - errors
    deadline = time.monotonic() + 10
    hits_before, _ = cache_counts(url)
    while cache_counts(url)[0] == hits_before:
        assert time.monotonic() < deadline, "the cache was not used again after Redis resumed"
        predict(url, formulas)
        time.sleep(0.2)


def test_without_redis_an_in_memory_cache_answers(server_url: str) -> None:
    models = httpx.get(server_url + "/v1/models").json()
    assert models["cache"]["backend"] == "memory" and models["cache"]["shared"] is False
    first, _ = predict(server_url, ["Al2O3", "Xx2"])
    hits_before, _ = cache_counts(server_url)
    second, _ = predict(server_url, ["O3Al2", "Xx2"])
    assert cache_counts(server_url)[0] - hits_before == 1
    assert values(second) == values(first) and second["results"][0]["formula"] == "O3Al2"


def test_the_in_memory_cache_is_bounded_and_expires() -> None:
    cache = MemoryCache(ttl_s=1, max_items=3)
    cache.set_many({k: {"v": i} for i, k in enumerate("abcd")})  # "a" is evicted: least recently used
    assert cache.size == 3 and cache.get_many(["a", "b", "d"]) == [None, {"v": 1}, {"v": 3}]
    cache.set_many({"e": {"v": 4}})  # "c" is now the least recently used ("b" and "d" were just read)
    assert cache.get_many(["c", "b"]) == [None, {"v": 1}]
    time.sleep(1.1)
    assert cache.get_many(["b", "d", "e"]) == [None, None, None]
