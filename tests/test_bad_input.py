"""Bad input through the command line and the Python API: one ``error: …`` line naming the
file or field, exit code 2, and nothing in a run directory lost or silently changed.

The cases are the catalogue in ``tests/bad_input_catalogue.py`` (which also prints the
census by outcome class when run as a script).
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from bad_input_catalogue import CASES, attempt, judge
from filtrax.cli import main

# What users see: filtrax's own refusals, without the suite's runtime type checks (conftest).
pytestmark = pytest.mark.bad_input


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_catalogue_is_large_and_covers_every_family():
    families = {case.family for case in CASES}
    assert len(CASES) >= 60
    assert families >= {
        "config", "stations", "gridded", "truth", "ensemble", "weights", "run directory", "api"
    }  # fmt: skip
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, tmp_path):
    """Exit code 2, one error line with the case's fragments (or acceptance), and every file
    that was in the case's folder before byte-identical after."""
    outcome = attempt(case, tmp_path / "case")
    verdict = judge(case, outcome)
    assert verdict is None, verdict


def test_a_bug_is_called_one_and_keeps_its_traceback(tmp_path, monkeypatch):
    """Not every exception is bad input: one that is not gets a line saying it is a bug,
    and its traceback; --debug shows the traceback of bad input too."""
    import filtrax.experiments.runner as runner
    from bad_input_catalogue import run_args

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "build_experiment", broken)
    result = CliRunner().invoke(main, run_args(tmp_path))
    assert isinstance(result.exception, ZeroDivisionError)
    assert "is a bug; please report it" in result.output
    debug = CliRunner().invoke(main, ["--debug", *run_args(tmp_path, "--set", "filter.particle=4")])
    assert type(debug.exception).__name__ == "ConfigError"


def test_cache_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", str(tmp_path))
    entry = tmp_path / "xla" / "some-compilation"
    entry.parent.mkdir()
    entry.write_bytes(b"x" * 2048)
    runner = CliRunner()
    info = runner.invoke(main, ["cache", "info"])
    assert info.exit_code == 0 and "1 files" in info.output and "cap 512 MB" in info.output
    cleared = runner.invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1 files" in cleared.output
    assert not entry.exists()
    # The cap: the oldest entries go first until the rest fit.
    from filtrax.compilation_cache import trim_cache

    for age, name in enumerate(["new", "old"]):
        (tmp_path / "xla" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "xla" / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / "xla" / name, (1e9 - age * 1e6, 1e9 - age * 1e6))
    trim_cache(tmp_path / "xla", 1500)
    assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == ["new"]
    monkeypatch.setenv("FILTRAX_CACHE_MAX_MB", "lots")
    one_error_line(runner.invoke(main, ["cache", "info"]), "FILTRAX_CACHE_MAX_MB = 'lots'")
