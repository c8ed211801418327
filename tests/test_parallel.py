"""Particle layouts: batched and sharded maps give the single-device analysis.

The multi-device checks run in a subprocess with ``XLA_FLAGS`` asking for 4 host
devices (the flag must be set before JAX starts, and the rest of the suite runs on one
device). The reference is computed here, in this one-device process.

What is exact and what is round-off: with the same ``particle_batch_size`` on every device
the FA-APF analysis is bit for bit the same on 1, 2 and 4 devices, and the block-local FA-APF's
and the bootstrap's on 1 and 4 (the layouts checked). Changing
the batch width changes the bits (XLA's CPU matrix kernels round differently for different
widths), and the EnKF's ensemble means are sums across shards, so those agree to float32
round-off only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from filtrax import assimilate
from filtrax.experiments.config import ConfigError, load_config
from filtrax.experiments.factory import build_experiment, build_filter, build_particle_map
from filtrax.parallel import (
    ShardedParticles,
    VectorisedParticles,
    particle_map,
    particle_mesh,
)

CONFIG = "configs/lorenz96/wilks05.toml"
OVERRIDES = ["filter.particles=8", "run.cycles=3", "run.burn_in=0"]
METHODS = ("fa_apf", "bootstrap", "enkf", "fa_apf_local")
# Each method's filter and config overrides; "fa_apf_local" selects per block of 2 sites.
METHOD_SETTINGS = {
    "fa_apf": ("fa_apf", []),
    "bootstrap": ("bootstrap", []),
    "enkf": ("enkf", []),
    "fa_apf_local": ("fa_apf", ["filter.localisation_block=[2]"]),
}
# float32 round-off: batched kernels of another width, and sums across shards, round
# differently.
ROUND_OFF = 1e-5
# The per-device batch width of the bit-for-bit comparisons.
EXACT_BATCH = 2
# The sharded layouts each method runs in the 4-device subprocess. "4" (the whole shard in one
# batch) is compared with the one-device analysis to round-off, for the FA-APF (another batch
# width) and the EnKF (its means are sums across shards). "4_batch2" and "2_batch2" are
# compared bit for bit with one device at the same batch width: the FA-APF on 4 and 2 devices,
# the bootstrap and the block-local FA-APF (whose sharded code paths are the FA-APF's) on 4.
# The batch width on one device is test_particle_batch_size_does_not_change_the_analysis.
LAYOUTS_OF = {
    "fa_apf": ("4", "4_batch2", "2_batch2"),
    "bootstrap": ("4_batch2",),
    "enkf": ("4",),
    "fa_apf_local": ("4_batch2",),
}
# The methods whose one-device analysis the "4" layout is compared with.
ROUND_OFF_METHODS = tuple(m for m, layouts in LAYOUTS_OF.items() if "4" in layouts)

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from filtrax import assimilate
    from filtrax.experiments.config import load_config
    from filtrax.experiments.factory import build_experiment, build_filter
    from filtrax.parallel import ShardedParticles, particle_mesh

    assert len(jax.devices()) == 4, jax.devices()
    cfg = load_config({config!r}, {overrides!r})
    exp = build_experiment(cfg)
    settings = {settings!r}
    layouts = {{
        "4": ShardedParticles(particle_mesh(4)),
        "4_batch2": ShardedParticles(particle_mesh(4), batch_size={exact_batch}),
        "2_batch2": ShardedParticles(particle_mesh(2), batch_size={exact_batch}),
    }}
    out = {{}}
    for method in {methods!r}:
        for name, layout in layouts.items():
            # Each layout is a compilation of its own, the suite's largest cost here, so each
            # method runs the layouts that check something no other one does.
            if name not in {layouts_of!r}[method]:
                continue
            kind, extra = settings[method]
            method_cfg = load_config({config!r}, [*{overrides!r}, *extra])
            f = build_filter(method_cfg, exp.emulator, kind, layout)
            r = assimilate(
                f, exp.initial_particles, exp.observations[:3], exp.observation_model,
                key=jax.random.key(0),
            )
            sharding = r.final_state.particles.sharding
            assert len(sharding.device_set) == int(name[0]), sharding
            out[f"{{method}}/{{name}}/analysis"] = np.asarray(r.analysis)
            out[f"{{method}}/{{name}}/alpha"] = np.asarray(r.diagnostics.alpha)
            out[f"{{method}}/{{name}}/ess"] = np.asarray(r.diagnostics.ess)
    try:
        ShardedParticles(particle_mesh(4)).place(exp.initial_particles[:6])
    except ValueError as error:
        out["error"] = np.asarray(str(error))
    np.savez(sys.argv[1], **out)
    """
)


