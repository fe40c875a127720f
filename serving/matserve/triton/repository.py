"""Generate a Triton model repository from the registry (never from hand-maintained copies).

Layout written by :func:`build_repository` (``matserve triton build-repo OUT --target cpu|gpu``)::

    OUT/
      formation_enthalpy/            tensor model: element fractions in, eV/atom out
        config.pbtxt                 cpu: python backend running model.onnx with ONNX Runtime
                                     gpu: the official container's onnxruntime backend, KIND_GPU
        1/model.onnx                 registry version 1.0.0 (card.json and model.py too for cpu)
      ebsd_indexer/2/model.onnx      versions with the newest version's tensor interface
      ebsd_indexer__1.0.0/1/...      an older version with other inputs/outputs (:func:`triton_models`)
      formation_enthalpy_formulas/   domain model (python backend, both targets): formulas in (BYTES)
        config.pbtxt                 it runs the same codec as the HTTP API, then calls the tensor
        1/model.py, card.json        model above through BLS, so a gRPC client sends formulas
      xrd_phase_patterns/            domain models of the other models (:data:`DOMAIN_MODELS`): patterns,
      xrd_novelty_patterns/          images or files in, the HTTP API's decoders, codec and lifecycle
      ebsd_indexer_patterns/         inside Triton (:mod:`matserve.triton.domain`), results_json and
      scattering_sorter_images/      registry_version out; one version per registry version, with the
        <n>/model.py, card.json, ... card and its side files (e.g. latent_reference.npz)
      matserve_repository.json       what was generated from which registry files

Triton versions are integers: the registry's versions of a model, oldest first, become Triton
versions 1, 2, ... . Every config carries the map in its ``matserve_versions`` parameter (Triton
version -> registry version and model.onnx sha256) and the registry's active version in
``matserve_active_version``; the Triton runtime and the SDK read these, so a response always names
the registry version, and a Triton repository built from different files is detected.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matserve.registry import CARD_FILE, ModelVersion, Registry

Target = Literal["cpu", "gpu"]
PYTHON_MODELS = Path(__file__).resolve().parent / "python_models"
MANIFEST = "matserve_repository.json"
DOMAIN_SUFFIX = "_formulas"

_TRITON_DTYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                  "uint8": "TYPE_UINT8", "bytes": "TYPE_STRING", "bool": "TYPE_BOOL"}  # fmt: skip


@dataclass(frozen=True)
class DomainInput:
    """One input tensor of a domain model (``max_batch_size: 0``: ``dims`` is the whole shape, ``-1`` any size).

    Attributes
    ----------
    name : str
        Tensor name.
    dtype : str
        ``float32``, ``float64``, ``int64``, ``uint8`` or ``bytes``.
    dims : tuple of int
        Shape.
    optional : bool
        Whether a request may leave it out.
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class DomainModel:
    """A python-backend model that takes domain inputs and runs a served model's own codec and lifecycle.

    Attributes
    ----------
    served_model : str
        ``module:Class`` of the :class:`~matserve.models.base.ServedModel` run inside Triton.
    suffix : str
        Triton name of the domain model: the registry name plus this (``xrd_phase`` -> ``xrd_phase_patterns``).
    inputs : tuple of DomainInput
        Its input tensors.
    outputs : tuple of (str, str)
        Formulas models (``handler`` None): per-item result fields returned as 1-D tensors, with their dtype
        (``bytes`` or ``float32``); a missing number is NaN, a missing string is empty.
    handler : str, optional
        Key of :data:`matserve.triton.domain.HANDLERS`; such models answer ``results_json`` (BYTES ``[n]``: each
        item's HTTP API result as JSON), ``registry_version`` (BYTES ``[1]``) and ``typed_outputs``.
    typed_outputs : tuple of (str, int)
        Result fields also returned as FP32 tensors: ``(field, width)``, ``[n]`` for width 0, else ``[n, width]``
        (NaN where a result has no value).
    """

    served_model: str
    suffix: str
    inputs: tuple[DomainInput, ...]
    outputs: tuple[tuple[str, str], ...] = ()
    handler: str | None = None
    typed_outputs: tuple[tuple[str, int], ...] = ()

    @property
    def input_name(self) -> str:
        """Name of the first input (the formulas of ``formation_enthalpy_formulas``)."""
        return self.inputs[0].name


