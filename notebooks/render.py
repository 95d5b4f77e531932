"""Executes the notebooks and writes their figures as PNG files.

    python -m notebooks.render --out docs/figures [--small] [--only 02 03] [--executed DIR]

Each notebook runs top to bottom on its own defaults (the sizes its first cell states) with
`figures_dir` set to `--out`; `--small` runs each on the small data the test suite uses
(`SMALL`), a few minutes in all; `--executed DIR` also keeps the executed notebooks, outputs
included. Progress is printed cell by cell; the figures written are listed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from notebooks.execute import NotebookError, execute, notebooks

# The sizes the test suite runs each notebook at (tests/notebooks): small data, short
# training; every figure is still drawn. Keyed by the notebook's file name.
SMALL: dict[str, dict] = {
    # auc_threshold 0: the eval day's handful of ad clicks would hold the model back, and the
    # notebook would only take its "nothing pushed" path.
    "01_quickstart.ipynb": {"examples": 4000, "days": 4, "epochs": 2, "auc_threshold": 0.0},
    "02_representations.ipynb": {"examples": 12_000, "days": 4, "epochs": 1, "tsne_users": 300},
    # The shipped ablation results (its default): a quick ablation inside it would take 2.5 min
    # more, and tests/benchmarks/test_ablation.py already runs `ablation.ablate`.
    "03_transfer.ipynb": {},
    "04_serving.ipynb": {"examples": 4000, "days": 4, "epochs": 1, "requests": 64},
}

# The figures each notebook writes into `figures_dir` (without `.png`).
FIGURES: dict[str, tuple[str, ...]] = {
    "01_quickstart.ipynb": ("quickstart_feature_statistics", "quickstart_evaluation_slices"),
    "02_representations.ipynb": ("representations_tsne", "representations_cluster_ctr",
                                 "representations_volatility", "representations_statistics",
                                 "representations_spectrum"),
    "03_transfer.ipynb": ("transfer_ablation", "transfer_layers", "transfer_importance",
                          "transfer_domains"),
    "04_serving.ipynb": ("serving_latency", "serving_cr_ema"),
}


def select(only: list[str] | None) -> list[Path]:
    paths = notebooks()
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
        if not paths:
            raise NotebookError(f"no notebook starts with any of {only}; there are "
                                f"{[p.name for p in notebooks()]}")
    return paths


def render(out: str, small: bool = False, only: list[str] | None = None,
           executed: str | None = None, timeout: int = 3600, log=print) -> dict[str, list[str]]:
    """Runs the selected notebooks; returns {notebook: [PNG files it wrote]}."""
    written = {}
    for path in select(only):
        parameters = {**(SMALL.get(path.name, {}) if small else {}), "figures_dir": out}
        started = time.perf_counter()
        log(f"{path.name}: running{' (small)' if small else ''}")
        execute(path, parameters, output=Path(executed) / path.name if executed else None,
                timeout=timeout, log=log)
        files = [Path(out) / f"{name}.png" for name in FIGURES.get(path.name, ())]
        missing = [f.stem for f in files if not f.is_file()]
        if missing:
            raise NotebookError(f"{path.name} ran but did not write {missing} in {out}")
        written[path.name] = [str(f) for f in files]
        log(f"{path.name}: done in {time.perf_counter() - started:.0f} s")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m notebooks.render",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for the PNG files")
    p.add_argument("--small", action="store_true", help="the test suite's small sizes")
    p.add_argument("--only", nargs="+", help="notebooks whose names start with these, e.g. 02")
    p.add_argument("--executed", help="also write the executed notebooks here")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = render(args.out, args.small, args.only, args.executed, args.timeout,
                         log=lambda line: print(line, flush=True))
    except NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, files in written.items():
        print(f"{name}: " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
