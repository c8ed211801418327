"""Regenerate the command outputs quoted in the README and the docs.

Every quoted output is a fenced block right after a marker line naming its command::

    <!-- regenerate: python -m filtrax.demo --linear-gaussian -->
    ```
    ...the command's output...
    ```

This script runs each marked command from the repository root (``python`` is this
interpreter; progress bars and messages on stderr are dropped) and rewrites the block with
what it printed. With ``--check`` it rewrites nothing and exits 1 when a block differs (the
timings in seconds differ from run to run; the rest should not). ``--only TEXT`` keeps the
markers whose command contains TEXT. The cheap ones take seconds (the linear-Gaussian check:
about 10 s); ``python -m filtrax.demo`` is ``make demo`` (about 1.5 min on 2 cores)::

    .venv/bin/python benchmarks/regenerate.py                     # every marked block
    .venv/bin/python benchmarks/regenerate.py --only linear       # the cheap table only
    .venv/bin/python benchmarks/regenerate.py --check --only linear

Longer experiments (``benchmarks/poster.py``, the Lorenz-96 and Held–Suarez tables) name
their commands beside their tables and are not rerun here.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"^<!-- regenerate: (?P<command>.+?) -->\n```\n(?P<block>.*?)^```$", re.MULTILINE | re.DOTALL
)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def output_of(command: str) -> str:
    """What ``command`` prints on stdout, run from the repository root."""
    words = shlex.split(command)
    if words[0] == "python":
        words[0] = sys.executable
    done = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {command!r} failed (exit {done.returncode}):\n{done.stderr}")
    return done.stdout if done.stdout.endswith("\n") else done.stdout + "\n"


def regenerate(path: Path, only: str, check: bool) -> list[str]:
    """Rewrite (or, with ``check``, compare) the marked blocks of ``path``; returns the
    commands whose output differs from the quoted one."""
    text = path.read_text(encoding="utf-8")
    differing: list[str] = []
    outputs: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        command = match["command"]
        if only not in command:
            return match[0]
        outputs.setdefault(command, output_of(command))
        if outputs[command] != match["block"]:
            differing.append(command)
        return f"<!-- regenerate: {command} -->\n```\n{outputs[command]}```"

    new = MARKER.sub(replace, text)
    if not check and new != text:
        path.write_text(new, encoding="utf-8")
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="only the commands that contain this text")
    parser.add_argument("--check", action="store_true", help="compare, do not rewrite")
    args = parser.parse_args(argv)
    differing = []
    for path in documents():
        for command in regenerate(path, args.only, args.check):
            differing.append(command)
            verb = "differs" if args.check else "rewritten"
            print(f"{path.relative_to(ROOT)}: {command}: {verb}")
    if not differing:
        print("every marked block is up to date")
    return 1 if args.check and differing else 0


if __name__ == "__main__":
    sys.exit(main())
