"""The on-disk cache of XLA compilations: where it is, its cap, switching it on.

``$FILTRAX_CACHE_DIR/xla`` (default ``~/.cache/filtrax/xla``; ``FILTRAX_CACHE_DIR=""``
switches it off), capped at ``$FILTRAX_CACHE_MAX_MB`` (default :data:`DEFAULT_CACHE_MAX_MB`):
at start-up the least recently modified entries go first. ``filtrax run``, ``filtrax demo``
and ``make demo`` use it; ``filtrax cache info`` and ``filtrax cache clear`` show and empty it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .experiments.errors import InputError

#: The compilation cache's cap in MB (``$FILTRAX_CACHE_MAX_MB`` overrides it).
DEFAULT_CACHE_MAX_MB = 512


def cache_directory() -> Path | None:
    """``$FILTRAX_CACHE_DIR/xla`` (default ``~/.cache/filtrax/xla``); ``None`` when switched
    off with ``FILTRAX_CACHE_DIR=""``."""
    root = os.environ.get("FILTRAX_CACHE_DIR", str(Path.home() / ".cache" / "filtrax"))
    return Path(root) / "xla" if root else None


def cache_cap_mb() -> float:
    text = os.environ.get("FILTRAX_CACHE_MAX_MB", str(DEFAULT_CACHE_MAX_MB))
    try:
        cap = float(text)
    except ValueError:
        cap = -1.0
    if not cap > 0:
        raise InputError(f"FILTRAX_CACHE_MAX_MB = {text!r}; expected a positive number of MB")
    return cap


def enable_compilation_cache() -> None:
    """Persist XLA compilations, so that a resumed or repeated run does not recompile.

    The directory is :func:`cache_directory`; it is first trimmed to :func:`cache_cap_mb`.
    (JAX's own ``jax_compilation_cache_max_size`` is not used: it fails on entries written
    without it.)
    """
    import jax

    directory = cache_directory()
    if directory is None:
        return
    trim_cache(directory, cache_cap_mb() * 2**20)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Every program, the smallest too: eager dispatches outside the cycles' programs each
    # compile a program of their own, and under JAX's 1 s default a warm start compiled them
    # all again (make demo's build, when its initial forecast still ran op by op: 15.0 s ->
    # 6.0 s with them cached).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def trim_cache(directory: Path, cap_bytes: float) -> None:
    """Delete the least recently modified cache files until the rest fit in ``cap_bytes``."""
    files = sorted(cache_files(directory), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in files:
        total += path.stat().st_size
        if total > cap_bytes:
            path.unlink(missing_ok=True)


def cache_files(directory: Path | None) -> list[Path]:
    if directory is None or not directory.exists():
        return []
    return [p for p in directory.rglob("*") if p.is_file()]
