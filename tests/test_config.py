"""The experiment config schema: defaults, TOML round trip, every error message, overrides."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from filtrax.experiments.config import (
    ConfigError,
    ExperimentConfig,
    FilterConfig,
    ModelConfig,
    config_from_dict,
    load_config,
    valid_keys,
)

FULL_TOML = r"""
name = "full \"quoted\" run \\ ünïcode"
seed = 7

[model]
name = "gaussian_field"
factory = ""
initial_spread = 0.5
initial_ensemble = ""
num_lat = 8
num_lon = 16
variables = ["temperature", "geopotential"]
levels = [500, 850.5]
correlation_length_km = 900
ar_coefficient = 0.75
noise_std = 2.0

[truth]
source = "file"
path = "truth.zarr"

[observations]
source = "stations"
path = "stations.csv"
variables = ["temperature"]
levels = []
stride = 2
error_std = 1e-3
every = 3
stations = 0
network_seed = 7

[filter]
method = "bootstrap"
particles = 256
weights = "moment_matched"
tempering = "fixed"
alpha = 0.5
ess_band = [0.1, 0.5]
resampling = "residual"
weight_sigma_max = 10.0
noise_draws = 4
cg_iterations = 8
skip_first_selection = false
inflation = 1.05
localisation_block = [2, 4]
localisation_half_width = 0.0
relaxation = 0.0
rejuvenation = "none"
rejuvenation_bandwidth = 0.5
rejuvenation_regularisation = 0.05
hybrid = "none"
observation_error_inflation = 2.0
adaptive_inflation = true
inflation_max = 1.5

[sampler]
name = "adams_bashforth"
levels = 32
sigma_max = 100.0
sigma_min = 0.002
rho = 5.0
churn = 0.0
churn_noise = 1.0
eta = 0.0
order = 5
corrections = 0
langevin_step = 0.1

[guidance]
name = "dps"
iterations = 3
solver = "gmres"
gamma = 0.0
scale = 2.5

[run]
cycles = 10
burn_in = 2
cycle_hours = 6
start_time = "2020-01-01T06:00"
output_format = "netcdf"
record_ensemble = false
baseline = false
profile = false
observation_diagnostics = true

