"""The one lifecycle entry point (:meth:`matserve.models.base.ServedModel.__call__`): every model variant (``sort``,
``index``, ``index_scan``, ``with_reconstructions``) is counted (``matserve_requests_total``,
``matserve_items_total``) and timed per stage (``matserve_stage_duration_seconds``), and only the options-free
call uses the prediction cache. In-process ONNX Runtime on the committed models; the EBSD refinement itself is
replaced by a stub here (its accuracy is tested in ``test_ebsd_matching`` and the integration tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from matserve.cache import MemoryCache
from matserve.codecs.detector_files import Frame
from matserve.errors import InputRejected
from matserve.models import ebsd_indexer
from matserve.models.base import Prediction, ServedModel
from matserve.models.ebsd_indexer import EbsdIndexerModel, EbsdOptions
from matserve.models.scattering_sorter import ScatteringOptions, ScatteringSorterModel
from matserve.models.xrd_novelty import NoveltyOptions, XrdNoveltyModel
from matserve.registry import ModelVersion, Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR

LIFECYCLE = ("preprocess", "predict", "postprocess")


class Metrics:
    """Snapshot of one model version's request, item and stage counters; :meth:`delta` since the snapshot."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = {"model": model, "version": version}
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        values = {}
        for outcome in ("ok", "error"):
            values[f"requests_{outcome}"] = self._sample("matserve_requests_total", outcome=outcome)
            values[f"items_{outcome}"] = self._sample("matserve_items_total", outcome=outcome)
        for stage in (*LIFECYCLE, "refine", "cache_read", "cache_write"):
            values[stage] = self._sample("matserve_stage_duration_seconds_count", stage=stage)
        for result in ("hit", "miss"):
            values[f"cache_{result}"] = self._sample("matserve_cache_requests_total", result=result)
        return values

    def _sample(self, name: str, **extra: str) -> float:
        return REGISTRY.get_sample_value(name, {**self.labels, **extra}) or 0.0

    def delta(self) -> dict[str, float]:
        """Counters that moved since the snapshot (the others are left out)."""
        after = self._read()
        return {key: after[key] - self.before[key] for key in after if after[key] != self.before[key]}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(MODELS_DIR)


@pytest.fixture(scope="module")
def runtime() -> OnnxRuntime:
    return OnnxRuntime(intra_op_threads=1)


# -- scattering_sorter.sort --------------------------------------------------------------------------------------


