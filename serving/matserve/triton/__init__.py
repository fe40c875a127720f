"""Triton Inference Server support: a model repository generated from the registry, and a local server.

* :mod:`matserve.triton.repository` writes the repository (``matserve triton build-repo OUT``);
* :mod:`matserve.triton.server` runs it on the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel
  (``matserve triton serve``);
* :mod:`matserve.triton.python_models` holds the python-backend ``model.py`` files copied into the repository.
"""
