"""KServe-v2 (Triton) transports: the typed matserve methods over Triton's gRPC or HTTP protocol.

Needs the optional extra: ``pip install 'matserve-client[grpc]'`` (tritonclient + numpy).

>>> from matserve_client import Client
>>> with Client.grpc("127.0.0.1:8001") as client:  # doctest: +SKIP
...     results = client.formation_enthalpy(["NaCl", "Fe2O3"])

Triton serves the repository that ``matserve triton build-repo`` generates from the registry. Formulas go
to the domain model ``formation_enthalpy_formulas``, which runs the same codec as the HTTP API inside
Triton, so results (per-item errors included) match the HTTP API's; patterns and images go to the other
domain models (:mod:`matserve_client.kserve_models`), which run the HTTP API's decoders and lifecycle. Triton numbers versions 1, 2, ...;
the map to registry versions (``1.0.0``) and the active version are read once from the model config, so
results name registry versions, and ``version="1.0.0"`` pins one.

Errors are the SDK's usual exceptions; ``status_code`` is the HTTP equivalent of the gRPC status
(UNAVAILABLE 503, NOT_FOUND 404, INVALID_ARGUMENT 422, DEADLINE_EXCEEDED is a
:class:`~matserve_client.MatserveTimeoutError`).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ._base import as_formula_list, chunked, open_progress_bar
from .exceptions import (
    APIError,
    InvalidInputError,
    MatserveConnectionError,
    MatserveError,
    MatserveTimeoutError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from .kserve_models import AsyncKServeModelMethods, KServeModelMethods
from .models import FormationEnthalpyResult

try:
    import numpy as np
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException
except ImportError as _missing:  # pragma: no cover - exercised only without the extra
    _IMPORT_ERROR: ImportError | None = _missing
else:
    _IMPORT_ERROR = None

__all__ = ["AsyncKServeClient", "KServeClient", "KServeTransport", "Protocol"]

Protocol = Literal["grpc", "http"]
DOMAIN_SUFFIX = "_formulas"
FORMATION_ENTHALPY = "formation_enthalpy"
DOMAIN_CHUNK = 10_000
# Reconnect quickly after Triton comes back (gRPC's default backoff grows to 120 s).
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_GRPC_STATUS_TO_HTTP = {
    "StatusCode.UNAVAILABLE": 503,
    "StatusCode.NOT_FOUND": 404,
    "StatusCode.INVALID_ARGUMENT": 422,
    "StatusCode.UNIMPLEMENTED": 501,
}


def _require_extra() -> None:
    if _IMPORT_ERROR is not None:
        raise MatserveError(
            f"the KServe/Triton transport needs tritonclient and numpy: pip install 'matserve-client[grpc]' "
            f"({_IMPORT_ERROR})"
        )


def parse_target(url: str, protocol: Protocol | None = None) -> tuple[Protocol, str]:
    """``grpc://h:8001`` / ``http://h:8000`` / ``h:8001`` (gRPC unless ``protocol`` says) -> (protocol, address)."""
    if "://" not in url:
        return protocol or "grpc", url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "grpc":
        return "grpc", parts.netloc
    if scheme in ("http", "https"):
        return "http", f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    raise ValueError(f"unsupported Triton URL scheme {scheme!r} in {url!r}; use grpc://host:port or http://host:port")


def _api_error(status: int, message: str) -> APIError:
    if status == 503:
        return ServiceUnavailableError(503, "unavailable", message)
    if status == 404:
        return NotFoundError(404, "not_found", message)
    if status in (400, 422):
        return InvalidInputError(status, "invalid_input", message)
    return ServerError(status, "triton_error", message)


