"""numba, optional: ``njit`` compiles where numba is installed and is the identity where it is not.

Callers check :data:`HAVE_NUMBA` and take their pure-Python or scikit-image path
when it is False (an uncompiled kernel would be far too slow to run).
"""

from __future__ import annotations

try:
    import numba

    HAVE_NUMBA = True
    # cache=True: a fresh process (or Dask worker) loads the compiled kernels from
    # __pycache__ instead of compiling them again; nogil=True: threads run kernels in parallel.
    njit = numba.njit(cache=True, nogil=True)
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_NUMBA in the tests
    HAVE_NUMBA = False

    def njit(func):
        return func


__all__ = ["HAVE_NUMBA", "njit"]
