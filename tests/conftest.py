"""Test set-up: 8 fake CPU devices so sharding tests can build real meshes, XLA's
fastest CPU compile, and one persistent compilation cache for the whole session.

XLA reads the flags when jax initialises its backend, so they are set here, before any
test module imports jax. Many tests run the trainer on the same tiny config (in
this process, in subprocesses, in both xdist workers); with the cache each distinct
program compiles once per session instead of once per run. The directory is new for
every session (keyed by the pytest parent process), so no stale entry is read.
Most tests run each program a few times, so compiling dominates their time: LLVM at
optimisation level 0 compiles ~40% faster, and even the test that trains 150 steps
(test_audio_vae) gains more than it loses (263 s against 314 s).
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_session = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))  # xdist: shared
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"mgjax-tests-jax-cache-{_session}"),
)
# Cache every program, not only those that took a second to compile: at optimisation
# level 0 most of a tiny run's programs (init, evaluation, sampling) compile faster
# than that, and the trainer's subprocess tests compile them all again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compile-only TPU tests (libtpu topologies) may run in both xdist workers at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