class KServeTransport:
    """Raw tensor inference on a KServe-v2 server (Triton), over gRPC or HTTP, blocking and thread-safe.

    Parameters
    ----------
    url : str
        ``grpc://host:8001``, ``http://host:8000``, or ``host:port`` (gRPC).
    timeout : float, default 60.0
        Seconds an inference call may take. Connecting is bounded separately by ``connect_timeout``.
    connect_timeout : float, default 1.0
        Seconds to wait for a connection (an unreachable server fails at once or after this).
    protocol : {"grpc", "http"}, optional
        Protocol for a URL without a scheme (default gRPC).
    """

    def __init__(
        self, url: str, timeout: float = 60.0, connect_timeout: float = 1.0, protocol: Protocol | None = None
    ) -> None:
        _require_extra()
        self.protocol, self.address = parse_target(url, protocol)
        self.url = url
        self.timeout = timeout
        self._configs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.protocol == "grpc":
            self._grpc = triton_grpc.InferenceServerClient(self.address, channel_args=GRPC_CHANNEL_ARGS)
        else:
            self._http = httpx.Client(
                base_url=self.address, timeout=httpx.Timeout(timeout, connect=connect_timeout), trust_env=False
            )

    # -- metadata -------------------------------------------------------------------------------------------
    def model_config(self, model: str, refresh: bool = False) -> dict[str, Any]:
        """The model's Triton config as JSON (cached; ``refresh`` re-reads it)."""
        with self._lock:
            if not refresh and model in self._configs:
                return self._configs[model]
        if self.protocol == "grpc":
            config = self._call_grpc(
                lambda: self._grpc.get_model_config(model, as_json=True, client_timeout=self.timeout)
            )
            config = config.get("config", config)
        else:
            config = self._call_http("GET", f"/v2/models/{model}/config").json()
        with self._lock:
            self._configs[model] = config
        return config

    def version_map(self, model: str, refresh: bool = False) -> tuple[dict[str, dict[str, str]], str]:
        """Triton version -> ``{"version": registry version, "sha256": ...}``, and the active Triton version."""
        parameters = self.model_config(model, refresh).get("parameters", {})
        try:
            mapping = json.loads(parameters["matserve_versions"]["string_value"])
            active = parameters["matserve_active_version"]["string_value"]
        except (KeyError, ValueError):
            raise ServerError(
                500, "triton_error", f"Triton model {model!r} was not built by `matserve triton build-repo`"
            ) from None
        return mapping, active

    def triton_version(self, model: str, version: str | None) -> tuple[str, str]:
        """(Triton version number, registry version) for a registry version, or the active one if None."""
        for refresh in (False, True):
            mapping, active = self.version_map(model, refresh)
            if version is None:
                return active, mapping[active]["version"]
            for number, entry in mapping.items():
                if entry["version"] == version:
                    return number, version
        known = ", ".join(e["version"] for e in mapping.values())
        raise NotFoundError(
            404, "not_found", f"model {model!r} has no version {version!r} on Triton; available: {known}"
        )

    # -- inference ------------------------------------------------------------------------------------------
    def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str], version: str = ""
    ) -> tuple[dict[str, np.ndarray], str]:
        """Run ``inputs`` through ``model`` (Triton ``version``, "" = Triton's default).

        Returns
        -------
        outputs : dict of str to numpy.ndarray
            The requested outputs.
        model_version : str
            The Triton version that answered.
        """
        module = triton_grpc if self.protocol == "grpc" else triton_http
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else triton_dtype(array.dtype)
            tensor = module.InferInput(name, list(array.shape), datatype)
            if self.protocol == "grpc":
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        if self.protocol == "grpc":
            requested = [triton_grpc.InferRequestedOutput(n) for n in outputs]
            result = self._call_grpc(
                lambda: self._grpc.infer(
                    model, tensors, model_version=version, outputs=requested, client_timeout=self.timeout
                )
            )
            answered = result.get_response().model_version
        else:
            requested = [triton_http.InferRequestedOutput(n, binary_data=True) for n in outputs]
            body, json_size = triton_http.InferenceServerClient.generate_request_body(tensors, outputs=requested)
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            headers = {"Content-Type": "application/octet-stream"}
            if json_size is not None:
                headers["Inference-Header-Content-Length"] = str(json_size)
            response = self._call_http("POST", path, content=body, headers=headers)
            header_length = response.headers.get("Inference-Header-Content-Length")
            result = triton_http.InferenceServerClient.parse_response_body(
                response.content, header_length=int(header_length) if header_length else None
            )
            answered = result.get_response().get("model_version", version)
        return {n: result.as_numpy(n) for n in outputs}, str(answered)

    def ready(self) -> bool:
        """Whether the server answers its readiness check."""
        try:
            if self.protocol == "grpc":
                return bool(self._grpc.is_server_ready(client_timeout=1.0))
            return self._http.get("/v2/health/ready", timeout=1.0).status_code == 200
        except Exception:
            return False

    def close(self) -> None:
        """Release the channel / connection pool."""
        if self.protocol == "grpc":
            self._grpc.close()
        else:
            self._http.close()

    # -- error mapping --------------------------------------------------------------------------------------
    def _call_grpc(self, call: Any) -> Any:
        try:
            return call()
        except InferenceServerException as error:
            status = str(error.status())
            message = error.message() or str(error)
            if status == "StatusCode.DEADLINE_EXCEEDED":
                raise MatserveTimeoutError(f"Triton at {self.url} did not answer in {self.timeout} s") from None
            if status == "StatusCode.UNAVAILABLE":
                raise MatserveConnectionError(f"Triton at {self.url} is unreachable: {message}") from None
            code = _GRPC_STATUS_TO_HTTP.get(status, 500)
            if "unknown model" in message.lower() or "is not found" in message.lower():
                code = 404
            raise _api_error(code, message) from None

    def _call_http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise MatserveTimeoutError(f"Triton at {self.url} did not answer in time ({method} {path})") from None
        except httpx.TransportError as error:
            raise MatserveConnectionError(f"Triton at {self.url} is unreachable: {error}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise _api_error(response.status_code, message)
        return response


def triton_dtype(dtype: Any) -> str:
    """KServe datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


class KServeClient(KServeModelMethods):
    """The typed matserve methods over Triton (KServe v2), blocking. Made by :meth:`Client.grpc`.

    ``formation_enthalpy`` here; ``classify_xrd``, ``xrd_novelty``, ``index_ebsd`` and ``sort_scattering`` in
    :class:`~matserve_client.kserve_models.KServeModelMethods`: same signatures and result types as the HTTP
    :class:`~matserve_client.Client`'s.

    Parameters
    ----------
    url : str
        ``host:8001`` or ``grpc://host:8001`` (gRPC), or ``http://host:8000`` (Triton's HTTP/REST).
    timeout : float, default 30.0
        Seconds per call.
    protocol : {"grpc", "http"}, optional
        Protocol for a URL without a scheme (default gRPC).
    """

    def __init__(self, url: str, timeout: float = 30.0, protocol: Protocol | None = None) -> None:
        self.transport = KServeTransport(url, timeout=timeout, protocol=protocol)

    def __enter__(self) -> KServeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.transport.close()

    def formation_enthalpy(
        self, formulas: Sequence[str] | str, *, version: str | None = None, progress: bool = False
    ) -> list[FormationEnthalpyResult]:
        """Formation enthalpy (eV/atom) of formulas; same results and per-item errors as :meth:`Client.formation_enthalpy`.

        Parameters
        ----------
        formulas : sequence of str, or str
            Chemical formulas.
        version : str, optional
            Registry version (e.g. ``"1.0.0"``); default: the registry's active version when the repository was built.
        progress : bool, default False
            Show a tqdm progress bar.
        """
        items = as_formula_list(formulas)
        if not items:
            return []
        domain = FORMATION_ENTHALPY + DOMAIN_SUFFIX
        number, registry_version = self.transport.triton_version(domain, version)
        outputs = ("normalized_formula", "formation_enthalpy_ev_per_atom", "uncertainty_ev_per_atom", "error")
        bar = open_progress_bar(len(items)) if progress else None
        results: list[FormationEnthalpyResult] = []
        try:
            for chunk in chunked(items, DOMAIN_CHUNK):
                array = np.array([f.encode("utf-8") for f in chunk], dtype=np.object_)
                answer, _ = self.transport.infer(domain, {"formulas": array}, outputs, version=number)
                for i, formula in enumerate(chunk):
                    results.append(
                        FormationEnthalpyResult(
                            formula=formula,
                            normalized_formula=_text(answer["normalized_formula"][i]),
                            formation_enthalpy_ev_per_atom=_number(answer["formation_enthalpy_ev_per_atom"][i]),
                            uncertainty_ev_per_atom=_number(answer["uncertainty_ev_per_atom"][i]),
                            error=_text(answer["error"][i]),
                            model=FORMATION_ENTHALPY,
                            version=registry_version,
                        )
                    )
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results


def _text(value: Any) -> str | None:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text or None


def _number(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


class AsyncKServeClient(AsyncKServeModelMethods):
    """The asyncio twin of :class:`KServeClient` (made by :meth:`AsyncClient.grpc`); same methods, as coroutines.

    Each call runs the blocking, thread-safe tritonclient transport in a worker thread
    (:func:`asyncio.to_thread`), so the event loop never waits on the network and the result mapping is the
    one :class:`KServeClient` uses.
    """

    def __init__(self, url: str, timeout: float = 30.0, protocol: Protocol | None = None) -> None:
        self._client = KServeClient(url, timeout=timeout, protocol=protocol)

    async def __aenter__(self) -> AsyncKServeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel."""
        self._client.close()

    async def formation_enthalpy(
        self, formulas: Sequence[str] | str, *, version: str | None = None, progress: bool = False
    ) -> list[FormationEnthalpyResult]:
        """See :meth:`KServeClient.formation_enthalpy`."""
        return await asyncio.to_thread(self._client.formation_enthalpy, formulas, version=version, progress=progress)
