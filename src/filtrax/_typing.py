"""Shape aliases used in public signatures (one place, no sprawl).

A *state* is one ensemble member: an array of any shape ``*s``. Ensembles add a
leading ``particle`` axis and callers ``vmap`` over it. Observations are flat
vectors; a NaN entry means "not observed".
"""

import jax.core
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree, UInt32
from jaxtyping import Key as KeyData

State = Float[Array, "*s"]
Ensemble = Float[Array, "particle *s"]
#: A two-frame emulator's particle state ``(x^{k-1}, x^k)`` (or the hybrid's frame and forecast).
FramePair = Float[Array, "2 *s"]
Observation = Float[Array, " obs"]
ObservationMask = Bool[Array, " obs"]
LogWeights = Float[Array, " particle"]
Ancestors = Int[Array, " particle"]
Scalar = Float[Array, ""]
Key = PRNGKeyArray
#: One key per particle (a typed key array, or raw ``uint32`` keys of shape ``(N, 2)``).
ParticleKeys = KeyData[Array, " particle"] | UInt32[Array, "particle 2"]
Conditioning = PyTree


def is_traced(value: object) -> bool:
    """Whether ``value`` is a JAX tracer, i.e. abstract inside ``jit``/``vmap``/``grad``.

    Constructors check a tunable's range only when it is concrete: under tracing the value
    is a leaf of a compiled program and cannot be read without a host sync.
    """
    return isinstance(value, jax.core.Tracer)


def tunable_leaf(value: ArrayLike) -> ArrayLike:
    """A tunable as an array leaf (a field converter), so that sweeping it reuses the
    compiled cycle. A NumPy array, not a JAX one: filters are built at import time as field
    defaults, and a JAX array there would start the backend before
    ``jax.distributed.initialize``. A traced value is kept as it is."""
    return value if is_traced(value) else np.asarray(value, dtype=float)


__all__ = [
    "Ancestors",
    "Conditioning",
    "Ensemble",
    "FramePair",
    "Key",
    "LogWeights",
    "Observation",
    "ObservationMask",
    "ParticleKeys",
    "Scalar",
    "State",
    "is_traced",
]
