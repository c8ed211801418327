"""Bad input through the command line: one ``error: …`` line naming the file or field, exit
code 2, and nothing in a run directory lost or silently changed."""

from __future__ import annotations

import os
import shutil

import pytest
import xarray as xr
from click.testing import CliRunner

from filtrax.cli import main
from test_runs import write_config


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("FILTRAX_CACHE_DIR", "")


def run(*args: str):
    return CliRunner().invoke(main, ["run", *args, "--quiet"], catch_exceptions=False)


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


STATIONS = ["--set", "observations.source=stations", "--set", "truth.source=none"]


def test_unreadable_observation_files_name_the_field_and_leave_no_run(tmp_path):
    config = str(write_config(tmp_path, cycles=2))
    out = tmp_path / "run"
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.parquet").write_text("not parquet")
    for name, message in (
        ("missing.csv", "file not found"),
        ("empty.csv", "No columns to parse"),
        ("bad.parquet", "Parquet"),
    ):
        path = str(tmp_path / name)
        result = run(config, "--out", str(out), *STATIONS, "--set", f"observations.path={path}")
        one_error_line(result, f"observations.path = '{path}'", message)
        # The config failed before the run started: nothing to take for a run next time.
        assert not out.exists()


def test_a_config_file_with_a_byte_order_mark_or_not_utf8(tmp_path):
    config = write_config(tmp_path, cycles=2)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert run(str(bom), "--out", str(tmp_path / "run")).exit_code == 0
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    one_error_line(run(str(binary)), str(binary), "not UTF-8")


def test_a_run_never_writes_into_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "report.md").write_text("my notes")
    result = run(str(write_config(tmp_path, cycles=2)), "--out", str(foreign))
    one_error_line(result, str(foreign), "not empty (report.md)", "another --out")
    assert (foreign / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in foreign.iterdir()) == ["report.md"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root, cycles=2, extra="")
    result = CliRunner().invoke(
        main,
        ["run", str(config), "--out", str(root / "run"), "--quiet"],
        env={"FILTRAX_CACHE_DIR": ""},
    )
    assert result.exit_code == 0, result.output
    return config, root / "run"


def copy_of(finished_run, tmp_path):
    config, run_dir = finished_run
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return str(config), target


def test_resume_refuses_a_damaged_config_or_checkpoint(finished_run, tmp_path):
    config, run_dir = copy_of(finished_run, tmp_path)
    checkpoint = run_dir / "checkpoints" / "analysis.npz"
    intact = checkpoint.read_bytes()
    for damaged, name in ((intact[:100], "BadZipFile"), (b"", "EOFError")):
        checkpoint.write_bytes(damaged)
        one_error_line(run(config, "--out", str(run_dir), "--resume"), str(checkpoint), name)
    checkpoint.write_bytes(intact)
    (run_dir / "config.toml").write_text("garbage [")
    one_error_line(
        run(config, "--out", str(run_dir), "--resume"), "config.toml is unreadable", "restore it"
    )


def test_resume_refuses_observations_edited_since_the_run_began(finished_run, tmp_path):
    config, run_dir = copy_of(finished_run, tmp_path)
    stored = run_dir / "observations.nc"
    with xr.open_dataset(stored) as dataset:
        edited = dataset.load()
    edited["y"] = edited["y"] + 1.0
    edited.to_netcdf(tmp_path / "edited.nc")
    shutil.move(tmp_path / "edited.nc", stored)
    one_error_line(
        run(config, "--out", str(run_dir), "--resume"), "observations differ", "edited since"
    )
    # The record of what the finished cycles used is kept as it was.
    with xr.open_dataset(stored) as dataset:
        assert float(abs(dataset["y"] - edited["y"]).max()) == 0.0


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
    from filtrax.cli import _trim_cache

    for age, name in enumerate(["new", "old"]):
        (tmp_path / "xla" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "xla" / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / "xla" / name, (1e9 - age * 1e6, 1e9 - age * 1e6))
    _trim_cache(tmp_path / "xla", 1500)
    assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == ["new"]
    monkeypatch.setenv("FILTRAX_CACHE_MAX_MB", "lots")
    one_error_line(runner.invoke(main, ["cache", "info"]), "FILTRAX_CACHE_MAX_MB = 'lots'")


def test_a_stride_that_leaves_one_latitude_row_names_the_setting(tmp_path):
    # The small config's grid has 8 latitude rows: stride 8 would observe only the southernmost.
    config = str(write_config(tmp_path, cycles=2))
    out = tmp_path / "run"
    result = run(config, "--out", str(out), "--set", "observations.stride=8")
    one_error_line(result, "observations.stride = 8", "8 latitude rows", "expected 1 to 7")
    assert not out.exists()
