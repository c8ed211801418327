"""The suite runs with jaxtyping's runtime checks on the core (pyproject.toml's
``--jaxtyping-packages``), and tests marked ``bad_input`` run without them (conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxtyping
import pytest

import filtrax as fx


def test_a_wrong_shape_is_refused_by_the_runtime_check():
    # Log-weights are one per particle; a matrix of them is refused before the body runs.
    with pytest.raises(jaxtyping.TypeCheckError):
        fx.systematic(jax.random.key(0), jnp.zeros((4, 2)), 4)


@pytest.mark.bad_input
def test_a_bad_input_test_sees_what_users_see():
    # The same call as above is not checked here: a user's refusal must come from filtrax.
    assert jaxtyping.config.jaxtyping_disable
    ancestors = fx.systematic(jax.random.key(0), jnp.zeros((4, 2)), 4)
    assert ancestors.shape == (4,)
