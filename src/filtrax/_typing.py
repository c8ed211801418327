"""Shape aliases used in public signatures (one place, no sprawl).

A *state* is one ensemble member: an array of any shape ``*s``. Ensembles add a
leading ``particle`` axis and callers ``vmap`` over it. Observations are flat
vectors; a NaN entry means "not observed".
"""

import jax.core
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

State = Float[Array, "*s"]
Ensemble = Float[Array, "particle *s"]
Observation = Float[Array, " obs"]
ObservationMask = Bool[Array, " obs"]
LogWeights = Float[Array, " particle"]
Ancestors = Int[Array, " particle"]
Scalar = Float[Array, ""]
Key = PRNGKeyArray
Conditioning = PyTree


def is_traced(value: object) -> bool:
    """Whether ``value`` is a JAX tracer, i.e. abstract inside ``jit``/``vmap``/``grad``.

    Constructors check a tunable's range only when it is concrete: under tracing the value
    is a leaf of a compiled program and cannot be read without a host sync.
    """
    return isinstance(value, jax.core.Tracer)


__all__ = [
    "Ancestors",
    "Conditioning",
    "Ensemble",
    "Key",
    "LogWeights",
    "Observation",
    "ObservationMask",
    "Scalar",
    "State",
    "is_traced",
]
