"""Compiled numeric kernels: one place that decides how matserve's numba functions are compiled."""

from __future__ import annotations

from collections.abc import Callable

import numba


def compiled(function: Callable | None = None, *, fastmath: bool = False, parallel: bool = False) -> Callable:
    """``numba.njit`` without the GIL, its machine code cached on disk where numba finds a writable place.

    numba caches next to the source file, in ``NUMBA_CACHE_DIR`` or in the user's cache directory; on a
    read-only installation with no writable home it refuses ``cache=True`` at decoration, and each process
    then compiles for itself instead. Use as ``@compiled`` or ``@compiled(fastmath=True, parallel=True)``.
    """

    def decorate(target: Callable) -> Callable:
        try:
            return numba.njit(nogil=True, cache=True, fastmath=fastmath, parallel=parallel)(target)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, fastmath=fastmath, parallel=parallel)(target)

    return decorate if function is None else decorate(function)
