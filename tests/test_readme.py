"""The README's Python quickstart runs as written."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(capsys):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "README has no python block"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "RMSE per cycle" in out and "alpha" in out


def test_demo_runs_small(capsys):
    from filtrax.demo import main

    main(
        [
            "--linear-gaussian",
            "--particles",
            "8",
            "--cycles",
            "4",
            "--burn-in",
            "1",
            "--state-dim",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert "Kalman filter (exact)" in out and "free ensemble" in out


def test_atmosphere_demo_config_is_the_poster_config_shortened():
    import tomllib

    from filtrax.demo import DEMO_CONFIG

    poster = tomllib.loads(
        (README.parent / "configs" / "heldsuarez" / "poster.toml").read_text(encoding="utf-8")
    )
    for section in ("model", "truth", "observations", "sampler", "guidance"):
        assert DEMO_CONFIG[section] == poster[section], section
    expected_filter = {**poster["filter"], "particles": 16}
    assert DEMO_CONFIG["filter"] == expected_filter
    assert DEMO_CONFIG["run"] == {**poster["run"], "cycles": 10, "burn_in": 2, "profile": False}


def test_filtrax_demo_is_make_demo_and_the_kalman_check_has_its_own_name(monkeypatch):
    """``filtrax demo`` runs what ``make demo`` runs (``python -m filtrax.demo``)."""
    from click.testing import CliRunner

    import filtrax.demo
    from filtrax.cli import main

    calls = []
    monkeypatch.setattr(filtrax.demo, "main", calls.append)
    runner = CliRunner()
    assert runner.invoke(main, ["demo", "--cycles", "3"]).exit_code == 0
    assert runner.invoke(main, ["kalman-check", "--particles", "8"]).exit_code == 0
    assert calls == [
        ["--out", "runs/demo", "--particles", "16", "--cycles", "3"],
        ["--linear-gaussian", "--particles", "8", "--cycles", "40"],
    ]


def test_regenerate_rewrites_a_marked_block_with_its_commands_output(tmp_path):
    """benchmarks/regenerate.py: a marked block gets what its command prints; --check only
    reports; the README's marked commands are the cheap table and the demo."""
    import sys

    sys.path.insert(0, str(README.parent / "benchmarks"))
    import regenerate

    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- regenerate: python -c \"print('fresh')\" -->\n```\nstale\n```\n")
    assert regenerate.regenerate(doc, "", check=True) == ["python -c \"print('fresh')\""]
    assert "stale" in doc.read_text()
    regenerate.regenerate(doc, "", check=False)
    assert doc.read_text().endswith("```\nfresh\n```\n")
    assert regenerate.regenerate(doc, "", check=True) == []
    commands = [
        m["command"] for m in regenerate.MARKER.finditer(README.read_text(encoding="utf-8"))
    ]
    assert commands == ["python -m filtrax.demo", "python -m filtrax.demo --linear-gaussian"]
