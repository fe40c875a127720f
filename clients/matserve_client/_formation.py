"""Formation enthalpy (``POST /v1/formation-enthalpy``): flow, helpers and the public methods of both clients."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from . import wire
from ._base import (
    AsyncDriver,
    BaseClient,
    Flow,
    SyncDriver,
    check_answer,
    chunked,
    open_progress_bar,
    parse_body,
    same_doc,
)
from .models import FormationEnthalpyResult


def as_formula_list(formulas: Sequence[str] | str) -> list[str]:
    """Copy ``formulas`` into a list, treating a single string as one formula; reject non-strings."""
    if isinstance(formulas, str):
        return [formulas]
    items = list(formulas)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"formulas must be strings; item {index} is {type(item).__name__}: {item!r}")
    return items


def parse_formation_enthalpy(
    response: httpx.Response, sent: Sequence[str], expected_version: str | None
) -> list[FormationEnthalpyResult]:
    """Results of one ``POST /v1/formation-enthalpy`` chunk, checked against what was sent.

    Parameters
    ----------
    response : httpx.Response
        A 2xx response.
    sent : sequence of str
        The formulas of this chunk; the server must answer with exactly one result per formula.
    expected_version : str or None
        Version every result must come from (the pinned one), or ``None`` to accept any.
    """
    payload = parse_body(response, wire.FormationEnthalpyResponse)
    check_answer(response, len(sent), "formulas", len(payload.results), expected_version, payload.version)
    return [FormationEnthalpyResult(**item.model_dump(), model=payload.model, version=payload.version)
            for item in payload.results]  # fmt: skip


class _FormationFlows(BaseClient):
    """The formation enthalpy flow (no I/O)."""

    def _formation_enthalpy_flow(
        self, formulas: Sequence[str] | str, version: str | None, progress: bool
    ) -> Flow[list[FormationEnthalpyResult]]:
        items = as_formula_list(formulas)
        if not items:
            return []
        bar = open_progress_bar(len(items)) if progress else None
        try:
            size = yield from self._batch_size_flow()
            results: list[FormationEnthalpyResult] = []
            pinned = version
            for chunk in chunked(items, size):
                response = yield from self._request(
                    "POST", "/v1/formation-enthalpy", body={"formulas": list(chunk), "version": pinned}
                )
                batch = parse_formation_enthalpy(response, chunk, expected_version=pinned)
                # Later chunks must be answered by the version that answered the first one, even if the server's
                # active version changes mid-way.
                pinned = batch[0].version
                results.extend(batch)
                if bar is not None:
                    bar.update(len(chunk))
            return results
        finally:
            if bar is not None:
                bar.close()


class FormationMethods(_FormationFlows, SyncDriver):
    """:meth:`formation_enthalpy` of :class:`~matserve_client.Client`."""

    def formation_enthalpy(
        self, formulas: Sequence[str] | str, *, version: str | None = None, progress: bool = False
    ) -> list[FormationEnthalpyResult]:
        """Predict the formation enthalpy of each formula.

        Lists longer than the batch size are split into consecutive requests (see ``chunk_size``); the results
        are concatenated in input order. If ``version`` is ``None``, the version that answered the first request
        is pinned for the following ones, so all results come from the same model version.

        Parameters
        ----------
        formulas : sequence of str, or str
            Chemical formulas such as ``"NaCl"`` or ``"Fe2O3"``; a single string is one formula.
        version : str, optional
            Model version to use, e.g. ``"1.0.0"``; default: the server's active version.
        progress : bool, default False
            Show a tqdm progress bar over formulas (needs ``pip install 'matserve-client[progress]'``).

        Returns
        -------
        list of FormationEnthalpyResult
            One per input formula, in input order. Formulas the model cannot handle have ``ok == False`` and an
            ``error`` message; they do not raise. Enthalpies and uncertainties are in eV/atom.

        Raises
        ------
        InvalidInputError
            The request was rejected as malformed (400/422).
        NotFoundError
            Unknown ``version`` (404).
        PayloadTooLargeError
            A chunk exceeded the server's limits (413); lower ``chunk_size``.
        ServiceUnavailableError
            The server kept answering 503 after ``retries`` retries.
        ServerError
            Any other 5xx.
        MatserveConnectionError
            No response after ``retries`` retries (:class:`MatserveTimeoutError` for timeouts).
        UnexpectedResponseError
            A 2xx response that does not follow the API (wrong result count, version changed between chunks).
        ImportError
            ``progress=True`` but tqdm is not installed.
        """
        return self._run(self._formation_enthalpy_flow(formulas, version, progress))


class AsyncFormationMethods(_FormationFlows, AsyncDriver):
    """:meth:`formation_enthalpy` of :class:`~matserve_client.AsyncClient` (a coroutine)."""

    @same_doc(FormationMethods.formation_enthalpy)
    async def formation_enthalpy(
        self, formulas: Sequence[str] | str, *, version: str | None = None, progress: bool = False
    ) -> list[FormationEnthalpyResult]:
        return await self._run(self._formation_enthalpy_flow(formulas, version, progress))