@pytest.fixture(scope="module")
def setting():
    cfg = load_config(CONFIG, OVERRIDES)
    return cfg, build_experiment(cfg)


def run(cfg, exp, method, layout):
    kind, extra = METHOD_SETTINGS[method]
    method_cfg = load_config(CONFIG, [*OVERRIDES, *extra]) if extra else cfg
    f = build_filter(method_cfg, exp.emulator, kind, layout)
    return assimilate(
        f, exp.initial_particles, exp.observations[:3], exp.observation_model, key=jax.random.key(0)
    )


@pytest.fixture(scope="module")
def reference(setting):
    cfg, exp = setting
    return {method: run(cfg, exp, method, VectorisedParticles()) for method in ROUND_OFF_METHODS}


def assert_same_analysis(result_analysis, reference_result, alpha=None):
    expected = np.asarray(reference_result.analysis)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(result_analysis, expected, rtol=0, atol=ROUND_OFF * scale)
    if alpha is not None:
        # The discrete decisions (α by bisection, the resampled ancestors) are identical.
        np.testing.assert_array_equal(alpha, np.asarray(reference_result.diagnostics.alpha))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_particle_batch_size_does_not_change_the_analysis(setting, reference, batch_size):
    cfg, exp = setting
    result = run(cfg, exp, "fa_apf", VectorisedParticles(batch_size))
    assert_same_analysis(
        np.asarray(result.analysis), reference["fa_apf"], np.asarray(result.diagnostics.alpha)
    )


def test_analysis_is_the_same_on_one_and_four_devices(setting, reference, tmp_path):
    cfg, exp = setting
    out = tmp_path / "sharded.npz"
    code = SCRIPT.format(
        config=CONFIG,
        overrides=OVERRIDES,
        methods=METHODS,
        settings=METHOD_SETTINGS,
        exact_batch=EXACT_BATCH,
        layouts_of=LAYOUTS_OF,
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = np.load(out)
    for method in ROUND_OFF_METHODS:
        assert_same_analysis(
            data[f"{method}/4/analysis"], reference[method], data[f"{method}/4/alpha"]
        )
    assert "num_particles = 6" in str(data["error"]) and "multiple of 4" in str(data["error"])
    # Same batch width on every device: bit for bit, for the particle filters.
    for method in ("fa_apf", "bootstrap", "fa_apf_local"):
        single = run(cfg, exp, method, VectorisedParticles(EXACT_BATCH))
        for name in (n for n in LAYOUTS_OF[method] if n != "4"):
            np.testing.assert_array_equal(
                data[f"{method}/{name}/analysis"],
                np.asarray(single.analysis),
                err_msg=f"{method} on layout {name}",
            )


class _MisalignedKeys(VectorisedParticles):
    """A wrong layout: each particle gets its neighbour's key, as a sharded map would if
    it re-derived the keys from shard-local indices."""

    def __call__(self, fn, *trees):
        keys, *rest = trees
        return super().__call__(fn, jax.numpy.roll(keys, 2, axis=0), *rest)


def test_the_comparison_catches_a_key_mix_up(setting, reference):
    cfg, exp = setting
    result = run(cfg, exp, "fa_apf", _MisalignedKeys())
    with pytest.raises(AssertionError):
        assert_same_analysis(np.asarray(result.analysis), reference["fa_apf"])


def test_layout_errors_name_the_field():
    with pytest.raises(ValueError, match="batch_size must be None or an integer >= 1, got 0"):
        VectorisedParticles(0)
    with pytest.raises(ValueError, match="axis_name is 'members'"):
        ShardedParticles(particle_mesh(1), axis_name="members")
    with pytest.raises(ValueError, match="num_devices = 3 but JAX sees 1 device"):
        particle_mesh(3)
    with pytest.raises(ValueError, match="devices must be an integer or 'all'"):
        particle_map("some")
    assert isinstance(particle_map("all"), VectorisedParticles)  # one device here


def test_parallel_config_is_checked_and_builds_the_layout():
    cfg = load_config(CONFIG, [*OVERRIDES, "parallel.particle_batch_size=4"])
    layout = build_particle_map(cfg)
    assert isinstance(layout, VectorisedParticles) and layout.batch_size == 4
    with pytest.raises(ConfigError, match=r"parallel\.devices: num_devices = 2"):
        build_particle_map(load_config(CONFIG, [*OVERRIDES, "parallel.devices=2"]))
