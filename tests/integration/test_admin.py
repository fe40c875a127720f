"""Admin routes (token from MATSERVE_ADMIN_TOKEN, the k8s Secret): registry reload and cache clearing."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from matserve.cache import RedisCache, cache_key
from matserve.registry import write_card
from tests.conftest import MODELS_DIR, running_server
from tests.redis_server import RedisServer

TOKEN = "s3cret-admin-token"
MODEL = "formation_enthalpy"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _registry_copy(root: Path) -> Path:
    """A registry with the committed 1.0.0 (hard-linked graph) that tests may add versions to."""
    source = MODELS_DIR / MODEL / "1.0.0"
    folder = root / MODEL / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "model.onnx").hardlink_to(source / "model.onnx")
    (folder / "card.json").write_text((source / "card.json").read_text())
    return root


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = _registry_copy(tmp_path_factory.mktemp("admin") / "models")
    env = {"MATSERVE_ADMIN_TOKEN": TOKEN, "MATSERVE_ORT_THREADS": "1"}
    with running_server(root, root.parent / "server.log", env) as url:
        yield url, root


def _cache_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'matserve_cache_requests_total\{[^}]*result="hit"[^}]*\} ([0-9.e+]+)', text)
    return sum(float(v) for v in found)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": TOKEN}, 401), (AUTH, 200)],
)
def test_admin_routes_need_the_token(admin_server: tuple[str, Path], headers: dict[str, str], status: int) -> None:
    url, _ = admin_server
    response = httpx.delete(f"{url}/v1/admin/cache", headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["error"]["type"] == "unauthorized"
        assert "Bearer" in response.json()["error"]["message"]
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_without_a_token_setting_the_admin_api_is_off(server_url: str) -> None:
    response = httpx.post(f"{server_url}/v1/admin/registry/reload", headers=AUTH)
    assert response.status_code == 403
    assert "MATSERVE_ADMIN_TOKEN" in response.json()["error"]["message"]


def test_clearing_the_cache_makes_the_next_request_a_miss(admin_server: tuple[str, Path]) -> None:
    url, _ = admin_server
    body = {"formulas": ["MgAl2O4"]}
    first = httpx.post(f"{url}/v1/formation-enthalpy", json=body).json()
    hits = _cache_hits(url)
    assert httpx.post(f"{url}/v1/formation-enthalpy", json=body).json() == first
    assert _cache_hits(url) == hits + 1

    bad = httpx.delete(f"{url}/v1/admin/cache", params={"version": "1.0.0"}, headers=AUTH)
    assert bad.status_code == 422 and "needs 'model'" in bad.json()["error"]["message"]
    cleared = httpx.delete(f"{url}/v1/admin/cache", params={"model": MODEL, "version": "1.0.0"}, headers=AUTH)
    assert cleared.status_code == 200
    assert cleared.json()["deleted"] >= 1 and cleared.json()["backend"] == "memory"
    assert httpx.post(f"{url}/v1/formation-enthalpy", json=body).json() == first
    assert _cache_hits(url) == hits + 1  # recomputed, not a hit


def test_registry_reload_picks_up_a_new_active_version(admin_server: tuple[str, Path]) -> None:
    url, root = admin_server
    folder = root / MODEL / "1.1.0"
    folder.mkdir()
    (folder / "model.onnx").hardlink_to(MODELS_DIR / MODEL / "1.0.0" / "model.onnx")
    card = json.loads((MODELS_DIR / MODEL / "1.0.0" / "card.json").read_text())
    write_card(folder, {**card, "version": "1.1.0"})
    (root / MODEL / "ACTIVE").write_text("1.1.0\n")
    tampered = root / MODEL / "1.2.0"
    tampered.mkdir()
    (tampered / "card.json").write_text("{}")

    before = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"], "version": "1.1.0"})
    assert before.status_code == 404  # not known until the registry is re-read

    reloaded = httpx.post(f"{url}/v1/admin/registry/reload", headers=AUTH)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["models"][MODEL] == {
        "active_version": "1.1.0",
        "versions": ["1.0.0", "1.1.0"],
        "degraded": None,
    }
    assert f"{MODEL}/1.2.0" in reloaded.json()["refused"]
    answer = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}).json()
    assert answer["version"] == "1.1.0"
    pinned = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"], "version": "1.0.0"}).json()
    assert pinned["version"] == "1.0.0"
    assert (
        pinned["results"][0]["formation_enthalpy_ev_per_atom"] == answer["results"][0]["formation_enthalpy_ev_per_atom"]
    )  # same graph under two versions


def _reload_without_a_body(url: str) -> tuple[int, dict]:
    """``curl -X POST -H 'Authorization: Bearer …' …/reload``: no body, no Content-Length, no Content-Type."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=60) as sock:
        sock.sendall(f"POST /v1/admin/registry/reload HTTP/1.1\r\nHost: {parsed.host}\r\nAuthorization: Bearer "
                     f"{TOKEN}\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, json.loads(body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_text, _, rest = body.partition(b"\r\n")
        size = int(size_text, 16)
        if size == 0:
            break
        out, body = out + rest[:size], rest[size + 2 :]
    return out


def test_a_tampered_active_version_is_never_replaced_silently(admin_server: tuple[str, Path]) -> None:
    """The active version fails verification after a reload: the model is degraded (503 with the reason, named by
    /readyz, /v1/models and a gauge) instead of answering from another version, until an operator activates one."""
    url, root = admin_server
    folder = root / MODEL / "1.3.0"
    folder.mkdir()
    graph = (MODELS_DIR / MODEL / "1.0.0" / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(graph)  # a copy, not a hard link: this test flips one of its bytes
    card = json.loads((MODELS_DIR / MODEL / "1.0.0" / "card.json").read_text())
    write_card(folder, {**card, "version": "1.3.0"})
    (root / MODEL / "ACTIVE").write_text("1.3.0\n")
    status, reloaded = _reload_without_a_body(url)
    assert status == 200 and reloaded["models"][MODEL]["degraded"] is None, reloaded
    assert httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}).json()["version"] == "1.3.0"

    (folder / "model.onnx").write_bytes(graph[:-1] + bytes([graph[-1] ^ 1]))
    status, reloaded = _reload_without_a_body(url)
    assert status == 200
    assert "sha256 mismatch" in reloaded["models"][MODEL]["degraded"]
    answer = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["type"] == "unavailable"
    assert "degraded" in answer.json()["error"]["message"] and "1.3.0" in answer.json()["error"]["message"]
    pinned = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"], "version": "1.0.0"})
    assert pinned.status_code == 200 and pinned.json()["version"] == "1.0.0"
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200 and MODEL in ready.json()["degraded"]
    listed = httpx.get(f"{url}/v1/models").json()
    entry = next(m for m in listed["models"] if m["name"] == MODEL)
    assert entry["served"] is False and "sha256 mismatch" in entry["degraded"]
    assert re.search(rf'matserve_model_degraded\{{model="{MODEL}"\}} 1\.0', httpx.get(f"{url}/metrics").text)
    for text in (json.dumps(reloaded), ready.text, json.dumps(listed), answer.text):
        assert str(root) not in text and str(root.parent) not in text  # no server paths in answers

    (root / MODEL / "ACTIVE").write_text("1.0.0\n")  # the operator activates another version
    status, reloaded = _reload_without_a_body(url)
    assert status == 200 and reloaded["models"][MODEL]["degraded"] is None
    assert httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}).json()["version"] == "1.0.0"
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert re.search(rf'matserve_model_degraded\{{model="{MODEL}"\}} 0\.0', httpx.get(f"{url}/metrics").text)


def test_redis_cache_clear_deletes_only_what_was_asked(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        cache = RedisCache(server.url, ttl_s=600, timeout_s=0.25, retry_after_s=1)
        value = {"formation_enthalpy_ev_per_atom": -1.0}
        keys = {
            "a1": cache_key(MODEL, "1.0.0", "NaCl"),
            "a2": cache_key(MODEL, "1.1.0", "NaCl"),
            "b1": cache_key("xrd_phase", "1.0.0", "abc"),
            "glob": cache_key(MODEL, "1.0.*", "KCl"),  # a name with a glob character matches only itself
        }
        assert cache.set_many(dict.fromkeys(keys.values(), value))
        assert cache.clear(MODEL, "1.0.*") == 1
        assert cache.clear(MODEL, "1.0.0") == 1
        assert cache.get_many([keys["a1"], keys["a2"], keys["b1"]]) == [None, value, value]
        assert cache.clear(MODEL) == 1
        assert cache.clear() == 1
        assert cache.get_many(list(keys.values())) == [None] * 4
        server.kill()
        with pytest.raises(ConnectionError, match="unreachable"):
            cache.clear()
    finally:
        server.stop()
