"""Triton Inference Server support: a model repository generated from the registry, and a local server.

* :mod:`matserve.triton.repository` writes the repository (``matserve triton build-repo OUT``);
* :mod:`matserve.triton.server` runs it on the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel
  (``matserve triton serve``);
* :mod:`matserve.triton.python_models` holds the python-backend ``model.py`` files copied into the repository;
* :mod:`matserve.triton.domain` is what the domain models of patterns and images run between their tensors and
  the served models (the HTTP API's decoders, options and request rules).
"""
