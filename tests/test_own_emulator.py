"""Your own emulator from a config: ``model.factory`` names a model setting by import path.

The worked example is ``examples/own_emulator`` (``ring.py`` and ``config.toml``); the docs'
"Bring your own emulator" page walks through it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from filtrax.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/own_emulator/config.toml"
SHORT = ["--set", "run.cycles=3", "--set", "run.burn_in=1", "--set", "filter.particles=8"]
SHORT += ["--set", "sampler.levels=4"]


@pytest.fixture(autouse=True)
def _at_the_repository_root(monkeypatch):
    # The example names its file relative to the working directory, as the docs run it.
    monkeypatch.chdir(ROOT)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_the_example_runs_through_the_cli_like_a_bundled_model(tmp_path):
    out = tmp_path / "ring"
    result = invoke("run", EXAMPLE, "--out", str(out), "--quiet", *SHORT)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out / "metrics.nc") as metrics:  # closed: the resume rewrites it
        metrics = metrics.load()
    assert set(metrics["ensemble"].values) == {"analysis", "baseline"}
    assert metrics.sizes["cycle"] == 3 and np.isfinite(metrics["rmse"].values).all()
    assert (out / "figures" / "skill.png").exists()
    report = (out / "report.md").read_text()
    # The report names the setting by its import path, and the observed sites as observed
    # (observations.variables is empty: the setting's own observation model decides).
    assert "`examples/own_emulator/ring.py:SETTING` (model.factory)" in report
    assert "| x | observed |" in report
    assert 'factory = "examples/own_emulator/ring.py:SETTING"' in (out / "config.toml").read_text()
    # A finished run resumes to itself.
    again = invoke("run", EXAMPLE, "--out", str(out), "--quiet", "--resume", *SHORT)
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    "factory, message",
    [
        ("ring", "expected 'package.module:NAME' or 'path/to/file.py:NAME'"),
        ("no_such_package.models:SETTING", "cannot import 'no_such_package.models'"),
        ("examples/own_emulator/missing.py:SETTING", "no file 'examples/own_emulator/missing.py'"),
        ("examples/own_emulator/ring.py:NO_SUCH", "has no attribute 'NO_SUCH'"),
        ("examples/own_emulator/ring.py:NUM_SITES", "is an object of type int; expected a"),
        ("filtrax.experiments.models:MODELS", "is an object of type Registry; expected"),
        ("examples/own_emulator/ring.py:build", "calling build() failed (TypeError"),
    ],
)
def test_an_import_path_that_is_not_a_model_setting_names_the_path(tmp_path, factory, message):
    args = ("run", EXAMPLE, "--out", str(tmp_path / "run"), "--set", f"model.factory={factory}")
    result = invoke(*args)
    assert result.exit_code == 2
    assert f"model.factory = {factory!r}" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written for a config that cannot run


def test_a_source_the_setting_does_not_accept_names_what_it_accepts(tmp_path):
    args = ("run", EXAMPLE, "--out", str(tmp_path / "run"), "--set", "observations.source=gridded")
    result = invoke(*args, "--set", "observations.path=x.nc")
    assert result.exit_code == 2
    assert "observations.source = 'gridded' is not one that model.factory" in result.output
    assert "accepts synthetic" in result.output


def test_a_file_imports_its_neighbours_and_a_setting_must_observe_its_sites(tmp_path):
    """A file is imported as ``python file.py`` runs it (its folder on sys.path); a
    site-indexed setting without its observation model is refused by name."""
    (tmp_path / "neighbour.py").write_text("from filtrax.experiments.models import ModelParts\n")
    example = str(ROOT / "examples" / "own_emulator")
    (tmp_path / "setting.py").write_text(
        textwrap.dedent(
            f"""
            import dataclasses, sys
            from neighbour import ModelParts
            sys.path.insert(0, {example!r})
            import ring
            from filtrax.experiments.models import ModelSetting

            def build(config, truth_key, init_key):
                parts = ring.build(config, truth_key, init_key)
                return dataclasses.replace(parts, observation_model=None)

            SETTING = ModelSetting(build, ("simulate",), ("synthetic",))
            """
        )
    )
    factory = f"model.factory={tmp_path / 'setting.py'}:SETTING"
    result = invoke("run", EXAMPLE, "--out", str(tmp_path / "run"), "--set", factory)
    assert result.exit_code == 2, result.output
    assert "built a site-indexed model (grid None) without its synthetic" in result.output
    assert not (tmp_path / "run").exists()
