"""A source's output directory: preparing it and writing its ``manifest.json``."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.sources.shards import SHARD_RE
from trainer.oracle import ORACLE_FILE, USERS_FILE

MANIFEST = "manifest.json"


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Creates ``out_dir``, or empties a previous source's output in it.

    A directory that exists must be empty, unless ``overwrite``: then the shards,
    ``manifest.json``, ``oracle.npz`` and ``users.npz`` of a previous run are deleted (other
    files are left alone, so a wrong path never loses unrelated data silently: it is refused
    without ``overwrite``).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {str(out)!r} is not empty; pass --overwrite (overwrite=True) to replace "
                "the shards, manifest.json, oracle.npz and users.npz of a previous run"
            )
        for path in out.iterdir():
            if SHARD_RE.fullmatch(path.name) or path.name in (MANIFEST, ORACLE_FILE, USERS_FILE):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON of ``value``: numpy scalars/arrays become Python values, NaN becomes null."""
    return json.dumps(_plain(value), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_manifest(out_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Writes ``manifest`` as ``out_dir/manifest.json`` (strict JSON, NaN as null)."""
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(to_json(manifest, indent=2) + "\n", "utf-8")
    tmp.replace(path)
    return path
