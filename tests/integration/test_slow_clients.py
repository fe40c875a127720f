"""Slow clients against a real server with 2 s header and body timeouts: raw sockets that dribble or stall."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from matserve.devserver import running_server
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
SLACK_S = 1.5
BODY = json.dumps({"formulas": ["NaCl"]}).encode()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("slow-clients")
    env = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S),
           "MATSERVE_HTTP_BODY_TIMEOUT_S": str(TIMEOUT_S)}  # fmt: skip
    with running_server(MODELS_DIR, workdir / "server.log", env) as url:
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closed the connection (EOF or reset) within ``wait_s`` seconds; reads nothing else."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def metric(url: str, phase: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("matserve_http_timeouts_total{") and f'phase="{phase}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_headers_sent_a_byte_a_second_are_cut_off(server_url: str) -> None:
    before = metric(server_url, "headers")
    request = (f"POST /v1/formation-enthalpy HTTP/1.1\r\nHost: {urlsplit(server_url).netloc}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip
    with connect(server_url) as sock:
        start_s = time.monotonic()
        sent = 0
        while not closed_by_server(sock, wait_s=1.0):  # one byte per second
            assert time.monotonic() - start_s < TIMEOUT_S + SLACK_S, "the server kept a dribbling connection"
            try:
                sock.sendall(request[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        elapsed_s = time.monotonic() - start_s
    assert TIMEOUT_S - 0.3 <= elapsed_s <= TIMEOUT_S + SLACK_S
    assert sent < len(request)
    assert metric(server_url, "headers") == before + 1


def test_a_connection_that_sends_nothing_is_closed(server_url: str) -> None:
    with connect(server_url) as sock:
        start_s = time.monotonic()
        assert closed_by_server(sock, wait_s=TIMEOUT_S + SLACK_S)
        assert time.monotonic() - start_s >= TIMEOUT_S - 0.3


def test_a_stalled_body_gets_408_and_the_connection_is_closed(server_url: str) -> None:
    before = metric(server_url, "body")
    head = (f"POST /v1/formation-enthalpy HTTP/1.1\r\nHost: {urlsplit(server_url).netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip
    with connect(server_url) as sock:
        sock.sendall(head + BODY[:5])  # headers complete, then the body stops
        start_s = time.monotonic()
        answer = read_until_closed(sock)  # the server answers, then closes
        elapsed_s = time.monotonic() - start_s
    assert TIMEOUT_S - 0.3 <= elapsed_s <= TIMEOUT_S + SLACK_S
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "request_timeout"
    assert "no data for 2 s" in error["message"]
    assert metric(server_url, "body") == before + 1


def test_a_slow_but_steady_body_longer_than_both_timeouts_is_served(server_url: str) -> None:
    head = (f"POST /v1/formation-enthalpy HTTP/1.1\r\nHost: {urlsplit(server_url).netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
    with connect(server_url) as sock:
        sock.sendall(head)
        start_s = time.monotonic()
        for part in (BODY[:8], BODY[8:16], BODY[16:]):  # a part every 1.2 s: 3.6 s in all, each wait < 2 s
            time.sleep(1.2)
            sock.sendall(part)
        answer = read_until_closed(sock)
        assert time.monotonic() - start_s > TIMEOUT_S + 1  # the request outlived the header timeout
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["results"][0]["formula"] == "NaCl"


def test_normal_requests_on_the_same_server_still_work(server_url: str) -> None:
    with httpx.Client(base_url=server_url, timeout=30) as http:
        for pause_s in (0.0, 0.5, TIMEOUT_S + 0.5):  # the last after the idle connection was closed
            time.sleep(pause_s)
            response = http.post("/v1/formation-enthalpy", json={"formulas": ["NaCl", "Fe2O3"]})
            assert response.status_code == 200, response.text
            assert len(response.json()["results"]) == 2
        assert http.get("/v1/models").status_code == 200