[parallel]
devices = 4
particle_batch_size = 16
distributed = true
"""


def write(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(data: dict | None = None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data or {}, overrides)
    return str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == ExperimentConfig()
    assert cfg.name == "experiment" and cfg.seed == 0
    assert cfg.model.name == "linear_gaussian" and cfg.model.state_dim == 16
    assert cfg.model.variables == ("temperature", "u_component_of_wind")
    assert cfg.model.levels == ()
    assert cfg.filter.method == "fa_apf" and cfg.filter.particles == 64
    assert cfg.filter.ess_band == (0.2, 0.25)
    assert cfg.filter.skip_first_selection is True
    assert cfg.sampler.name == "dpmpp2s" and cfg.sampler.sigma_min == 0.03
    assert cfg.guidance.name == "mmps"
    assert cfg.run.cycles == 30 and cfg.run.start_time == "2000-01-01T00:00"
    hash(cfg)  # frozen and hashable


def test_defaults_round_trip():
    cfg = ExperimentConfig()
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert cfg.to_dict()["filter"]["ess_band"] == [0.2, 0.25]


def test_full_file_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, FULL_TOML))
    data = {**cfg.full_dict(), "model": cfg.to_dict()["model"]}  # [model] is trimmed too
    assert data == tomllib.loads(FULL_TOML)
    # The resolved config drops the keys filter.method = 'bootstrap' does not read (weights).
    assert set(cfg.to_dict()["filter"]) == set(cfg.filter.keys_in_effect())
    assert "weights" not in cfg.to_dict()["filter"]
    resolved = dataclasses.replace(cfg, filter=cfg.filter.in_effect_only())
    assert isinstance(cfg.model.correlation_length_km, float)  # int accepted for float
    assert isinstance(cfg.run.cycle_hours, float)
    assert cfg.model.levels == (500.0, 850.5)
    text = cfg.to_toml()
    assert config_from_dict(tomllib.loads(text)) == resolved
    assert load_config(write(tmp_path, text)) == resolved
    assert text == config_from_dict(tomllib.loads(text)).to_toml()  # deterministic


def test_toml_strings_are_escaped():
    cfg = config_from_dict({"name": 'a "b" \\ c\nd\te\x7f ☃ 😀'})
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_invalid_toml_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[filter\n"))


def test_unknown_key_with_suggestion():
    message = error_of({"filter": {"particels": 10}})
    assert message == "unknown key 'filter.particels'; did you mean 'filter.particles'?"
    assert "did you mean 'seed'?" in error_of({"sed": 1})


def test_unknown_key_without_close_match_lists_valid_keys():
    message = error_of({"truth": {"zzzzzz": 1}})
    assert message == "unknown key 'truth.zzzzzz'; valid keys: path, source"


def test_unknown_section():
    assert error_of({"filtr": {"particles": 10}}) == (
        "unknown section 'filtr'; did you mean 'filter'?"
    )
    assert "unknown section 'xyzzy'; valid keys: filter, guidance" in error_of({"xyzzy": {}})


def test_section_must_be_a_table():
    assert error_of({"filter": 3}) == "filter: expected a table, got 3 (int)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"filter": {"particles": "abc"}},
            "filter.particles: expected an integer, got 'abc' (str)",
        ),
        ({"filter": {"particles": True}}, "filter.particles: expected an integer, got True (bool)"),
        (
            {"filter": {"particles": 64.0}},
            "filter.particles: expected an integer, got 64.0 (float)",
        ),
        ({"filter": {"alpha": "x"}}, "filter.alpha: expected a number, got 'x' (str)"),
        ({"filter": {"alpha": False}}, "filter.alpha: expected a number, got False (bool)"),
        ({"run": {"baseline": 1}}, "run.baseline: expected a boolean, got 1 (int)"),
        ({"name": 3}, "name: expected a string, got 3 (int)"),
        ({"model": {"variables": "t"}}, "model.variables: expected a list of strings, got 't'"),
        ({"model": {"variables": ["t", 2]}}, "model.variables[1]: expected a string, got 2 (int)"),
        ({"model": {"levels": [1, "x"]}}, "model.levels[1]: expected a number, got 'x' (str)"),
        ({"sampler": {"sigma_max": float("inf")}}, "sampler.sigma_max: expected a finite number"),
    ],
)
def test_wrong_type(data, message):
    assert message in error_of(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"filter": {"particles": 1}}, "filter.particles = 1 is out of range: must be >= 2"),
        ({"filter": {"particles": 2_000_000}}, "<= 1000000"),
        ({"seed": -1}, "seed = -1 is out of range: must be >= 0"),
        ({"model": {"noise_std": 0}}, "model.noise_std = 0.0 is out of range: must be > 0.0"),
        ({"model": {"ar_coefficient": 1}}, "must be > 0.0 and < 1.0"),
        (
            {"filter": {"alpha": 1.5}},
            "filter.alpha = 1.5 is out of range: must be >= 0.0 and <= 1.0",
        ),
        ({"sampler": {"order": 6}}, "sampler.order = 6 is out of range: must be >= 1 and <= 5"),
    ],
)
def test_out_of_range(data, message):
    assert message in error_of(data)


def test_bad_choice():
    assert error_of({"sampler": {"name": "foo"}}) == (
        "sampler.name = 'foo' is not one of: adams_bashforth, ddim, dpmpp2s, euler, heun"
    )
    assert "filter.resampling = 'best' is not one of: multinomial, residual" in error_of(
        {"filter": {"resampling": "best"}}
    )


def test_start_time_must_parse():
    message = error_of({"run": {"start_time": "yesterday"}})
    assert message.startswith("run.start_time = 'yesterday' is invalid: must be an ISO 8601")


def test_sigma_min_below_sigma_max():
    message = error_of({"sampler": {"sigma_min": 80.0}})
    assert message == "sampler.sigma_min = 80.0 must be < sampler.sigma_max = 80.0"


@pytest.mark.parametrize("band", [[0.3, 0.2], [0.0, 0.5], [0.5, 1.5], [0.2], [0.1, 0.2, 0.3]])
def test_ess_band(band):
    message = error_of({"filter": {"ess_band": band}})
    assert message.startswith(f"filter.ess_band = {band!r} is invalid")
    assert "0 < lo <= hi <= 1" in message


def test_ess_band_edges_are_allowed():
    assert config_from_dict({"filter": {"ess_band": [1, 1]}}).filter.ess_band == (1.0, 1.0)


def test_burn_in_below_cycles():
    message = error_of({"run": {"cycles": 5, "burn_in": 5}})
    assert message == "run.burn_in = 5 must be < run.cycles = 5"


@pytest.mark.parametrize("source", ["gridded", "stations"])
def test_observation_path_required(source):
    message = error_of({"observations": {"source": source}})
    assert message == (f"observations.path must be non-empty when observations.source = '{source}'")
    cfg = config_from_dict({"observations": {"source": source, "path": "obs.nc"}})
    assert cfg.observations.path == "obs.nc"


def test_truth_path_required():
    assert error_of({"truth": {"source": "file"}}) == (
        "truth.path must be non-empty when truth.source = 'file'"
    )


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match=r"filter\.particles = 1 is out of range"):
        FilterConfig(particles=1)
    with pytest.raises(ConfigError, match=r"sampler\.sigma_min"):
        dataclasses.replace(ExperimentConfig().sampler, sigma_min=100.0)
    assert FilterConfig(ess_band=[0.1, 0.2]).ess_band == (0.1, 0.2)


def test_override_typed_values(tmp_path):
    path = write(tmp_path, "[filter]\nparticles = 16\n")
    cfg = load_config(path, ["filter.particles=128", "filter.method=bootstrap", "seed=3"])
    assert cfg.filter.particles == 128 and isinstance(cfg.filter.particles, int)
    assert cfg.filter.method == "bootstrap"
    assert cfg.seed == 3
    cfg = config_from_dict(
        {},
        [
            "filter.ess_band=[0.1, 0.3]",
            "run.baseline=false",
            "sampler.sigma_min=1e-3",
            'name="quoted name"',
            "run.start_time=2001-02-03T04:05:06",  # a TOML datetime stays a string
            "sampler.churn = 0",
        ],
    )
    assert cfg.filter.ess_band == (0.1, 0.3)
    assert cfg.run.baseline is False
    assert cfg.sampler.sigma_min == 1e-3
    assert cfg.name == "quoted name"
    assert cfg.run.start_time == "2001-02-03T04:05:06"
    assert cfg.sampler.churn == 0.0 and isinstance(cfg.sampler.churn, float)


def test_overrides_are_applied_in_order_and_do_not_mutate_input():
    data = {"filter": {"particles": 16}}
    cfg = config_from_dict(data, ["filter.particles=32", "filter.particles=48"])
    assert cfg.filter.particles == 48
    assert data == {"filter": {"particles": 16}}


@pytest.mark.parametrize("override", ["filter.particles", "=3", "a.b.c=1", "filter.=1", ".x=1"])
def test_malformed_override(override):
    assert error_of(overrides=[override]).startswith(f"malformed override {override!r}")


def test_override_unknown_key_and_section():
    assert error_of(overrides=["filter.particels=3"]) == (
        "unknown key 'filter.particels'; did you mean 'filter.particles'?"
    )
    assert error_of(overrides=["sampelr.name=heun"]) == (
        "unknown section 'sampelr'; did you mean 'sampler'?"
    )


def test_override_validation():
    assert "filter.particles = 1 is out of range: must be >= 2" in error_of(
        overrides=["filter.particles=1"]
    )
    assert error_of(overrides=["filter.particles=abc"]) == (
        "filter.particles: expected an integer, got 'abc' (str)"
    )
    assert "filter.method = 'smc' is not one of" in error_of(overrides=["filter.method=smc"])
    assert "run.burn_in = 30 must be < run.cycles = 30" in error_of(overrides=["run.burn_in=30"])


def test_valid_keys():
    keys = valid_keys()
    assert keys[:3] == ["name", "seed", "model.name"]
    assert "filter.particles" in keys and "run.baseline" in keys
    assert len(keys) == len(set(keys))
    flat = [
        f"{section}.{key}" if isinstance(values, dict) else section
        for section, values in ExperimentConfig().full_dict().items()
        for key in (values if isinstance(values, dict) else [None])
    ]
    assert keys == flat


def test_model_keys_of_another_family_are_refused_and_left_out():
    """[model] holds the keys of model.name's family: one of another family is refused at a
    non-default value, and the resolved config writes only the keys in effect."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"model": {"name": "heldsuarez", "state_dim": 32}})
    message = str(caught.value)
    assert message.startswith("model.state_dim = 32 has no effect with model.name = 'heldsuarez'")
    assert "its own keys are: emulator, weights, noise" in message
    cfg = config_from_dict({"model": {"name": "heldsuarez", "emulator": "hs_t21_32x64_hybrid"}})
    written = tomllib.loads(cfg.to_toml())["model"]
    assert set(written) == {
        "name", "factory", "initial_spread", "initial_ensemble", "emulator", "weights", "noise"
    }  # fmt: skip
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    # At its default, a key of another family is harmless (configs written before the
    # split hold every key) and still left out.
    old = config_from_dict({"model": {"name": "heldsuarez", "state_dim": 16}})
    assert "state_dim" not in old.to_dict()["model"] and "state_dim" in old.full_dict()["model"]
    # model.factory's setting may read any key: nothing is refused or left out.
    own = config_from_dict({"model": {"factory": "m.py:SETTING", "state_dim": 32}})
    assert own.to_dict()["model"]["state_dim"] == 32


