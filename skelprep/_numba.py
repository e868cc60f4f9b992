"""numba, optional and loaded on first use.

``@njit`` registers a kernel and leaves it a plain function; :func:`load_jit`
imports numba and binds every registered kernel to its compiled dispatcher
(``cache=True``: a fresh process loads the compiled kernels from __pycache__;
``nogil=True``: threads run kernels in parallel). Callers check
:data:`HAVE_NUMBA` and take their pure-Python or scikit-image path when it is
False, or while the kernels are not loaded (an uncompiled kernel would be far
too slow to run).

Why not at import: numba's import and first call cost 0.5-0.8 s per process
on 2 busy cores (with numba's BLAS probe skipped, see
:func:`_import_arraymath_without_blas_probe`), more than a whole build of a few
2D masks, and ``skelprep --help`` needs none of it.
:func:`use_jit` is the policy the thinning asks: scikit-image for the first few
hundred thousand foreground voxels of a process, while the kernels load in a
background thread; the kernels at once for an array that pays for them alone.
A caller that knows its work repays the start loads them up front with
:func:`load_in_background` (a build does, see ``skelprep.build``), and every
array then waits for them. Both paths give the same result, so the choice never
changes the output.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Callable

__all__ = ["HAVE_NUMBA", "njit", "load_jit", "load_in_background", "jit_loaded", "use_jit", "JIT_AFTER_WORK"]

HAVE_NUMBA = importlib.util.find_spec("numba") is not None

# Work (foreground voxels; 3D ones count 4x, see skelprep._thinning.thinning_work) a process
# gives scikit-image before the kernels pay. Measured on 2 busy cores: numba's import and first
# call cost 0.6-1.2 s (0.5-0.8 s without its BLAS probe); the kernels save 1-3 us per foreground
# pixel of Zhang (a CHASE_DB1 mask, 51k px: 65-107 ms -> 15-22 ms; a road-crack map, 310k px:
# 990 ms -> 39 ms) and more per voxel of Lee. An array of a quarter of this alone is worth
# waiting for them.
JIT_AFTER_WORK = 500_000

_KERNELS: list[tuple[str, str]] = []  # (module, function name) of every @njit function
_lock = threading.Lock()
_ready = threading.Event()
_loading = False
_work_without_jit = 0
_awaited: threading.Event | None = None  # set by load_in_background: settled once the load ends


def njit(func):
    """Register ``func`` as a numba kernel; :func:`load_jit` replaces it by its compiled version.

    A kernel defined after the kernels were loaded (its module imported later) is compiled at once.
    """
    with _lock:
        if _ready.is_set():
            import numba

            return numba.njit(cache=True, nogil=True)(func)
        _KERNELS.append((func.__module__, func.__name__))
    return func


def load_jit() -> None:
    """Import numba and bind every registered kernel to its compiled dispatcher; idempotent, thread-safe."""
    if _ready.is_set():
        return
    with _lock:
        if _ready.is_set():
            return
        import numba

        _import_arraymath_without_blas_probe()
        compile_ = numba.njit(cache=True, nogil=True)
        for module, name in list(_KERNELS):  # all bound before any compiles: kernels call kernels
            namespace = sys.modules[module]
            setattr(namespace, name, compile_(getattr(namespace, name)))
        _ready.set()


def _import_arraymath_without_blas_probe() -> None:
    """Import ``numba.np.arraymath`` with its BLAS probe answering "no BLAS".

    Why: numba's first compile or cache load imports ``numba.np.arraymath``, whose
    import probes for a BLAS by importing ``scipy.linalg.cython_blas``; scipy.linalg's
    import (array-API shims, numpy.f2py) cost 0.18-0.25 s of the 0.7-1.0 s that numba's
    start took on 2 busy cores, all under the GIL, more than the thinning of 14 real
    2D masks. The probe's answer (``arraymath._HAVE_BLAS``) only picks the inner product
    of numba's ``np.convolve`` and ``np.correlate``: a plain loop instead of ``np.dot``,
    the same sums. Everything else that uses BLAS (``np.dot``, ``np.linalg``) checks
    for it again when it is compiled, and still finds it. skelprep's kernels use none
    of it. If arraymath is already imported (numba used before), nothing changes.
    """
    if "numba.np.arraymath" in sys.modules:
        return
    import numba.np.linalg as linalg

    ensure_blas = linalg.ensure_blas

    def no_blas_probe() -> None:
        raise ImportError("skelprep skips numba's BLAS probe")

    linalg.ensure_blas = no_blas_probe  # arraymath binds it with `from numba.np.linalg import`
    try:
        import numba.np.arraymath as arraymath
    finally:
        linalg.ensure_blas = ensure_blas
    arraymath.ensure_blas = ensure_blas


def load_in_background(then: Callable[[], None] | None = None) -> None:
    """Load the kernels in a background thread, then call ``then`` there.

    For a caller that knows the work ahead repays numba's start (a build of
    volumes, or of many 2D masks): the import and the first calls then run
    beside its first reads. Meanwhile :func:`use_jit` makes every array wait
    for them. Why not give small ones to scikit-image meanwhile: its import
    alone (0.45 s, under the GIL beside numba's) takes about as long as the load
    from numba's cache (0.5-0.6 s). ``then`` (e.g. a first call of each kernel on
    a tiny array) runs after the kernels are bound. If loading fails,
    :func:`use_jit` answers False.

    The thread is not a daemon: the interpreter's exit waits for it. ``then``
    compiles kernels whose cache is missing (after an install or an edit), and
    LLVM still compiling in a daemon thread when the process exits aborts it: a
    2D build that had written all 14 of its cases exited 134 or 139, 1 run in 3,
    while the 3D kernels it never used compiled. Load only what the work needs.
    """
    global _awaited
    with _lock:
        if _awaited is not None or _ready.is_set():
            return
        _awaited = threading.Event()

    def load() -> None:
        try:
            load_jit()
        finally:
            _awaited.set()
        if then is not None:
            then()

    threading.Thread(target=load, name="skelprep-load-numba", daemon=False).start()


def jit_loaded() -> bool:
    """Whether the kernels are bound (see :func:`load_jit`)."""
    return _ready.is_set()


def use_jit(work: int) -> bool:
    """Whether to run an array of this much work through the numba kernels now.

    False without numba. Otherwise True once the kernels are loaded; after
    :func:`load_in_background`, once its load ends (every array waits for it;
    False if it failed); or for ``work`` of at least a quarter of
    :data:`JIT_AFTER_WORK` (loading them first). Smaller arrays go to
    scikit-image until this process has given it :data:`JIT_AFTER_WORK`; then
    the kernels start loading in a background thread.
    """
    global _loading, _work_without_jit
    if not HAVE_NUMBA:
        return False
    if _ready.is_set():
        return True
    if _awaited is not None:  # load_in_background: the caller's work pays for the kernels
        _awaited.wait()
        return _ready.is_set()
    if work >= JIT_AFTER_WORK // 4:
        load_jit()
        return _ready.is_set()
    with _lock:
        _work_without_jit += work
        start = not _loading and _work_without_jit >= JIT_AFTER_WORK
        _loading = _loading or start
    if start:  # a daemon: binding compiles nothing (the first call does, in its caller's thread)
        threading.Thread(target=load_jit, name="skelprep-load-numba", daemon=True).start()
    return False
