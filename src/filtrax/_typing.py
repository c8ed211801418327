"""Shape aliases used in public signatures (one place, no sprawl).

A *state* is one ensemble member: an array of any shape ``*s``. Ensembles add a
leading ``particle`` axis and callers ``vmap`` over it. Observations are flat
vectors; a NaN entry means "not observed".
"""

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
]