def test_every_model_key_belongs_to_some_family():
    from filtrax.experiments.models import COMMON_MODEL_KEYS, MODELS

    claimed = set(COMMON_MODEL_KEYS)
    for name in MODELS.names():
        claimed.update(MODELS[name].keys)
    assert claimed == {f.name for f in dataclasses.fields(ModelConfig)}


def test_filter_keys_a_method_does_not_read_are_named_and_left_out():
    """[filter] keys filter.method does not read are not refused (methods are compared by
    switching filter.method on one config) but named, dropped from the resolved config, and
    left out of the digest, so that a resume reading config.toml back finds the same run."""
    from filtrax.experiments.builders import COMMON_FILTER_KEYS, FILTER_KEYS
    from filtrax.experiments.runner import config_digest

    cfg = config_from_dict(
        {"filter": {"method": "letkf", "weights": "moment_matched", "ess_band": [0.3, 0.5]}}
    )
    assert cfg.filter.keys_without_effect() == {"weights": "moment_matched", "ess_band": (0.3, 0.5)}
    written = tomllib.loads(cfg.to_toml())
    assert set(written["filter"]) == {*COMMON_FILTER_KEYS, *FILTER_KEYS["letkf"]}
    back = config_from_dict(written)
    assert back.filter.keys_without_effect() == {}
    assert config_digest(back) == config_digest(cfg)
    # A key the method reads still changes the digest.
    other = config_from_dict({"filter": {"method": "letkf", "inflation": 1.1}})
    assert config_digest(other) != config_digest(cfg)