_XRD_INPUTS = (
    DomainInput("two_theta_deg", "float64", (-1, -1)),
    DomainInput("intensity", "float64", (-1, -1)),
    DomainInput("points", "int64", (-1,), optional=True),
    DomainInput("wavelength_angstrom", "float64", (-1,), optional=True),
    DomainInput("options", "bytes", (1,), optional=True),
)
_OPTIONS = _XRD_INPUTS[-1]

DOMAIN_MODELS: dict[str, DomainModel] = {
    "formation_enthalpy": DomainModel(
        served_model="matserve.models.formation_enthalpy:FormationEnthalpyModel",
        suffix=DOMAIN_SUFFIX,
        inputs=(DomainInput("formulas", "bytes", (-1,)),),
        outputs=(
            ("normalized_formula", "bytes"),
            ("formation_enthalpy_ev_per_atom", "float32"),
            ("uncertainty_ev_per_atom", "float32"),
            ("error", "bytes"),
        ),
    ),
    "xrd_phase": DomainModel(
        served_model="matserve.models.xrd_phase:XrdPhaseModel",
        suffix="_patterns",
        inputs=_XRD_INPUTS,
        handler="xrd",
        typed_outputs=(("probability", 0), ("coverage", 0), ("probability_unknown", 0)),
    ),
    "xrd_novelty": DomainModel(
        served_model="matserve.models.xrd_novelty:XrdNoveltyModel",
        suffix="_patterns",
        inputs=_XRD_INPUTS,
        handler="xrd",
        typed_outputs=(("reconstruction_error", 0), ("novelty_percentile", 0), ("coverage", 0), ("novelty_score", 0)),
    ),
    "ebsd_indexer": DomainModel(
        served_model="matserve.models.ebsd_indexer:EbsdIndexerModel",
        suffix="_patterns",
        inputs=(
            DomainInput("patterns", "float32", (-1, -1, -1), optional=True),
            DomainInput("files", "bytes", (-1,), optional=True),
            DomainInput("pc", "float64", (-1, 3), optional=True),
            _OPTIONS,
        ),
        handler="ebsd",
        typed_outputs=(("quaternion", 4), ("euler_bunge_deg", 3), ("expected_error_deg", 0), ("confidence", 0)),
    ),
    "scattering_sorter": DomainModel(
        served_model="matserve.models.scattering_sorter:ScatteringSorterModel",
        suffix="_images",
        inputs=(
            DomainInput("images", "float32", (-1, -1, -1), optional=True),
            DomainInput("mask", "uint8", (-1, -1), optional=True),
            DomainInput("files", "bytes", (-1,), optional=True),
            _OPTIONS,
        ),
        handler="scattering",
        typed_outputs=(("valid_fraction", 0), ("q_span_inv_angstrom", 0), ("feature_distance", 0)),
    ),
}
"""Registry model -> its domain model (see :func:`domain_config`)."""


def domain_model_name(name: str) -> str:
    """Triton name of a model's domain-input twin (``formation_enthalpy`` -> ``formation_enthalpy_formulas``,
    ``xrd_phase`` -> ``xrd_phase_patterns``, ``scattering_sorter`` -> ``scattering_sorter_images``)."""
    return name + (DOMAIN_MODELS[name].suffix if name in DOMAIN_MODELS else DOMAIN_SUFFIX)


def triton_versions(registry: Registry, name: str) -> dict[str, ModelVersion]:
    """Triton version number (as a string) -> registry version, oldest registry version first."""
    return {str(i): registry.get(name, v) for i, v in enumerate(registry.versions(name), start=1)}


def _signature(model: ModelVersion) -> str:
    """The tensor interface of a version (names, dtypes and shapes of its inputs and outputs)."""
    specs = {kind: [(t["name"], t["dtype"], [int(d) for d in t["shape"]]) for t in model.tensor_specs(kind)]
             for kind in ("inputs", "outputs")}  # fmt: skip
    return json.dumps(specs, sort_keys=True)