def ring_image(shape: tuple[int, int] = (195, 487)) -> np.ndarray:
    """A powder ring with Poisson noise (int32 counts)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    radius = np.hypot(rows - shape[0] / 2, cols - shape[1] / 2)
    ring = 1000 * np.exp(-((radius - shape[0] / 3) ** 2) / 50)
    return (ring + np.random.default_rng(0).poisson(5, shape)).astype(np.int32)


def test_sort_is_counted_and_timed_and_equals_the_call_with_options(registry: Registry, runtime: OnnxRuntime) -> None:
    sorter = ScatteringSorterModel(registry, runtime)
    version = sorter.version().version
    frames = [Frame(ring_image(), None, "a"), Frame(np.zeros((64, 64), np.int32), None, "b"), "unreadable"]
    metrics = Metrics("scattering_sorter", version)
    prediction = sorter.sort(frames, saliency=True)
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 1, "items_error": 2, **dict.fromkeys(LIFECYCLE, 1)}
    assert prediction.results[0]["saliency_png_base64"] and prediction.results[0]["saliency_label"]
    assert prediction.results[2]["error"] == "unreadable"
    direct = sorter(frames, options=ScatteringOptions(saliency=True))
    assert direct.results == prediction.results
    plain = sorter.sort(frames)
    assert plain.results[0]["saliency_png_base64"] is None
    assert plain.results[0]["technique_probabilities"] == prediction.results[0]["technique_probabilities"]


def test_a_bad_saliency_label_is_refused_before_the_request_is_counted(
    registry: Registry, runtime: OnnxRuntime
) -> None:
    sorter = ScatteringSorterModel(registry, runtime)
    metrics = Metrics("scattering_sorter", sorter.version().version)
    with pytest.raises(InputRejected, match="saliency_label 'powder' is not a label of scattering_sorter"):
        sorter.sort([Frame(ring_image(), None, "a")], saliency_label="powder")
    assert metrics.delta() == {}
    with pytest.raises(InputRejected, match="accepted: saxs, waxs"):  # the lifecycle checks it too
        sorter([Frame(ring_image(), None, "a")], options=ScatteringOptions(saliency_label="powder"))
    assert metrics.delta() == {"requests_error": 1, "preprocess": 1}


def test_wrapper_options_are_keyword_only(registry: Registry, runtime: OnnxRuntime) -> None:
    sorter = ScatteringSorterModel(registry, runtime)
    with pytest.raises(TypeError):
        sorter.sort([], None)  # type: ignore[misc]
    with pytest.raises(TypeError):
        EbsdIndexerModel(registry, runtime).index([], None)  # type: ignore[misc]
    with pytest.raises(TypeError):
        XrdNoveltyModel(registry, runtime).with_reconstructions([], None)  # type: ignore[misc]


# -- ebsd_indexer.index / index_scan -----------------------------------------------------------------------------


def ebsd_patterns(count: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random 60x60 uint8 images (not constant, so the codec accepts them)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:60, :60]
    return [
        (100 + 50 * np.sin(rows / (3 + k % 5)) * np.cos(cols / 4) + rng.normal(0, 5, (60, 60)))
        .clip(0, 255)
        .astype(np.uint8)
        for k in range(count)
    ]


@pytest.fixture
def stub_refinement(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the refinement by a stub that scores every orientation 0.5 unchanged; records batch sizes."""
    calls: list[int] = []

    def refine_batch(batch: Any, orientations: Any, model: ModelVersion, static_background: bool) -> Any:
        calls.append(len(batch.rows))
        return orientations.refined(orientations.quaternion, np.full(len(batch.rows), 0.5))

    monkeypatch.setattr(ebsd_indexer, "refine_batch", refine_batch)
    return calls


def test_index_is_counted_and_timed_with_refine_as_its_own_stage(
    registry: Registry, runtime: OnnxRuntime, stub_refinement: list[int]
) -> None:
    indexer = EbsdIndexerModel(registry, runtime)
    version = indexer.version().version
    items: list[np.ndarray | str] = [*ebsd_patterns(3), np.zeros((60, 60), np.uint8), "not an image"]
    metrics = Metrics("ebsd_indexer", version)
    plain = indexer.index(items)
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 3, "items_error": 2, **dict.fromkeys(LIFECYCLE, 1)}
    assert [r["refined"] for r in plain.results] == [False] * 5 and "constant" in plain.results[3]["error"]
    metrics = Metrics("ebsd_indexer", version)
    refined = indexer.index(items, refine=True)
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 3, "items_error": 2, "refine": 1,
                               **dict.fromkeys(LIFECYCLE, 1)}  # fmt: skip
    assert stub_refinement == [3]
    assert [r["refined"] for r in refined.results[:3]] == [True] * 3 and refined.results[0]["refinement_score"] == 0.5
    assert indexer(items, options=EbsdOptions(refine=True)).results == refined.results


def test_index_errors_are_counted(registry: Registry, runtime: OnnxRuntime) -> None:
    indexer = EbsdIndexerModel(registry, runtime)
    metrics = Metrics("ebsd_indexer", indexer.version().version)
    with pytest.raises(ValueError, match="outside the range the model supports"):
        indexer.index(ebsd_patterns(2), pc=[0.9, 0.9, 0.9])
    assert metrics.delta() == {"requests_error": 1, "preprocess": 1}


def test_index_scan_is_counted_and_timed_chunk_by_chunk(
    registry: Registry, runtime: OnnxRuntime, stub_refinement: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ebsd_indexer, "SCAN_CHUNK", 4)
    indexer = EbsdIndexerModel(registry, runtime)
    version = indexer.version().version
    scan = np.stack(ebsd_patterns(10)).reshape(2, 5, 60, 60)
    scan[1, 4] = 9  # constant: refused
    metrics = Metrics("ebsd_indexer", version)
    model, orientations = indexer.index_scan(scan, refine=True)
    assert model.version == version
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 9, "items_error": 1, "preprocess": 3, "predict": 3,
                               "refine": 1}  # fmt: skip
    assert stub_refinement == [9] and orientations.indexed.sum() == 9 and list(orientations.errors) == [9]
    metrics = Metrics("ebsd_indexer", version)
    with pytest.raises(ValueError, match="outside the range the model supports"):  # checked before counting
        indexer.index_scan(scan, pc=[0.9, 0.9, 0.9])
    assert metrics.delta() == {}


