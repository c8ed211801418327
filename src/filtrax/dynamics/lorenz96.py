r"""The two-scale Lorenz (1996) system, integrated in JAX, and a slow-variable data set.

With :math:`K` slow variables :math:`X_k` and :math:`J` fast variables per slow one,
:math:`Y_n`, :math:`n = kJ + j` (:math:`j = 0..J-1`), all indices cyclic,

.. math::
    \frac{dX_k}{dt} &= X_{k-1}(X_{k+1} - X_{k-2}) - X_k + F
        - \frac{hc}{b}\sum_{j=0}^{J-1} Y_{kJ+j}, \\
    \frac{dY_n}{dt} &= -cb\,Y_{n+1}(Y_{n+2} - Y_{n-1}) - c\,Y_n
        + \frac{hc}{b} X_{\lfloor n/J \rfloor}.

The fast variables form one ring of length :math:`KJ` (:math:`Y_{n+1}` of the last fast
variable of sector :math:`k` is the first of sector :math:`k+1`), and the flat state is
``[X_0..X_{K-1}, Y_0..Y_{KJ-1}]`` of length :math:`K + KJ`: slow variables first, then the
fast ones grouped by the slow variable they couple to.

These are exactly the equations, parameter names, state ordering and (RK4, ``dt = 0.005``)
integration of DAPPER's ``dapper.mods.LorenzUV`` (its ``U`` is :math:`X`, its ``V`` is
:math:`Y`, its ``nU`` is :math:`K`): ``model_instance.dxdt`` in
``dapper/mods/LorenzUV/__init__.py`` writes the fast tendency as
:math:`\tfrac{c}{b}\,\mathrm{L96}(bY)` on the reversed ring, which expands to the
expression above; ``dapper/mods/LorenzUV/wilks05.py`` and ``lorenz96.py`` fix the two
settings of :meth:`TwoScaleLorenz96.wilks05` and :meth:`TwoScaleLorenz96.lorenz96`.
``tests/test_lorenz96.py`` checks tendencies and RK4 trajectories against DAPPER.

References:
    Lorenz (1996), *Predictability: a problem partly solved*, ECMWF Seminar on
    Predictability (the system; :math:`K = 36, J = 10, F = 10, h = 1, b = c = 10`).
    Wilks (2005), *Effects of stochastic parametrizations in the Lorenz '96 system*,
    Q. J. R. Meteorol. Soc. 131, 389–407 (:math:`K = 8, J = 32, F = 20, h = 1, b = c = 10`).
    Raanes et al., DAPPER 1.7, module ``dapper.mods.LorenzUV`` (the conventions reference).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._typing import Key, State

#: DAPPER's integration step for the full (two-scale) model in both settings.
DEFAULT_DT = 0.005

#: Standard deviation of the Gaussian perturbation of the initial state (DAPPER's
#: ``X0 = GaussRV(mu=x0, C=0.01)``).
INITIAL_PERTURBATION_STD = 0.1


def _check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    lower = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lower:
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _check_finite(name: str, value: object, *, positive: bool = False) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        expected = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _steps_per(name: str, duration: float, dt_name: str, dt: float, *, allow_zero: bool) -> int:
    """``duration / dt`` as an integer, or a ValueError naming both."""
    ratio = duration / dt
    steps = round(ratio)
    lower = 0 if allow_zero else 1
    if steps < lower or abs(ratio - steps) > 1e-9 * max(1.0, ratio):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(
            f"{name}={duration!r} must be {kind} integer multiple of {dt_name}={dt!r} "
            f"(ratio {ratio!r})"
        )
    return steps


def _l96_advection(x: Array) -> Array:
    r""":math:`x_{i-1}(x_{i+1} - x_{i-2})` on a ring along the last axis."""
    return jnp.roll(x, 1, axis=-1) * (jnp.roll(x, -1, axis=-1) - jnp.roll(x, 2, axis=-1))


class TwoScaleLorenz96(eqx.Module):
    """The two-scale Lorenz-96 system (Lorenz 1996) with DAPPER ``LorenzUV`` conventions.

    Attributes:
        num_slow: :math:`K`, the number of slow variables :math:`X` (DAPPER's ``nU``).
        num_fast_per_slow: :math:`J`, fast variables :math:`Y` per slow one (DAPPER's ``J``).
        forcing: :math:`F`.
        coupling: :math:`h`, the coupling constant.
        time_scale_ratio: :math:`c`, how much faster :math:`Y` evolves than :math:`X`.
        amplitude_ratio: :math:`b`, how much smaller :math:`Y` is than :math:`X`.

    The parameters are static Python numbers, so one model serves float32 and float64
    states alike (weakly typed scalars never promote the state's dtype). Every method
    takes states with any leading batch axes and the flat length :attr:`state_dim` last.
    """

    num_slow: int = eqx.field(static=True)
    num_fast_per_slow: int = eqx.field(static=True)
    forcing: float = eqx.field(static=True)
    coupling: float = eqx.field(static=True)
    time_scale_ratio: float = eqx.field(static=True)
    amplitude_ratio: float = eqx.field(static=True)

    def __init__(
        self,
        num_slow: int,
        num_fast_per_slow: int,
        forcing: float,
        coupling: float,
        time_scale_ratio: float,
        amplitude_ratio: float,
    ):
        self.num_slow = _check_positive_int("num_slow", num_slow)
        if self.num_slow < 4:
            raise ValueError(
                f"num_slow must be at least 4 (the advection couples k-2..k+1), got {num_slow!r}"
            )
        self.num_fast_per_slow = _check_positive_int("num_fast_per_slow", num_fast_per_slow)
        self.forcing = _check_finite("forcing", forcing)
        self.coupling = _check_finite("coupling", coupling)
        self.time_scale_ratio = _check_finite("time_scale_ratio", time_scale_ratio, positive=True)
        self.amplitude_ratio = _check_finite("amplitude_ratio", amplitude_ratio, positive=True)

    @classmethod
    def wilks05(cls) -> TwoScaleLorenz96:
        """Wilks (2005): ``K=8, J=32, F=20, h=1, b=c=10`` (DAPPER ``LorenzUV/wilks05.py``)."""
        return cls(8, 32, forcing=20.0, coupling=1.0, time_scale_ratio=10.0, amplitude_ratio=10.0)

    @classmethod
    def lorenz96(cls) -> TwoScaleLorenz96:
        """Lorenz (1996): ``K=36, J=10, F=10, h=1, b=c=10`` (DAPPER ``LorenzUV/lorenz96.py``)."""
        return cls(36, 10, forcing=10.0, coupling=1.0, time_scale_ratio=10.0, amplitude_ratio=10.0)

    @property
    def num_fast(self) -> int:
        """:math:`KJ`, the length of the fast ring."""
        return self.num_slow * self.num_fast_per_slow

    @property
    def state_dim(self) -> int:
        """:math:`K + KJ`, the flat state length (DAPPER's ``M``)."""
        return self.num_slow + self.num_fast

    @property
    def parameters(self) -> dict[str, float | int]:
        """The six parameters by field name (as recorded in data set attributes)."""
        return {
            "num_slow": self.num_slow,
            "num_fast_per_slow": self.num_fast_per_slow,
            "forcing": self.forcing,
            "coupling": self.coupling,
            "time_scale_ratio": self.time_scale_ratio,
            "amplitude_ratio": self.amplitude_ratio,
        }

    def _check_state(self, state: State) -> None:
        if state.ndim < 1 or state.shape[-1] != self.state_dim:
            raise ValueError(
                f"state must have last axis of length K + K*J = {self.state_dim}, "
                f"got shape {state.shape}"
            )

    def slow(self, state: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch K"]:
        """The slow variables :math:`X` (the first :math:`K` entries)."""
        state = jnp.asarray(state)
        self._check_state(state)
        return state[..., : self.num_slow]

    def fast(self, state: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch K J"]:
        """The fast variables :math:`Y`, shaped ``(..., K, J)`` (row ``k`` couples to ``X_k``)."""
        state = jnp.asarray(state)
        self._check_state(state)
        fast = state[..., self.num_slow :]
        return fast.reshape((*fast.shape[:-1], self.num_slow, self.num_fast_per_slow))

    @eqx.filter_jit
    def initial_state(self, key: Key, batch_shape: tuple[int, ...] = (), dtype=None) -> State:
        r"""DAPPER's initial draw :math:`e_0 + 0.1\,\xi`, :math:`\xi \sim \mathcal N(0, I)`.

        :math:`e_0` sets :math:`X_0 = 1` and every other variable to zero (DAPPER's
        ``model_instance.x0``); the noise has variance 0.01 (its ``GaussRV(C=0.01)``),
        drawn with ``jax.random.normal(key, (*batch_shape, K + K*J), dtype)``. ``dtype``
        defaults to JAX's default float.
        """
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        noise = jax.random.normal(key, (*batch_shape, self.state_dim), dtype)
        return (INITIAL_PERTURBATION_STD * noise).at[..., 0].add(1.0)

    @eqx.filter_jit
    def tendency(self, state: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d"]:
        """:math:`d(X, Y)/dt` of the flat state (equations in the module docstring)."""
        state = jnp.asarray(state)
        self._check_state(state)
        K, J = self.num_slow, self.num_fast_per_slow
        h, c, b = self.coupling, self.time_scale_ratio, self.amplitude_ratio
        X, Y = state[..., :K], state[..., K:]
        coupling = h * c / b
        Y_sums = Y.reshape((*Y.shape[:-1], K, J)).sum(axis=-1)
        dX = _l96_advection(X) - X + self.forcing - coupling * Y_sums
        # -cb Y_{n+1}(Y_{n+2} - Y_{n-1}): the L96 advection on the reversed ring.
        Y_advection = jnp.roll(Y, -1, axis=-1) * (
            jnp.roll(Y, -2, axis=-1) - jnp.roll(Y, 1, axis=-1)
        )
        dY = -c * b * Y_advection - c * Y + coupling * jnp.repeat(X, J, axis=-1)
        return jnp.concatenate([dX, dY], axis=-1)

    @eqx.filter_jit
    def step(
        self, state: Float[ArrayLike, "*batch d"], dt: float | Array
    ) -> Float[Array, "*batch d"]:
        """One classical fourth-order Runge–Kutta step of length ``dt``."""
        state = jnp.asarray(state)
        f = self.tendency
        k1 = dt * f(state)
        k2 = dt * f(state + k1 / 2)
        k3 = dt * f(state + k2 / 2)
        k4 = dt * f(state + k3)
        return state + (k1 + 2 * (k2 + k3) + k4) / 6

    def integrate(
        self, state: Float[ArrayLike, "*batch d"], dt: float, num_steps: int, save_every: int = 1
    ) -> Float[Array, "save *batch d"]:
        """``num_steps`` RK4 steps from ``state``, saving after every ``save_every`` steps.

        Returns the ``num_steps // save_every`` saved states (the initial state excluded),
        stacked on a new leading axis; ``num_steps`` must be a multiple of ``save_every``.
        """
        state = jnp.asarray(state)
        self._check_state(state)
        dt = _check_finite("dt", dt, positive=True)
        num_steps = _check_positive_int("num_steps", num_steps)
        save_every = _check_positive_int("save_every", save_every)
        if num_steps % save_every:
            raise ValueError(f"num_steps={num_steps} must be a multiple of save_every={save_every}")
        _, saved = _scan(self, state, dt, num_steps // save_every, save_every)
        return saved


#: The named two-scale settings (Wilks 2005; Lorenz 1996), as configs and cards name them.
SETTINGS = {"wilks05": TwoScaleLorenz96.wilks05, "lorenz96": TwoScaleLorenz96.lorenz96}


def setting_model(name: str) -> TwoScaleLorenz96:
    """The two-scale model of the named setting."""
    if name not in SETTINGS:
        raise ValueError(f"unknown Lorenz-96 setting {name!r}; expected one of {sorted(SETTINGS)}")
    return SETTINGS[name]()


@eqx.filter_jit
def _scan(
    model: TwoScaleLorenz96,
    state: State,
    dt: float,
    num_saves: int,
    save_every: int,
) -> tuple[State, Float[Array, " save *s"]]:
    """``num_saves`` blocks of ``save_every`` RK4 steps; the final and each block's end state."""

    def block(x, _):
        x = jax.lax.fori_loop(0, save_every, lambda _, y: model.step(y, dt), x)
        return x, x

    return jax.lax.scan(block, state, length=num_saves)


@eqx.filter_jit
def _sample_slow(
    model: TwoScaleLorenz96,
    state: State,
    dt: Array,
    spin_up_steps: Array,
    steps_per_sample: Array,
    num_samples: int,
) -> Array:
    """Spin up, then ``num_samples`` slow states ``steps_per_sample`` RK4 steps apart.

    The step counts and ``dt`` are traced (one compilation per model, shape and
    ``num_samples``), so the loops are ``while`` loops: forward use only.
    """

    def advance(x, num_steps):
        return jax.lax.fori_loop(0, num_steps, lambda _, y: model.step(y, dt), x)

    def block(x, index):
        x = advance(x, jnp.where(index == 0, 0, steps_per_sample))
        return x, model.slow(x)

    _, samples = jax.lax.scan(block, advance(state, spin_up_steps), jnp.arange(num_samples))
    return samples


def _sampling_steps(dt_integration, sample_every, spin_up_time):
    """The checked times and the RK4 step counts they are multiples of."""
    dt_integration = _check_finite("dt_integration", dt_integration, positive=True)
    sample_every = _check_finite("sample_every", sample_every, positive=True)
    spin_up_time = _check_finite("spin_up_time", spin_up_time)
    steps_per_sample = _steps_per(
        "sample_every", sample_every, "dt_integration", dt_integration, allow_zero=False
    )
    spin_up_steps = _steps_per(
        "spin_up_time", spin_up_time, "dt_integration", dt_integration, allow_zero=True
    )
    return dt_integration, sample_every, spin_up_time, steps_per_sample, spin_up_steps


def sample_slow_trajectories(
    model: TwoScaleLorenz96,
    key: Key,
    *,
    dt_integration: float = DEFAULT_DT,
    sample_every: float,
    spin_up_time: float,
    num_samples: int,
    num_trajectories: int = 1,
    dtype=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    r"""Slow-variable trajectories of ``model`` after a spin-up: ``(X, time, attributes)``.

    Each trajectory starts from :meth:`TwoScaleLorenz96.initial_state` drawn with
    ``key`` for the batch ``(num_trajectories,)`` (trajectory ``i`` is row ``i`` of one
    ``jax.random.normal(key, (num_trajectories, K + K*J))`` draw), is integrated with RK4
    at ``dt_integration`` for ``spin_up_time`` (discarded), and then sampled
    ``num_samples`` times every ``sample_every`` (:math:`\Delta t`): sample 0 is the state
    at the end of the spin-up, sample ``i`` is :math:`i\,\Delta t` later. The ``time``
    coordinate is model time since the initial draw, ``spin_up_time + i * sample_every``.

    Both ``sample_every`` and ``spin_up_time`` must be integer multiples of
    ``dt_integration`` (``spin_up_time`` may be 0), e.g. :math:`\Delta t \in \{0.05, 0.2\}`
    with DAPPER's ``dt = 0.005``. The integration runs in ``dtype`` (JAX's default float
    unless given; float64 needs ``jax_enable_x64``); ``X`` is stored as float32.

    Returns:
        ``X`` of shape ``(trajectory, time, site)``, the model times and attributes recording
        the parameters (:attr:`TwoScaleLorenz96.parameters`), ``dt_integration``,
        ``sample_every``, ``steps_per_sample``, ``spin_up_time``, ``spin_up_steps``,
        ``num_samples``, ``length`` (``(num_samples - 1) * sample_every``),
        ``num_trajectories`` and the key (``key_data``, ``key_impl``: rebuild it with
        ``jax.random.wrap_key_data(np.array(key_data.split(), np.uint32), impl=key_impl)``).
    """
    if not isinstance(model, TwoScaleLorenz96):
        raise ValueError(f"model must be a TwoScaleLorenz96, got {type(model).__name__}")
    dt_integration, sample_every, spin_up_time, steps_per_sample, spin_up_steps = _sampling_steps(
        dt_integration, sample_every, spin_up_time
    )
    num_samples = _check_positive_int("num_samples", num_samples)
    num_trajectories = _check_positive_int("num_trajectories", num_trajectories)

    typed_key = (
        key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)
    )
    state = model.initial_state(typed_key, (num_trajectories,), dtype)
    samples = _sample_slow(
        model,
        state,
        jnp.asarray(dt_integration, state.dtype),
        jnp.asarray(spin_up_steps),
        jnp.asarray(steps_per_sample),
        num_samples,
    )
    X = np.asarray(samples, np.float32).transpose(1, 0, 2)  # (trajectory, time, site)

    time = spin_up_time + sample_every * np.arange(num_samples, dtype=np.float64)
    key_data = np.asarray(jax.random.key_data(typed_key), np.uint32).ravel()
    attrs = {
        "title": "two-scale Lorenz-96 slow variables X",
        "conventions_reference": "DAPPER 1.7 dapper.mods.LorenzUV (state = [X, Y])",
        **model.parameters,
        "dt_integration": dt_integration,
        "integrator": "RK4",
        "sample_every": sample_every,
        "steps_per_sample": steps_per_sample,
        "spin_up_time": spin_up_time,
        "spin_up_steps": spin_up_steps,
        "num_samples": num_samples,
        "length": (num_samples - 1) * sample_every,
        "num_trajectories": num_trajectories,
        "integration_dtype": str(samples.dtype),
        "initial_state": "e_0 + 0.1 * N(0, I) per trajectory (DAPPER X0)",
        "key_data": " ".join(str(int(v)) for v in key_data),
        "key_impl": str(jax.random.key_impl(typed_key)),
    }
    return X, time, attrs


def full_trajectory(
    model: TwoScaleLorenz96,
    key: Key,
    *,
    spin_up_time: float,
    num_steps: int,
    dt_integration: float = DEFAULT_DT,
) -> np.ndarray:
    """The full state ``[X, Y]`` at every RK4 step after a spin-up: ``(num_steps + 1, K + KJ)``.

    Row 0 is the state after ``spin_up_time`` from :meth:`TwoScaleLorenz96.initial_state`
    (drawn with ``key``), row ``j`` is ``j`` steps later. Twin experiments take their truth
    from here, so that every consumer (our filters, DAPPER's) sees the same float32
    trajectory: two integrations that differ only in round-off decorrelate within a few
    model time units in this chaotic system.
    """
    num_steps = _check_positive_int("num_steps", num_steps)
    spin_steps = _steps_per(
        "spin_up_time", spin_up_time, "dt_integration", dt_integration, allow_zero=True
    )
    state = model.initial_state(key)
    if spin_steps:
        state = model.integrate(state, dt_integration, spin_steps, save_every=spin_steps)[-1]
    steps = model.integrate(state, dt_integration, num_steps)
    return np.concatenate([np.asarray(state)[None], np.asarray(steps)])