def triton_models(registry: Registry, name: str) -> dict[str, dict[str, ModelVersion]]:
    """Triton tensor model name -> {Triton version number -> registry version}.

    A Triton model has one config, so one tensor interface for all its versions. Versions with the newest
    version's interface are the Triton model ``name``; a version whose inputs or outputs differ (e.g.
    ``ebsd_indexer`` 1.0.0's axis maps next to 2.0.0's dictionary matches) goes with the versions of its interface
    into ``<name>__<its oldest registry version>``. Version numbers stay those of :func:`triton_versions`.
    """
    versions = triton_versions(registry, name)
    newest = _signature(list(versions.values())[-1])
    groups: dict[str, dict[str, ModelVersion]] = {}
    first_of: dict[str, str] = {}
    for number, version in versions.items():
        signature = _signature(version)
        model_name = name if signature == newest else f"{name}__{first_of.setdefault(signature, version.version)}"
        groups.setdefault(model_name, {})[number] = version
    return groups


def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format accepts JSON string escapes


def _tensor(spec: dict, batched: bool) -> str:
    shape = [int(d) for d in spec["shape"]]
    dims = shape[1:] if batched else shape
    dtype = _TRITON_DTYPES[spec["dtype"]]
    if not dims:  # one value per batch item (shape [-1]): Triton's idiom is dims [1] reshaped to a scalar
        return f"  {{ name: {_quote(spec['name'])} data_type: {dtype} dims: [1] reshape: {{ shape: [] }} }}"
    return f"  {{ name: {_quote(spec['name'])} data_type: {dtype} dims: {json.dumps(dims)} }}"


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(
        f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}" for k, v in sorted(values.items())
    )


def _version_parameters(registry: Registry, name: str) -> dict[str, str]:
    versions = triton_versions(registry, name)
    active = registry.active_version(name)
    model_of = {n: model_name for model_name, group in triton_models(registry, name).items() for n in group}
    mapping = {
        n: {"version": mv.version, "sha256": mv.card["files"]["model.onnx"]["sha256"], "model": model_of[n]}
        for n, mv in versions.items()
    }
    active_number = next(n for n, mv in versions.items() if mv.version == active)
    return {"matserve_versions": json.dumps(mapping, sort_keys=True), "matserve_active_version": active_number}


def max_batch_size(model: ModelVersion, default: int = 1024) -> int:
    """The card's ``serving.max_batch_size`` (the largest batch Triton forms or accepts)."""
    return int(model.card.get("serving", {}).get("max_batch_size", default))


def tensor_config(
    registry: Registry, name: str, target: Target, instances: int = 1, triton_name: str | None = None
) -> str:
    """``config.pbtxt`` of a tensor model (onnxruntime backend on GPU, python + ONNX Runtime on CPU).

    ``triton_name`` is one of :func:`triton_models` (default ``name``): the config serves that group's versions;
    its ``matserve_versions`` map names every version of the registry model and the Triton model serving it.
    """
    triton_name = triton_name or name
    versions = triton_models(registry, name)[triton_name]
    newest = list(versions.values())[-1]
    batch = max_batch_size(newest)
    lines = [f"name: {_quote(triton_name)}"]
    if target == "gpu":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "python"']
    lines += [
        f"max_batch_size: {batch}",
        "input [\n" + ",\n".join(_tensor(t, batched=True) for t in newest.tensor_specs("inputs")) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, batched=True) for t in newest.tensor_specs("outputs")) + "\n]",
        # Small requests are merged for up to 0.5 ms; preferred sizes keep GPU kernels in their fast shapes.
        "dynamic_batching {\n  max_queue_delay_microseconds: 500\n"
        + (f"  preferred_batch_size: [ {min(256, batch)}, {batch} ]\n" if target == "gpu" else "")
        + "}",
        f"instance_group [ {{ kind: {'KIND_GPU' if target == 'gpu' else 'KIND_CPU'} count: {instances} }} ]",
        f"version_policy: {{ specific: {{ versions: [{', '.join(versions)}] }} }}",
    ]
    parameters = _version_parameters(registry, name)
    if target == "cpu":
        parameters["intra_op_threads"] = "0"
    return "\n".join(lines) + "\n" + _parameters(parameters) + "\n"


def _domain_input(spec: DomainInput) -> str:
    optional = " optional: true" if spec.optional else ""
    return (f"  {{ name: {_quote(spec.name)} data_type: {_TRITON_DTYPES[spec.dtype]} dims: {json.dumps(list(spec.dims))}"
            f"{optional} }}")  # fmt: skip


