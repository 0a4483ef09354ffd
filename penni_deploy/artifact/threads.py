"""How many threads an artifact runs on, and telling TVM's runtime.

Left alone, TVM's CPU thread pool takes ``TVM_NUM_THREADS``, else ``OMP_NUM_THREADS``, else half of
``hardware_concurrency()`` on x86 (it assumes hyper-threads): on a 2-core VM that is one core, and in
a container it ignores the CPU set and the quota. penni-deploy decides instead:

1. ``threads=N`` given to ``load`` (``--threads N`` on the command line);
2. else ``TVM_NUM_THREADS`` from the environment (the user told TVM already);
3. else every core this process may run on: its CPU affinity mask, capped by a cgroup CPU quota.

A CPU artifact's library carries its own thread pool (``thread_pool.cc``, compiled in at export):
:func:`install_pool` points the library's kernels at it with that count once it is loaded. Its waits
spin on a cache line instead of calling ``sched_yield`` (TVM's launch cost 0.8-1.9 us on our KVM hosts,
this one ~0.1 us), and its idle workers sleep after 1 ms. ``PENNI_THREAD_POOL=tvm`` keeps TVM's pool,
for debugging and comparison.

TVM's own pool, used by artifacts written before the pool existed and under ``PENNI_THREAD_POOL=tvm``,
is created per calling thread the first time a parallel kernel runs, with as many workers as
``TVM_NUM_THREADS`` says at that moment, and can later only use fewer. So before the first pool
exists the variable is raised to every usable core, and each run then selects its count with
``runtime.config_threadpool``, once per calling thread and count.
"""

from __future__ import annotations

import ctypes
import os
import threading

from ..machine import available_cores

_ENV = "TVM_NUM_THREADS"
_configured = threading.local()
# What prepare_pool wrote into TVM_NUM_THREADS (and what was there before), so that our own value
# is never mistaken for the user's.
_ours: dict[str, str] = {}


def resolve_threads(threads: int | None = None) -> int:
    """The thread count a run uses: ``threads``, else ``TVM_NUM_THREADS``, else ``available_cores()``."""
    from ..errors import InputSpecError

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputSpecError(f"threads must be a positive whole number, not {threads!r}")
        return threads
    env = _user_env()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise InputSpecError(f"{_ENV}={env!r} is not a positive whole number; unset it or set e.g. "
                                 f"{_ENV}={available_cores()}")
        return value
    return available_cores()


def _user_env() -> str:
    current = os.environ.get(_ENV, "").strip()
    return _ours["before"] if _ours and current == _ours["wrote"] else current


def prepare_pool(threads: int) -> None:
    """Before TVM's pool exists: let it be created with enough workers for ``threads`` (and every core)."""
    current = os.environ.get(_ENV, "").strip()
    wanted = max(threads, available_cores())
    if not current.isdigit() or int(current) < wanted:
        _ours.update(before=_user_env(), wrote=str(wanted))
        os.environ[_ENV] = str(wanted)


def use_threads(threads: int) -> None:
    """Make TVM's pool of the calling thread run ``threads`` workers (cheap when already so)."""
    if getattr(_configured, "threads", None) == threads:
        return
    import tvm

    # Mode 0 keeps TVM's default core order; the count caps at the workers the pool was created with.
    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    _configured.threads = threads


POOL_ENV = "PENNI_THREAD_POOL"


def install_pool(lib_path: str, threads: int) -> ctypes.CDLL | None:
    """Point the already loaded library ``lib_path`` at its own thread pool with ``threads`` threads.

    Returns the library's handle (its ``penni_pool_*`` functions), or None when the library keeps
    TVM's pool: built before the pool existed, a library with no parallel loops, or
    ``PENNI_THREAD_POOL=tvm`` in the environment.
    """
    choice = os.environ.get(POOL_ENV, "").strip().lower()
    if choice == "tvm":
        return None
    if choice not in ("", "penni"):
        from ..errors import InputSpecError

        raise InputSpecError(f"{POOL_ENV}={choice!r} is not a thread pool; use 'penni' (the default) or 'tvm'")
    try:  # the library TVM loaded, never a second copy
        lib = ctypes.CDLL(lib_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        install = lib.penni_pool_install
    except (OSError, AttributeError):
        return None
    install.argtypes, install.restype = [ctypes.c_int], ctypes.c_int
    lib.penni_pool_launches.restype = ctypes.c_uint64
    return lib if install(threads) > 0 else None


def runtime_threads() -> int:
    """What TVM's pool of the calling thread reports it uses."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())
