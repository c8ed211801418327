"""Strict JAX settings for the whole suite; x64 for the oracle tests (marker ``x64``)."""

from __future__ import annotations

import gc
import os

import jax
import jaxtyping
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# The CLI switches on JAX's persistent compilation cache for the whole process. An in-process
# CLI call in one test would otherwise make every later test in the session write to (and
# load from) ~/.cache/filtrax/xla: slower, dependent on what earlier runs on the machine left
# there, and, on CI, a segmentation fault while loading entries. Tests of the cache itself run
# the CLI in a subprocess with their own directory.
os.environ["FILTRAX_CACHE_DIR"] = ""


@pytest.fixture(autouse=True)
def _precision(request: pytest.FixtureRequest):
    """Run tests marked ``x64`` with double precision, the rest in JAX's default float32."""
    if request.node.get_closest_marker("x64") is not None:
        with jax.enable_x64(True):
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _runtime_type_checks(request: pytest.FixtureRequest):
    """The suite runs with jaxtyping's runtime checks on filtrax's core (``--jaxtyping-packages``
    in pyproject.toml): every annotated shape and dtype is checked on every call. A test
    marked ``bad_input`` checks what a user sees, filtrax's own one-line refusal, and runs as
    a user does, without the checks, which would refuse the same input first."""
    if request.node.get_closest_marker("bad_input") is None:
        yield
        return
    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)


@pytest.fixture(autouse=True)
def _no_compilation_cache_leak():
    """Fail the test that switches on the process-wide compilation cache, and switch it off."""
    yield
    leaked = jax.config.jax_compilation_cache_dir
    if leaked is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        pytest.fail(f"the test switched on the XLA compilation cache at {leaked}")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program when a test module ends.

    Each XLA:CPU executable keeps its own memory mappings. A single process running the whole
    suite accumulated them (12 GB resident) until XLA crashed with a segmentation fault
    while compiling, in whichever test came late enough; the same test passes on its own.
    Nothing compiled in one module is needed by the next.
    """
    yield
    jax.clear_caches()
    gc.collect()
