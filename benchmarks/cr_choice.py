"""Where and how to read CR(u,i): what each reading holds, and what it gives a downstream ranker,
on the VALIDATION window only.

    python -m benchmarks.cr_choice (--dataset synthetic|movielens | --data DIR)
        [--world two_tower|dynamic] [--variants last,mlp_1_pre,...] [--seeds 3]
        [--spectrum_only] [--json]

Each variant is a reading of CR as `ModelConfig` fields (`VARIANTS`: the CR layer, read before
or after its ReLU, normalised or not, and a LayerNormalization in the branches' MLPs). For each
variant
and seed, on the split of `benchmarks.ablation` (the upstream trains on the first days of all
domains; the downstream `lfm4ads` ranker on the next days' ad rows; the validation window
after them), this

1. trains the upstream and replays it over the traffic as the online loop would, folding
   CR(u,i) into CR(u) and CR(i) on ad requests only (`cr_domains`, paper Sec. 4.3.1);
2. measures what UR, IR, CR(u,i), CR(u) and CR(i) hold on the validation window's ad rows
   (`common.representations.spectrum`: dead units, the top direction's share of the
   variance, participation ratio, entropy effective rank; CR(u) and CR(i) one row per user /
   item, as of the window's start);
3. unless `--spectrum_only`: trains the `lfm4ads` ranker (early stopping on the validation
   window, as the ablation) and scores the validation window, with CR(u) and CR(i) masked and
   not (the masking drop is CR's weight in the ranker).

The test window is never read. The metric is the AUC in expectation over the labels' draw
where the simulator's oracle exists, else the drawn-label AUC. Each variant is compared with
the first one (by default `last`, the paper's reading), paired by seed: the mean difference
with a 95% interval
`mean +- t_{k-1, 0.975} * SE`, `SE^2 = (s^2_seeds + mean_s var_boot_s) / k` (s^2: the
per-seed differences' variance, ddof 1; var_boot_s: a paired bootstrap over the validation
window's users within seed s, 200 draws), and the smallest difference such a run could detect
(`benchmarks.intervals`: 80% power at 5%). A difference holds when its interval excludes 0.
`--json` ends with one JSON object.
"""

from common import legacy_keras  # noqa: F401  (Keras 2 before tensorflow is imported)

# isort: split
import dataclasses
import os
import platform
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import ablation, datasets, intervals
from common import cli, features
from common.representations import cr_folding
from trainer import data_input
from trainer.config import ModelConfig
from trainer.downstream import config as downstream_config
from trainer.downstream import data as ranker_data
from trainer.downstream import replay
from trainer.downstream import train as downstream_train

# name -> the ModelConfig fields of the reading (every reading field given, so a variant does
# not move with the defaults). `last` is the paper's reading (the last hidden MLP layer, after
# its ReLU; the default until "Where CR is read" in docs/BENCHMARKS.md), `mlp_1_pre` today's
# default.
_READ = {"cr_layer": None, "cr_activation": "post", "cr_normalization": "none",
         "mlp_normalization": "none"}
