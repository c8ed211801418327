r"""How per-particle work is laid out: vectorised, in bounded batches, or sharded over devices.

A filter's per-particle work (predictive weights, guided proposals, forecasts) is one pure
function mapped over the leading particle axis. An :class:`AbstractParticleMap` decides
how; the filters call it and never ``jax.vmap`` particles themselves.

* :class:`VectorisedParticles` — ``jax.vmap`` over all particles, or, with
  ``batch_size``, ``jax.lax.map`` over chunks of ``batch_size`` particles (``vmap`` inside
  a ``scan``). Memory then scales with ``batch_size``, not ``N``: the VJPs of guidance
  through a large denoiser hold activations for every particle of a batch at once.
* :class:`ShardedParticles` — the particle axis is split over a ``jax.sharding.Mesh`` axis
  with ``jax.shard_map``; each device maps its own particles (optionally in batches).

Everything *global* stays outside the map and is written once, for all layouts: the
weights, ESS, tempering exponent and the resampling indices are computed on the whole
``(N,)`` vector, and the ancestor gather ``x[a]`` crosses shards (XLA's SPMD partitioner
inserts the collectives). Particle ``i``'s key is ``fold_in(cycle_key, i)`` with the
*global* index ``i``, and the selection runs on a replicated copy of the log-likelihoods,
so for a given key the tempering exponents and ancestors are identical whatever the
number of devices or the batch size. With the same ``batch_size`` on every device the
particle filters' analysis is bit for bit the same on 1, 2 or 4 devices. Two things
still round differently, by at most 2 ulp (1.9e-6 on values near 10): another batch width
(XLA's CPU matrix kernels accumulate differently for other widths), and the EnKF, whose
ensemble means are sums across shards (``tests/test_parallel.py`` checks all of this).

**Multi-host.** With ``jax.distributed.initialize()`` run first (see
:func:`initialize_distributed`), ``jax.devices()`` lists every process's devices and a
mesh built from them spans hosts; the same code then runs as one SPMD program per
process (JAX's multi-controller runtime). Arrays read back to the host go through
:func:`to_host`, which gathers non-addressable shards.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

PARTICLE_AXIS = "particles"


def _check_batch_size(batch_size: int | None, owner: str) -> None:
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"{owner}.batch_size must be None or an integer >= 1, got {batch_size!r}")


def _map_local(fn: Callable, trees: tuple, batch_size: int | None) -> PyTree:
    """``fn`` over the leading axis of ``trees``: ``vmap``, or ``lax.map`` in batches."""
    if batch_size is None:
        return jax.vmap(fn)(*trees)
    return jax.lax.map(lambda args: fn(*args), trees, batch_size=batch_size)


class AbstractParticleMap(eqx.Module):
    """Maps a per-particle function over the leading particle axis of its arguments."""

    @abc.abstractmethod
    def __call__(self, fn: Callable[..., PyTree], *trees: PyTree) -> PyTree:
        """``fn(*[t[i] for t in trees])`` stacked over particles ``i``."""

    def check(self, num_particles: int) -> None:
        """Raise ``ValueError`` if ``num_particles`` cannot be laid out."""

    def place(self, tree: PyTree) -> PyTree:
        """Put arrays with a leading particle axis where this layout wants them."""
        return tree

    def constrain(self, tree: PyTree) -> PyTree:
        """Inside ``jit``: pin the layout of arrays with a leading particle axis."""
        return tree

    def replicate(self, tree: PyTree) -> PyTree:
        """Inside ``jit``: a full copy on every device (for small per-particle vectors).

        Reductions over the particle axis of a split array are summed shard by shard,
        in another order than on one device; the selection step (weights, ESS, α,
        resampling) therefore runs on replicated log-likelihoods, so that its result is
        bit-identical whatever the device count.
        """
        return tree


class VectorisedParticles(AbstractParticleMap):
    """All particles on one device: ``vmap``, or ``lax.map`` over batches.

    Attributes:
        batch_size: at most this many particles are evaluated at once (``None``: all).
    """

    batch_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        _check_batch_size(self.batch_size, "VectorisedParticles")

    def __call__(self, fn, *trees):
        return _map_local(fn, trees, self.batch_size)


class ShardedParticles(AbstractParticleMap):
    """Particles split over one axis of a device mesh (``jax.shard_map``).

    Attributes:
        mesh: the device mesh (all of ``jax.devices()`` by default, see :func:`particle_mesh`).
        axis_name: the mesh axis the particles are split over.
        batch_size: at most this many particles per device are evaluated at once.
    """

    mesh: Mesh = eqx.field(static=True)
    axis_name: str = eqx.field(static=True, default=PARTICLE_AXIS)
    batch_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        _check_batch_size(self.batch_size, "ShardedParticles")
        if self.axis_name not in self.mesh.axis_names:
            raise ValueError(
                f"ShardedParticles.axis_name is {self.axis_name!r}; the mesh has axes "
                f"{tuple(self.mesh.axis_names)}"
            )

    @property
    def num_shards(self) -> int:
        return int(self.mesh.shape[self.axis_name])

    @property
    def sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(self.axis_name))

    def check(self, num_particles: int) -> None:
        if num_particles % self.num_shards:
            raise ValueError(
                f"num_particles = {num_particles} cannot be split over the {self.num_shards} "
                f"devices of mesh axis {self.axis_name!r}: it must be a multiple of "
                f"{self.num_shards}"
            )

    def __call__(self, fn, *trees):
        spec = P(self.axis_name)
        batch_size = self.batch_size

        def local(*local_trees):
            return _map_local(fn, local_trees, batch_size)

        # Closed-over arrays (network weights, the observation) are replicated; only the
        # particle-indexed arguments are split. check_vma is off because the per-particle
        # function may contain loops whose carries mix replicated and split values.
        mapped = jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=tuple(spec for _ in trees),
            out_specs=spec,
            check_vma=False,
        )
        return mapped(*trees)

    def place(self, tree):
        self.check(jax.tree_util.tree_leaves(tree)[0].shape[0])
        return jax.device_put(tree, self.sharding)

    def constrain(self, tree):
        return jax.lax.with_sharding_constraint(tree, self.sharding)

    def replicate(self, tree):
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, P()))


def particle_mesh(num_devices: int | None = None, axis_name: str = PARTICLE_AXIS) -> Mesh:
    """A one-axis mesh over the first ``num_devices`` of ``jax.devices()`` (all by default).

    After :func:`initialize_distributed`, ``jax.devices()`` holds every process's devices.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices = {num_devices} but JAX sees {len(devices)} device(s) "
            f"({devices[0].platform}); expected 1..{len(devices)}"
        )
    return Mesh(np.asarray(devices[:num_devices]), (axis_name,))


def particle_map(
    devices: int | str | None = None, batch_size: int | None = None
) -> AbstractParticleMap:
    """The layout for a run: ``devices`` = ``None``/1 (one device), an integer, or ``"all"``."""
    if devices == "all":
        devices = len(jax.devices())
    if devices is None or devices == 1:
        return VectorisedParticles(batch_size)
    if isinstance(devices, str) or int(devices) != devices:
        raise ValueError(f"devices must be an integer or 'all', got {devices!r}")
    return ShardedParticles(particle_mesh(int(devices)), batch_size=batch_size)


def initialize_distributed() -> None:
    """Join JAX's multi-controller runtime (``jax.distributed.initialize``) once.

    Under SLURM (``srun``) or Open MPI, JAX detects the coordinator, the process count and
    this process's id itself; elsewhere set ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. Call it before anything touches a device.
    """
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = {
            "coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
            "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["JAX_PROCESS_ID"]),
        }
    jax.distributed.initialize(**kwargs)


def is_main_process() -> bool:
    """Only process 0 writes files in a multi-host run."""
    return jax.process_index() == 0


def to_host(tree: PyTree) -> PyTree:
    """NumPy copies of ``tree``'s arrays, gathering shards that live on other hosts."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)
