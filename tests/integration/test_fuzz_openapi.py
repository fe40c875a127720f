"""Property-based fuzzing of the live OpenAPI document with schemathesis: no 5xx, every answer as documented.

schemathesis generates requests from ``GET /v1/openapi.json`` (valid ones and, in its negative mode, invalid
ones) for every operation, sends them to a real ``matserve serve`` and checks each answer:

* ``not_a_server_error``: no status 5xx;
* ``status_code_conformance``: the status is one the operation documents;
* ``content_type_conformance`` and ``response_schema_conformance``: the body is the documented JSON;
* ``response_headers_conformance``: documented headers are present and well-formed.

The CI run is bounded (``MAX_EXAMPLES`` per operation and phase, at least :data:`MIN_REQUESTS` requests in
all) and seeded, so that a run is reproducible; ``make fuzz`` runs a long one with a random seed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"  # fmt: skip
MAX_EXAMPLES = 80
MIN_REQUESTS = 2000
SEED = 20261207


def run_schemathesis(base_url: str, max_examples: int, seed: int | None, report_dir: Path) -> tuple[int, str]:
    """Run the schemathesis CLI against a server; ``(exit code, printed output)``."""
    command = [
        str(SCHEMATHESIS), "run", f"{base_url}/v1/openapi.json", "--url", f"{base_url}/v1", "--checks", CHECKS,
        "--mode", "all", "--max-examples", str(max_examples), "--generation-database", "none",
        "--suppress-health-check", "all", "--request-timeout", "120", "--report", "junit",
        "--report-dir", str(report_dir), "--no-color", "--workers", "1",
    ]  # fmt: skip
    if seed is not None:
        command += ["--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=report_dir)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(server_url: str, tmp_path: Path) -> None:
    code, output = run_schemathesis(server_url, MAX_EXAMPLES, SEED, tmp_path)
    assert code == 0, output[-6000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counted is not None, output[-3000:]
    generated, passed = int(counted.group(1)), int(counted.group(2))
    print(f"schemathesis: {generated} requests generated, {passed} passed (seed {SEED}, -n {MAX_EXAMPLES})")
    assert generated >= MIN_REQUESTS, f"only {generated} requests generated:\n{output[-3000:]}"
    assert passed == generated
    operations = re.search(r"Tested:\s+(\d+)", output)
    selected = re.search(r"Selected:\s+(\d+)/(\d+)", output)
    assert operations and selected and int(operations.group(1)) == int(selected.group(2)), output[-3000:]
    assert httpx.get(f"{server_url}/readyz").status_code == 200  # and the server is still there
