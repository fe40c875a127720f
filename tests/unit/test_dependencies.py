"""The serving path and the SDK must not need TensorFlow (nor the SDK any of the server's stack)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_the_sdk_imports_only_httpx_and_pydantic_territory() -> None:
    loaded = imported_after("import matserve_client")
    assert {"httpx", "pydantic"} <= loaded
    assert not loaded & {"tensorflow", "keras", "onnxruntime", "numpy", "pymatgen", "bentoml", "matserve"}


@pytest.mark.parametrize("module", ["matserve.service", "matserve.cli", "matserve.models.formation_enthalpy"])
def test_the_serving_path_does_not_import_tensorflow(module: str) -> None:
    loaded = imported_after(f"import {module}")
    assert not loaded & {"tensorflow", "keras", "tf2onnx", "matminer", "sklearn"}