def domain_config(registry: Registry, name: str, instances: int = 1) -> str:
    """``config.pbtxt`` of the domain model: one request carries a list of items (no batching axis)."""
    spec = DOMAIN_MODELS[name]
    versions = triton_versions(registry, name)
    if spec.handler is None:
        outputs = [f"  {{ name: {_quote(field)} data_type: {_TRITON_DTYPES[dtype]} dims: [-1] }}"
                   for field, dtype in spec.outputs]  # fmt: skip
    else:
        outputs = ['  { name: "results_json" data_type: TYPE_STRING dims: [-1] }',
                   '  { name: "registry_version" data_type: TYPE_STRING dims: [1] }']  # fmt: skip
        outputs += [f"  {{ name: {_quote(field)} data_type: TYPE_FP32 dims: {[-1, width] if width else [-1]} }}"
                    for field, width in spec.typed_outputs]  # fmt: skip
    lines = [
        f"name: {_quote(domain_model_name(name))}",
        'backend: "python"',
        "max_batch_size: 0",
        "input [\n" + ",\n".join(_domain_input(i) for i in spec.inputs) + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]",
        f"version_policy: {{ specific: {{ versions: [{', '.join(versions)}] }} }}",
    ]
    parameters = {
        **_version_parameters(registry, name),
        "served_model": spec.served_model,
        "tensor_model": name,
        "tensor_max_batch_size": str(max_batch_size(list(versions.values())[-1])),
    }
    if spec.handler is not None:
        parameters["domain_handler"] = spec.handler
    return "\n".join(lines) + "\n" + _parameters(parameters) + "\n"


def _place(source: Path, destination: Path) -> None:
    """Hard-link when possible (same filesystem, no copy of large graphs), else copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        destination.hardlink_to(source)
    except OSError:
        shutil.copy2(source, destination)


def build_repository(registry: Registry, out: Path, target: Target = "cpu", instances: int = 1) -> dict:
    """Write the Triton model repository for every valid model version in ``registry``.

    Parameters
    ----------
    registry : Registry
        The verified registry (refused folders are left out, as in the HTTP API).
    out : Path
        Output folder; replaced if it holds a previous repository (refuses a non-empty folder that does not).
    target : {"cpu", "gpu"}
        ``gpu``: tensor models use the official container's ``onnxruntime`` backend on KIND_GPU;
        ``cpu``: tensor models are python-backend models running the same ONNX file with ONNX Runtime.
        Domain models are python-backend models in both.
    instances : int
        Model instances per tensor model.

    Returns
    -------
    dict
        The manifest also written to ``OUT/matserve_repository.json``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"target": target, "registry": str(registry.root.resolve()), "models": {}}
    for name in registry.names():
        versions = triton_versions(registry, name)
        groups = triton_models(registry, name)
        for triton_name, group in groups.items():
            model_dir = out / triton_name
            model_dir.mkdir()
            (model_dir / "config.pbtxt").write_text(tensor_config(registry, name, target, instances, triton_name))
            for number, version in group.items():
                _place(version.file("model.onnx"), model_dir / number / "model.onnx")
                if target == "cpu":
                    shutil.copy2(PYTHON_MODELS / "onnx_model.py", model_dir / number / "model.py")
        entry = {
            "tensor_model": name,
            "active_version": registry.active_version(name),
            "versions": {n: v.version for n, v in versions.items()},
        }
        if len(groups) > 1:
            entry["tensor_models"] = {triton_name: sorted(group) for triton_name, group in groups.items()}
        if name in DOMAIN_MODELS:
            domain_dir = out / domain_model_name(name)
            domain_dir.mkdir()
            (domain_dir / "config.pbtxt").write_text(domain_config(registry, name))
            for number, version in versions.items():
                (domain_dir / number).mkdir()
                shutil.copy2(PYTHON_MODELS / "domain_model.py", domain_dir / number / "model.py")
                shutil.copy2(version.path / CARD_FILE, domain_dir / number / CARD_FILE)
                for side_file in version.card.get("files", {}):  # e.g. xrd_novelty's latent_reference.npz
                    if side_file not in ("model.onnx", CARD_FILE) and version.file(side_file).is_file():
                        _place(version.file(side_file), domain_dir / number / side_file)
            entry["domain_model"] = domain_model_name(name)
        manifest["models"][name] = entry
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
