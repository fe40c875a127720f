"""Registry integrity: sha256 verified before loading; tampered or incomplete folders refused, others kept."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from matserve.registry import ModelDegraded, Registry, RegistryError, verify, write_card
from matserve.runtimes.onnxruntime import OnnxRuntime

CARD = {"task": "regression", "inputs": [], "outputs": [], "data": {}, "split": {}, "metrics": {},
        "created": "2026-11-21T00:00:00+00:00", "code_commit": "test"}  # fmt: skip


def make_version(root: Path, name: str, version: str, scale: float = 2.0) -> Path:
    """A real (tiny) ONNX graph y = scale * x, with a card written by the registry's own writer."""
    folder = root / name / version
    folder.mkdir(parents=True)
    node = helper.make_node("Mul", ["x", "scale"], ["y"])
    graph = helper.make_graph(
        [node], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [1], [scale])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, folder / "model.onnx")
    write_card(folder, {"name": name, "version": version, **CARD})
    return folder


def test_lists_versions_and_picks_the_highest_as_active(tmp_path: Path) -> None:
    for version in ("1.0.0", "1.10.0", "1.2.0"):
        make_version(tmp_path, "m", version)
    registry = Registry(tmp_path)
    assert registry.versions("m") == ["1.0.0", "1.2.0", "1.10.0"]
    assert registry.active_version("m") == "1.10.0"
    assert registry.get("m").version == "1.10.0"


def test_set_active_is_persistent(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "1.0.0")
    make_version(tmp_path, "m", "2.0.0")
    Registry(tmp_path).set_active("m", "1.0.0")
    assert Registry(tmp_path).active_version("m") == "1.0.0"
    with pytest.raises(KeyError):
        Registry(tmp_path).set_active("m", "3.0.0")


def test_a_flipped_byte_is_refused_and_other_models_keep_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = make_version(tmp_path, "broken", "1.0.0")
    make_version(tmp_path, "healthy", "1.0.0", scale=3.0)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="matserve.registry"):
        registry = Registry(tmp_path)
    assert registry.names() == ["healthy"]
    assert "sha256 mismatch for model.onnx" in registry.refused["broken/1.0.0"]
    assert any("refusing model version" in r.message and "sha256 mismatch" in r.message for r in caplog.records)
    runtime = OnnxRuntime()
    out = runtime.run(registry.get("healthy"), {"x": np.ones((2, 2), np.float32)})
    np.testing.assert_allclose(out["y"], 3.0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.onnx").unlink(), "model.onnx listed in card is missing"),
        (lambda f: (f / "card.json").unlink(), "no card.json"),
        (lambda f: (f / "card.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "card.json").write_text(json.dumps({"name": "m"})), "card lacks"),
        (lambda f: shutil.move(f, f.parent / "9.9.9"), "card names m/1.0.0, folder is m/9.9.9"),
    ],
)
def test_incomplete_folders_are_refused_with_a_reason(tmp_path: Path, damage, message: str) -> None:
    folder = make_version(tmp_path, "m", "1.0.0")
    damage(folder)
    registry = Registry(tmp_path)
    assert registry.names() == []
    assert any(message in reason for reason in registry.refused.values())


def test_verify_accepts_what_write_card_wrote(tmp_path: Path) -> None:
    folder = make_version(tmp_path, "m", "1.0.0")
    found = verify(folder)
    assert found.card["files"]["model.onnx"]["sha256"]
    with pytest.raises(RegistryError):
        verify(tmp_path / "m" / "nope")


def test_a_refused_active_version_degrades_the_model_instead_of_falling_back(tmp_path: Path) -> None:
    make_version(tmp_path, "m", "1.0.0")
    newest = make_version(tmp_path, "m", "2.0.0")
    registry = Registry(tmp_path)
    assert registry.active_version("m") == "2.0.0" and not registry.degraded
    (newest / "model.onnx").write_bytes(b"tampered")
    registry.refresh()
    assert "sha256 mismatch" in registry.degraded["m"]
    with pytest.raises(ModelDegraded, match=r"active version 2\.0\.0"):
        registry.get("m")
    assert registry.get("m", "1.0.0").version == "1.0.0"  # a pinned valid version still answers
    assert registry.intended_version("m") == "2.0.0"
    registry.set_active("m", "1.0.0")  # an operator activates another version
    assert registry.get("m").version == "1.0.0" and "m" not in registry.degraded
    assert Registry(tmp_path).get("m").version == "1.0.0"


def test_messages_name_folders_relative_to_the_registry(tmp_path: Path) -> None:
    (make_version(tmp_path, "m", "1.0.0") / "model.onnx").write_bytes(b"tampered")
    registry = Registry(tmp_path)
    for text in [*registry.refused.values(), *registry.degraded.values()]:
        assert str(tmp_path) not in text and "m/1.0.0" in text