def test_every_filter_method_declares_its_keys():
    from filtrax.experiments.builders import COMMON_FILTER_KEYS, FILTER_KEYS, FILTERS

    assert set(FILTER_KEYS) == set(FILTERS.names())
    fields = {f.name for f in dataclasses.fields(FilterConfig)}
    claimed = set(COMMON_FILTER_KEYS).union(*FILTER_KEYS.values())
    assert claimed == fields


#: A valid value other than the default for each [filter] key a method may not read.
OTHER_FILTER_VALUES = {
    "weights": "moment_matched",
    "tempering": "fixed",
    "alpha": 0.5,
    "ess_band": [0.3, 0.5],
    "resampling": "multinomial",
    "weight_sigma_max": 50.0,
    "noise_draws": 2,
    "cg_iterations": 2,
    "skip_first_selection": False,
    "inflation": 1.1,
    "adaptive_inflation": True,
    "inflation_max": 1.5,
    "localisation_block": [2],
    "localisation_half_width": 2.0,
    "relaxation": 0.5,
    "rejuvenation": "kernel",
    "rejuvenation_bandwidth": 0.3,
    "rejuvenation_regularisation": 0.1,
    "hybrid": "letkf",
    "observation_error_inflation": 1.5,
}


@pytest.mark.parametrize("method", ["free", "enkf", "letkf", "bootstrap", "fa_apf"])
def test_a_key_declared_without_effect_does_not_change_the_filter(method):
    """FILTER_KEYS is what the builders read: changing any other key builds the same filter
    (or is refused outright by a check of its own)."""
    import equinox as eqx

    import filtrax as fx
    from filtrax.experiments.builders import COMMON_FILTER_KEYS, FILTER_KEYS
    from filtrax.experiments.factory import build_filter

    emulator = fx.random_linear_gaussian_model(seed=0, state_dim=4).emulator()
    base = {"model": {"name": "lorenz96"}, "filter": {"method": method}}
    plain = build_filter(config_from_dict(base), emulator, method)
    assert set(OTHER_FILTER_VALUES) == {f.name for f in dataclasses.fields(FilterConfig)} - set(
        COMMON_FILTER_KEYS
    )
    for key, value in OTHER_FILTER_VALUES.items():
        if key in FILTER_KEYS[method]:
            continue
        try:
            config = config_from_dict({**base, "filter": {"method": method, key: value}})
        except ConfigError:
            continue  # refused: not silently ignored either
        assert key in config.filter.keys_without_effect()
        changed = build_filter(config, emulator, method)
        assert bool(eqx.tree_equal(changed, plain)), key


def test_a_family_with_cards_of_its_own_starts_from_its_own_emulator():
    """model.emulator's schema default is a Lorenz-96 card; model.name = 'heldsuarez' left
    at it runs the 32 x 64 hybrid card, and the resolved config says so."""
    atmosphere = config_from_dict({"model": {"name": "heldsuarez"}})
    assert atmosphere.model.emulator == "hs_t21_32x64_hybrid"
    assert tomllib.loads(atmosphere.to_toml())["model"]["emulator"] == "hs_t21_32x64_hybrid"
    assert config_from_dict({"model": {"name": "lorenz96"}}).model.emulator == "l96_wilks05_dt0.05"
    chosen = config_from_dict({"model": {"name": "heldsuarez", "emulator": "hs_t21_16x32"}})
    assert chosen.model.emulator == "hs_t21_16x32"