VARIANTS = {name: {**_READ, **fields} for name, fields in {
    "last": {},
    "last_pre": {"cr_activation": "pre"},
    "last_l2": {"cr_normalization": "l2"},
    "last_pre_l2": {"cr_activation": "pre", "cr_normalization": "l2"},
    "mlp_1": {"cr_layer": "mlp_1"},
    "mlp_1_pre": {"cr_layer": "mlp_1", "cr_activation": "pre"},
    "mlp_2": {"cr_layer": "mlp_2"},
    "mlp_2_pre": {"cr_layer": "mlp_2", "cr_activation": "pre"},
    "layer": {"mlp_normalization": "layer"},
    "layer_pre": {"mlp_normalization": "layer", "cr_activation": "pre"},
    "layer_mlp_2_pre": {"mlp_normalization": "layer", "cr_layer": "mlp_2",
                        "cr_activation": "pre"},
}.items()}
class Choice:
    """One run: the ablation's data and split, and the variants over seeds (module doc)."""

    def __init__(self, data: str, split: ablation.Split, seeds: list[int], work: str,
                 upstream_epochs: int, cr_domains: str = cr_folding.DEFAULT, log=print):
        self.ablation = ablation.Ablation(data, split, seeds, work, upstream_epochs,
                                   downstream_config.DownstreamTrainConfig(),
                                          downstream_config.DownstreamConfig(), layers=(),
                                   log=log)
        self.data, self.split, self.seeds = data, split, seeds
        self.cr_domains = cr_folding.check(cr_domains)
        self.log = log
        self.probabilities = ranker_data.oracle_probabilities(data,
                                                              self.ablation.rows["validation"],
                                                    *split.validation)

    def one(self, variant: str, seed: int, spectrum_only: bool) -> dict:
        ab = self.ablation
        config = ModelConfig(**VARIANTS[variant])
        model, _ = ab.upstream(variant, seed, config)
        events = replay.run_upstream(replay.keras_model_fn(model), ab.records)
        rows = ab.attach(replay.histories(events, ab.half_life, cr_domains=self.cr_domains))
        result = {"variant": variant, "seed": seed,
                  "spectra": ablation.representation_spectra(rows["validation"], events,
                                                      self.split.validation),
                  "upstream": ab.upstream_metrics[variant][-1]}
        del events
        if not spectrum_only:
            ranker, fit = ab.ranker(rows, downstream_config.LFM4ADS, seed)
            validation = rows["validation"]
            scores = downstream_train.predict(ranker, validation)
            masked = downstream_train.predict(ranker, validation, ablation.CR_GROUP)
            result.update(fit)
            result["validation"] = intervals.metric(validation, scores, self.probabilities)
            result["cr_masked_drop"] = result["validation"] - intervals.metric(
                validation, masked, self.probabilities)
            result["_scores"] = scores
        tf.keras.backend.clear_session()
        return result

    def run(self, variants: list[str], spectrum_only: bool) -> dict:
        started = time.perf_counter()
        runs = []
        for seed in self.seeds:
            for variant in variants:
                result = self.one(variant, seed, spectrum_only)
                self.log(f"  {variant} seed {seed}: CR(u,i) "
                         f"{_short(result['spectra']['cr'])}, UR "
                         f"{_short(result['spectra']['ur'])}"
                         + ("" if spectrum_only else
                            f"; validation {result['validation']:.4f}, CR masked "
                            f"-{result['cr_masked_drop']:.4f}"))
                runs.append(result)
        return {"variants": variants, "seeds": self.seeds, "cr_domains": self.cr_domains,
                "metric": "expected_auc" if self.probabilities is not None else "auc",
                "validation_rows": ranker_data.size(self.ablation.rows["validation"]),
                "validation_clicks": int(self.ablation.rows["validation"][features.LABEL].sum()),
                "split": dataclasses.asdict(self.split),
                "summary": self.summarize(runs, variants, spectrum_only),
                "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                "seconds": round(time.perf_counter() - started, 1)}

    def summarize(self, runs: list[dict], variants: list[str], spectrum_only: bool) -> list:
        out = []
        validation = self.ablation.rows["validation"]
        by = {(r["variant"], r["seed"]): r for r in runs}
        for variant in variants:
            mine = [by[(variant, s)] for s in self.seeds]
            row = {"variant": variant, "config": VARIANTS[variant]}
            for name in ablation.SPECTRA:
                row[name] = {k: float(np.median([r["spectra"][name][k] or 0.0 for r in mine]))
                             for k in ("dim", "dead_units", "top_share", "participation_ratio",
                                       "effective_rank")}
            pr_ur = row["ur"]["participation_ratio"]
            row["meets_target"] = bool(row["cr"]["dead_units"] == 0
                                       and row["cr"]["participation_ratio"] >= 0.5 * pr_ur)
            if not spectrum_only:
                row["validation"] = float(np.mean([r["validation"] for r in mine]))
                row["cr_masked_drop"] = intervals.interval([r["cr_masked_drop"] for r in mine],
                                                           [0.0])
                base = [by[(variants[0], s)] for s in self.seeds]
                diffs, boot = [], []
                for s, (r, b) in enumerate(zip(mine, base, strict=True)):
                    diffs.append(r["validation"] - b["validation"])
                    boot.append(float(np.var(intervals.paired_bootstrap(
                        validation[features.USER_ID],
                        (validation, r["_scores"], self.probabilities),
                        (validation, b["_scores"], self.probabilities), s), ddof=1))
                        if variant != variants[0] else 0.0)
                row["vs_first"] = intervals.interval(diffs, boot)
            out.append(row)
        return out


def _short(s: dict) -> str:
    return (f"dead {s['dead_units']}/{s['dim']}, top {s['top_share'] or 0:.0%}, "
            f"PR {s['participation_ratio']:.2f}, rank {s['effective_rank']:.2f}")


def format_table(result: dict) -> str:
    lines = [f"validation window: {result['validation_rows']} ad rows, "
             f"{result['validation_clicks']} clicks; metric {result['metric']}; seeds "
             f"{result['seeds']}; CR folded on {result['cr_domains']} requests"]
    lines.append(f"{'variant':<17}{'CR dead':>8}{'top':>6}{'PR':>7}{'rank':>7}{'PR/UR':>7}"
                 f"{'CR(u) PR':>9}{'CR(i) PR':>9}{'target':>7}{'valid.':>8}"
                 f"{'vs first [95%]':>26}{'CR masked drop':>24}")
    for row in result["summary"]:
        cr = row["cr"]
        line = (f"{row['variant']:<17}{cr['dead_units']:>5.0f}/{cr['dim']:<2.0f}"
                f"{cr['top_share']:>6.0%}{cr['participation_ratio']:>7.2f}"
                f"{cr['effective_rank']:>7.2f}"
                f"{cr['participation_ratio'] / max(row['ur']['participation_ratio'], 1e-9):>7.2f}"
                f"{row['cr_user']['participation_ratio']:>9.2f}"
                f"{row['cr_item']['participation_ratio']:>9.2f}"
                f"{'yes' if row['meets_target'] else 'no':>7}")
        if "validation" in row:
            v, m = row["vs_first"], row["cr_masked_drop"]
            line += (f"{row['validation']:>8.4f}"
                     f"{v['mean']:>+9.4f} [{v['low']:+.4f}, {v['high']:+.4f}]"
                     f"{m['mean']:>+8.4f} [{m['low']:+.4f}, {m['high']:+.4f}]")
        lines.append(line)
    lines.append("UR: " + ", ".join(
        f"{row['variant']} PR {row['ur']['participation_ratio']:.2f}"
        for row in result["summary"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.cr_choice",
                           description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=("synthetic", "movielens"))
    source.add_argument("--data", help="any directory in the project's schema")
    p.add_argument("--world", default="two_tower", help="the simulator's world (synthetic)")
    p.add_argument("--examples", type=int, default=200_000, help="synthetic data size")
    p.add_argument("--sim_seed", type=int, default=1,
                   help="the simulator's seed (1: the development world)")
    p.add_argument("--variants", default="last,mlp_1_pre,last_pre_l2",
                   help=f"comma-separated, the first is the reference; of {sorted(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--split_days", type=ablation.three_numbers, default=None,
                   help="U,T,V as benchmarks.ablation")
    p.add_argument("--split", type=ablation.three_numbers, default=None,
                   help="three cut fractions of the rows by time")
    p.add_argument("--upstream_epochs", type=int, default=2)
    p.add_argument("--cr_domains", default=cr_folding.DEFAULT, choices=cr_folding.CHOICES)
    p.add_argument("--spectrum_only", action="store_true",
                   help="measure the representations only (no downstream ranker)")
    p.add_argument("--cache", default=os.path.join("build", "ablation"))
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")

    def choose() -> dict:
        if args.dataset == "synthetic":
            data = datasets.prepare("synthetic", args.cache, args.examples, args.sim_seed,
                                    world=args.world)
            if not args.split:  # the ablation's 14-day split
                args.split_days = args.split_days or "10,2,1"
        else:
            data = datasets.prepare(args.dataset, args.cache) if args.dataset else args.data
        args.data = data
        data, split = ablation._prepare(args)
        with tempfile.TemporaryDirectory() as work:
            result = Choice(data, split, list(range(args.seeds)), work, args.upstream_epochs,
                            args.cr_domains, log=lambda m: print(m, file=sys.stderr, flush=True)
                            ).run(variants, args.spectrum_only)
        result.update(data=data, machine=f"{platform.machine()}, {os.cpu_count()} cpus")
        return result

    return cli.run(choose, args, show=format_table, errors=(data_input.DataError,))


if __name__ == "__main__":
    sys.exit(main())
