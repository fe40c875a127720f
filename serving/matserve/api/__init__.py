"""The HTTP API, one module per model plus the shared parts; :mod:`matserve.service` composes them.

Every model module has the same sections in the same order (request schemas, transport parsing, routes) and one
``router(settings) -> APIRouter``; answers are the wire schemas of :mod:`matserve_client.wire`.

* :mod:`~matserve.api.formation_enthalpy`, :mod:`~matserve.api.xrd`, :mod:`~matserve.api.ebsd`,
  :mod:`~matserve.api.scattering`: the models;
* :mod:`~matserve.api.jobs`, :mod:`~matserve.api.admin`, :mod:`~matserve.api.registry`: batch jobs, admin actions,
  the model list;
* :mod:`~matserve.api.context` (the service's state, given to routes), :mod:`~matserve.api.common` (error
  responses, body parsing, answers, domain error -> HTTP status), :mod:`~matserve.api.transport` (bodies, forms,
  file names), :mod:`~matserve.api.limits` (content type and size of every POST, before the body is read).
"""