# -- xrd_novelty.with_reconstructions ----------------------------------------------------------------------------


def xrd_pattern(peaks: list[float]) -> dict[str, list[float]]:
    two_theta = np.linspace(10, 80, 3000)
    intensity = sum(np.exp(-((two_theta - p) ** 2) / 0.02) for p in peaks)
    return {"two_theta_deg": two_theta.tolist(), "intensity": intensity.tolist()}


def test_with_reconstructions_is_counted_and_timed(registry: Registry, runtime: OnnxRuntime) -> None:
    novelty = XrdNoveltyModel(registry, runtime)
    version = novelty.version().version
    items = [xrd_pattern([38.2, 44.4, 64.6]), {"two_theta_deg": [1, 2], "intensity": [1, 2]}, xrd_pattern([28.4])]
    metrics = Metrics("xrd_novelty", version)
    model, results, curves = novelty.with_reconstructions(items)
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 2, "items_error": 1, **dict.fromkeys(LIFECYCLE, 1)}
    assert model.version == version and sorted(curves) == [0, 2]
    assert all(pattern.shape == reconstruction.shape == (2048,) for pattern, reconstruction in curves.values())
    assert results == novelty(items).results  # the plain call answers the same results, without curves
    assert novelty(items).extras == {} and novelty(items, options=NoveltyOptions()).extras == {}


# -- caching: only the options-free call --------------------------------------------------------------------------


@dataclass(frozen=True)
class DoubleOptions:
    shout: bool = False


class Doubler(ServedModel[list[float], DoubleOptions]):
    """A model without a runtime: doubles numbers; caches by the number."""

    name = "formation_enthalpy"  # a real registry name, so that versions resolve

    def cache_key(self, item: Any) -> str | None:
        return repr(float(item))

    def preprocess(self, items: list[Any], model: ModelVersion, options: DoubleOptions | None = None) -> list[float]:
        return [float(x) for x in items]

    def predict(self, prepared: list[float], model: ModelVersion) -> dict[str, np.ndarray]:
        return {"y": 2 * np.asarray(prepared)}

    def postprocess(
        self, prepared: list[float], outputs: dict[str, np.ndarray], options: DoubleOptions | None = None
    ) -> list[dict[str, Any]]:
        loud = options is not None and options.shout
        return [{"y": float(y), "loud": loud, "error": None} for y in outputs["y"]]


def test_only_the_options_free_call_reads_and_writes_the_cache(registry: Registry) -> None:
    model = Doubler(registry, runtime=None, cache=MemoryCache(ttl_s=60, max_items=100))  # type: ignore[arg-type]
    version = model.version().version
    metrics = Metrics("formation_enthalpy", version)
    loud = model([1, 2], options=DoubleOptions(shout=True))
    assert loud.results == [{"y": 2.0, "loud": True, "error": None}, {"y": 4.0, "loud": True, "error": None}]
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 2, **dict.fromkeys(LIFECYCLE, 1)}  # no cache stage
    metrics = Metrics("formation_enthalpy", version)
    assert model([1, 2]).results[0] == {"y": 2.0, "loud": False, "error": None}  # not the cached loud result
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 2, "cache_read": 1, "cache_write": 1, "cache_miss": 2,
                               **dict.fromkeys(LIFECYCLE, 1)}  # fmt: skip
    metrics = Metrics("formation_enthalpy", version)
    assert model([1, 2]) == Prediction(model.name, version, [{"y": 2.0, "loud": False, "error": None},
                                                             {"y": 4.0, "loud": False, "error": None}])  # fmt: skip
    assert metrics.delta() == {"requests_ok": 1, "items_ok": 2, "cache_read": 1, "cache_hit": 2}
    metrics = Metrics("formation_enthalpy", version)
    assert model([1], options=DoubleOptions(shout=True)).results[0]["loud"] is True  # never from the cache
    assert "cache_read" not in metrics.delta() and "cache_hit" not in metrics.delta()
