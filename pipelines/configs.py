"""Defaults of the pipeline: names, paths, thresholds and Beam arguments.

Every value here is only a default: of a field of `pipelines.pipeline_config.PipelineConfig`,
which `pipelines.pipeline.create_pipeline` builds the pipeline from, and which the runners
build from flags (`pipelines.pipeline_config.add_flags`) or environment variables
(`LFM4ADS_DATA`, `LFM4ADS_PIPELINE_ROOT`, `LFM4ADS_SERVING_ROOT`, `LFM4ADS_BEAM_WORKERS`,
`LFM4ADS_EVAL_DAYS`).
"""

from __future__ import annotations

import os

from common.representations import cr_folding
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS

PIPELINE_NAME = "lfm4ads"
MODEL_NAME = "lfm4ads"

# Where things live when nothing is given (relative to the working directory).
DATA_ROOT = os.environ.get("LFM4ADS_DATA", "data/synthetic")
PIPELINE_ROOT = os.environ.get("LFM4ADS_PIPELINE_ROOT", "build/pipeline")
SERVING_ROOT = os.environ.get("LFM4ADS_SERVING_ROOT", "build/serving")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_FILE = os.path.join(REPO_ROOT, "pipelines", "schema", "schema.pbtxt")

# Split: the last EVAL_DAYS of the data are the eval window (same rule as trainer.train). It is
# every gate's test rows (the Evaluator, the embedding evaluator, the downstream BlessingGate):
# the more clicks it holds, the smaller the differences they resolve (`LFM4ADS_EVAL_DAYS` or
# the runners' --eval_days).
EVAL_DAYS = float(os.environ.get("LFM4ADS_EVAL_DAYS", "1"))

# Module functions (importable names: the repository is on sys.path of every worker).
PREPROCESSING_FN = "trainer.tfx.transform_module.preprocessing_fn"
RUN_FN = "trainer.tfx.upstream_module.run_fn"

# Trainer custom_config: a preset of trainer.config.PRESETS, and ModelConfig / TrainConfig field
# overrides over it.
PRESET = "default"
MODEL_OVERRIDES: dict = {}
TRAIN_OVERRIDES: dict = {"epochs": 2}

# Evaluator: the model is blessed when the ad AUC on the eval window is at least
# AUC_AD_THRESHOLD and not more than AUC_MAX_DROP below the last blessed model's.
AUC_AD_THRESHOLD = 0.55
AUC_MAX_DROP = 0.01

# CR aggregation (Eq. 1-2): b(dt) = 0.5 ** (dt / half_life).
CR_HALF_LIFE_SECONDS = DEFAULT_HALF_LIFE_SECONDS  # one day, shared with serving.store
# The requests whose CR(u,i) folds into CR(u), CR(i): "ad" (paper Sec. 4.3.1: when a user
# meets an ad) or "all" (content requests too); the aggregator, DownstreamExamples and the
# online check read the same value.
CR_DOMAINS = cr_folding.DEFAULT
# Splits whose examples get CR(u), CR(i) as of strictly before each row: the downstream
# models' training window (the latest data). All splits cost about as much as the rest of the
# pipeline at 1M examples (docs/BENCHMARKS.md), hence only eval by default.
POINT_IN_TIME_SPLITS = "eval"

# RepresentationGuard: GuardThresholds field overrides (empty = the defaults).
GUARD_THRESHOLDS: dict = {}

# LightweightEmbeddingEvaluator: a candidate the guard passed is published when its proxy
# ranker is shown better on the eval split than with the live tables or, before the first
# publication, not shown worse than with no representations by more than LEE_TOLERANCE AUC
# (None: no evaluator, the guard publishes); LEE_CONFIG: components.lee.LeeConfig overrides.
LEE_TOLERANCE: float | None = 0.01
LEE_CONFIG: dict = {}

# The downstream ranker the pipeline trains when the tables went live (None: none), its model
# name under the serving root, its training window (the days before the eval split), Keras
# training overrides, and the BlessingGate's tolerance: how far below a baseline's AUC the
# ranker must be shown to be to count as worse (components.blessing_gate has the policy).
DOWNSTREAM_MODE: str | None = "lfm4ads"
DOWNSTREAM_MODEL_NAME = "lfm4ads_ranker"
DOWNSTREAM_TRAIN_DAYS = 3.0
DOWNSTREAM_TRAIN_OVERRIDES: dict = {}
DOWNSTREAM_MAX_DROP = 0.0
DOWNSTREAM_RUN_FN = "trainer.tfx.ranker_module.run_fn"

# The serving store the guard loads published tables into; the local runner's default is
# SQLite under the serving root (`LFM4ADS_STORE_URL` overrides it; "none" disables it).
STORE_URL = os.environ.get("LFM4ADS_STORE_URL", "")


def default_store_url(serving_root: str) -> str:
    """`STORE_URL`, else `sqlite:///<serving_root>/representations.db`."""
    if STORE_URL.lower() == "none":
        return ""
    return STORE_URL or "sqlite:///" + os.path.join(os.path.abspath(serving_root),
                                                     "representations.db")


def beam_pipeline_args(workers: int | None = None) -> list[str]:
    """DirectRunner arguments: in-process for one worker, multi-processing for more.

    `workers` defaults to `LFM4ADS_BEAM_WORKERS` or 1: on small data the processes' start-up
    costs more than it saves (docs/BENCHMARKS.md has the measurement).
    """
    if workers is None:
        workers = int(os.environ.get("LFM4ADS_BEAM_WORKERS", "1"))
    if workers <= 1:
        return ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
