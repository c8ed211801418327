"""Strict JAX settings for the whole suite; x64 for the oracle tests (marker ``x64``)."""

from __future__ import annotations

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(autouse=True)
def _precision(request: pytest.FixtureRequest):
    """Run tests marked ``x64`` with double precision, the rest in JAX's default float32."""
    if request.node.get_closest_marker("x64") is not None:
        with jax.enable_x64(True):
            yield
    else:
        yield
