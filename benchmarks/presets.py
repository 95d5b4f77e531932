"""The upstream's presets side by side, over seeds, on a validation and a test window.

    python -m benchmarks.presets --dataset synthetic|movielens [--presets default,paper,...]
        [--seeds 3] [--eval_days D] [--json]

Each preset of `trainer.config.PRESETS` is trained by `trainer.train.fit_and_evaluate` with
each seed, twice: evaluated on the `validation` window (the `eval_days` before the last
`eval_days`, which are then left out entirely) and on the `test` window (the last `eval_days`).
A recommendation is read off the validation window and checked on the test window. Defaults:
`eval_days` 1 on the 14-day synthetic data (one day of ~3.6k ad rows), 30 on MovieLens-100K
(~3.1k ad rows; its last day has 89). The table gives the median over seeds of the ad,
content and cold-start AUCs (and on synthetic data the ad AUC in expectation over the labels'
draw, the metric for comparisons there), and each preset's difference to `default`, paired by
seed. `--json` ends with one JSON line.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks import datasets
from common import cli
from trainer import data_input
from trainer.config import PRESETS, from_preset
from trainer.train import fit_and_evaluate

METRICS = ("auc_ad", "expected_auc_ad", "auc_content", "auc_cold_start", "gauc_ad")
WINDOWS = ("validation", "test")
DEFAULT_EVAL_DAYS = {"synthetic": 1.0, "movielens": 30.0}


def run_one(data: str, preset: str, seed: int, eval_days: float, window: str) -> dict:
    skip = eval_days if window == "validation" else 0.0
    model_config, train_config = from_preset(
        preset, train={"seed": seed, "eval_days": eval_days, "skip_last_days": skip})
    started = time.perf_counter()
    _, results, _ = fit_and_evaluate(data, model_config, train_config, verbose=0)
    row = {key: results.get(key) for key in METRICS}
    row.update(preset=preset, seed=seed, window=window,
               seconds=round(time.perf_counter() - started, 1),
               eval_ad_examples=results["eval_ad_examples"],
               eval_cold_start_examples=results["eval_cold_start_examples"])
    return row


def summarize(runs: list[dict], presets: list[str], windows: list[str]) -> list[dict]:
    """Per (window, preset): the median over seeds of each metric, and the difference to
    `default` paired by seed (median, and the seeds where the preset is better)."""
    out = []
    for window in windows:
        base = {r["seed"]: r for r in runs if r["window"] == window and r["preset"] == "default"}
        for preset in presets:
            mine = [r for r in runs if r["window"] == window and r["preset"] == preset]
            row = {"window": window, "preset": preset, "seeds": len(mine),
                   "ad_rows": mine[0]["eval_ad_examples"] if mine else None}
            for key in METRICS:
                values = [r[key] for r in mine if r[key] is not None]
                row[key] = float(np.median(values)) if values else None
                diffs = [r[key] - base[r["seed"]][key] for r in mine
                         if r["seed"] in base and r[key] is not None
                         and base[r["seed"]][key] is not None]
                if preset != "default" and diffs:
                    row[f"{key}_vs_default"] = float(np.median(diffs))
                    row[f"{key}_better_seeds"] = int(sum(d > 0 for d in diffs))
            out.append(row)
    return out


def format_table(summary: list[dict], header: str) -> str:
    def fmt(value, signed=False):
        return "n/a" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")

    lines = [header, f"{'window':<12}{'preset':<14}{'ad AUC':>8}{'vs default':>12}"
                     f"{'exp. ad AUC':>13}{'vs default':>12}{'content':>9}{'cold ad':>9}"
                     f"{'GAUC ad':>9}{'ad rows':>9}"]
    def versus(r, key):
        if f"{key}_vs_default" not in r:
            return ""
        return f"{fmt(r[f'{key}_vs_default'], True)} {r[f'{key}_better_seeds']}/{r['seeds']}"

    for r in summary:

        lines.append(f"{r['window']:<12}{r['preset']:<14}{fmt(r['auc_ad']):>8}"
                     f"{versus(r, 'auc_ad'):>12}{fmt(r['expected_auc_ad']):>13}"
                     f"{versus(r, 'expected_auc_ad'):>12}{fmt(r['auc_content']):>9}"
                     f"{fmt(r['auc_cold_start']):>9}{fmt(r['gauc_ad']):>9}"
                     f"{r['ad_rows'] or 0:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.presets",
                           description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=datasets.DATASETS)
    source.add_argument("--data", help="any directory in the project's schema")
    p.add_argument("--presets", default=",".join(PRESETS),
                   help="comma-separated names of trainer.config.PRESETS")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval_days", type=float, default=None,
                   help="window length (default: 1 on synthetic, 30 on MovieLens)")
    p.add_argument("--windows", default=",".join(WINDOWS))
    p.add_argument("--examples", type=int, default=200_000, help="synthetic data size")
    p.add_argument("--cache", default=os.path.join("build", "ablation"),
                   help="where generated data sets are kept")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    presets = [name for name in args.presets.split(",") if name]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        p.error(f"unknown presets {unknown}; presets: {sorted(PRESETS)}")
    if "default" not in presets:
        presets.insert(0, "default")  # the reference of every difference
    windows = [w for w in args.windows.split(",") if w]

    def compare() -> dict:
        data = args.data or datasets.prepare(args.dataset, args.cache, args.examples)
        eval_days = args.eval_days or DEFAULT_EVAL_DAYS.get(args.dataset, 1.0)
        runs, started = [], time.perf_counter()
        for window in windows:
            for seed in range(args.seeds):
                for preset in presets:
                    runs.append(run_one(data, preset, seed, eval_days, window))
                    print(json.dumps(runs[-1]), flush=True)
        summary = summarize(runs, presets, windows)
        header = (f"{data}: windows of {eval_days:g} days, {args.seeds} seeds, medians; "
                  f"{time.perf_counter() - started:.0f} s on {platform.machine()} "
                  f"({os.cpu_count()} cores)")
        print(format_table(summary, header))
        return {"data": data, "eval_days": eval_days, "summary": summary, "runs": runs}

    return cli.run(compare, args, errors=(data_input.DataError,))


if __name__ == "__main__":
    sys.exit(main())
