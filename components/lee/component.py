"""TFX component: LightweightEmbeddingEvaluator (paper Sec. 4.3.3), after the guard.

The guard checks the candidate tables' statistics; this component checks their usefulness
(`components.lee.evaluator`): a proxy ranker trained on the recent downstream rows (the ad rows
of the last `train_days` of the train split) and tested on the later ones (the ad rows of the
eval split, which the upstream did not train on), with the candidate tables, against the same
proxy with the live published tables, or with no representations before the first
publication. The paired bootstrap over the test users (`trainer.paired_comparison`) says
`better`, `worse` or `inconclusive`, with the smallest difference the eval split could resolve
(`detectable_effect`). The policy (`components.lee.evaluator.publishes`):

    tables live already:  better -> publish;  inconclusive or worse -> the live tables stay
    nothing live yet:     better or inconclusive -> publish;  worse (below -tolerance) -> hold

Too few test clicks to measure (`LeeConfig.min_test_clicks`) count as inconclusive. Published
means the layout of `components.publishing` under `publish_root` (`LIVE` replaced last) and,
with `store_url`, the serving store loaded; held, nothing under `publish_root` or in the store
changes. The candidate and its statistics come from the guard's verdict (`passed`).

Recorded in ML Metadata (custom properties of the output) and in `evaluation.json` in it:
`verdict` (published | held), `blessed`, `comparison` (better | worse | inconclusive),
`delta`, `delta_stderr`, `delta_low`, `delta_high`, `detectable_effect`, `tolerance`,
`candidate_auc`, `reference_auc`, `reference` (live | none), `live_version`, `train_rows`,
`test_rows`, `test_clicks`, `test_users`, `min_test_clicks`, `reasons`, `published_path`,
`store_url`, `seconds`.
"""

import glob
import json
import os

import numpy as np
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from common import features
from common.representations.statistics import STATUS_HELD, STATUS_PASSED, STATUS_PUBLISHED
from components import artifacts
from components.lee.evaluator import LeeConfig, TooFewRows, evaluate, publishes, table_source
from components.publishing import artifact_table_dirs, live_version, load_into_store, publish
from components.representation_extractor.component import split_patterns
from components.representation_guard.component import read_verdict, verdict_statistics
from trainer import data_input, paired_comparison
from trainer.downstream import data as ranker_data
from trainer.downstream import point_in_time

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

EVALUATION_FILE = "evaluation.json"


def evaluate_and_publish(
    train: ranker_data.Rows,
    test: ranker_data.Rows,
    table_dirs: dict[str, str],
    version: int,
    statistics: dict,
    publish_root: str,
    config: LeeConfig,
    store_url: str = "",
) -> dict:
    """The candidate tables in `table_dirs` (model `version`) against the live version under
    `publish_root`; published (and loaded into the store at `store_url`) when blessed.
    `statistics`: the guard's per-table statistics, written beside the published tables."""
    live = live_version(publish_root)
    reference = (
        point_in_time.HistorySource.from_published(publish_root) if live is not None else None
    )
    try:
        result = evaluate(train, test, table_source(table_dirs), reference, config)
    except TooFewRows as e:
        # Nothing measured: inconclusive, whose policy keeps the live version (with none,
        # the candidate goes live).
        result = {"comparison": paired_comparison.INCONCLUSIVE, "reference": None,
                  "blessed": publishes(paired_comparison.INCONCLUSIVE, live=live is not None),
                  "test_rows": ranker_data.size(test),
                  "test_clicks": int(np.sum(test[features.LABEL])),
                  "min_test_clicks": config.min_test_clicks, "tolerance": config.tolerance,
                  "reasons": [f"not evaluated: {e}"]}
    else:
        result["reasons"] = [_policy_reason(result, config)]
    result.update(verdict=STATUS_HELD, live_version=live, candidate_version=int(version),
                  published_path=None)
    if not result["blessed"]:
        return result
    if os.path.exists(os.path.join(publish_root, str(version))):
        result["reasons"].append(f"version {version} is already published")
        return result
    result["published_path"] = publish(publish_root, version, table_dirs, statistics)
    result.update(verdict=STATUS_PUBLISHED, live_version=int(version))
    if store_url:
        result["store_rows"] = load_into_store(store_url, result["published_path"], version)
        result["store_url"] = store_url
    return result


def _policy_reason(result: dict, config: LeeConfig) -> str:
    """What the policy made of a measured candidate, in words (the figures are beside it)."""
    if result["reference"] == "none":
        if result["comparison"] == paired_comparison.WORSE:
            return ("first publication held: the proxy does worse with the candidate's "
                    "representations than with none, by more than the tolerance "
                    f"{config.tolerance}")
        return ("first publication: nothing live to protect; published unless shown worse "
                "than no representations")
    if result["comparison"] == paired_comparison.BETTER:
        return "better than the live tables: published"
    if result["comparison"] == paired_comparison.WORSE:
        return "worse than the live tables: the live tables stay"
    return "not shown better than the live tables: the live tables stay"


def comparison_fields(result: dict) -> dict:
    """The LEE's result under the keys of `trainer.paired_comparison.describe`."""
    return {"verdict": result["comparison"], "delta": result.get("delta"),
            "low": result.get("delta_low"), "high": result.get("delta_high"),
            "detectable_effect": result.get("detectable_effect"),
            "rows": result.get("test_rows"), "clicks": result.get("test_clicks"),
            "min_clicks": result.get("min_test_clicks")}


def _record(out, result: dict) -> None:
    out.set_string_custom_property("verdict", result["verdict"])
    out.set_int_custom_property("published", int(result["verdict"] == STATUS_PUBLISHED))
    if "blessed" in result:  # absent when the guard held the tables (nothing evaluated)
        out.set_int_custom_property("blessed", int(bool(result["blessed"])))
    out.set_string_custom_property("reasons", json.dumps(result["reasons"]))
    out.set_int_custom_property("live_version", int(result.get("live_version") or 0))
    for name in ("delta", "delta_stderr", "delta_low", "delta_high", "detectable_effect",
                 "tolerance", "candidate_auc", "reference_auc", "seconds"):
        if result.get(name) is not None:
            out.set_float_custom_property(name, float(result[name]))
    for name in ("train_rows", "test_rows", "test_clicks", "test_users", "min_test_clicks"):
        if result.get(name) is not None:
            out.set_int_custom_property(name, int(result[name]))
    for name in ("comparison", "reference", "published_path", "store_url"):
        if result.get(name):
            out.set_string_custom_property(name, str(result[name]))
    os.makedirs(out.uri, exist_ok=True)
    with open(os.path.join(out.uri, EVALUATION_FILE), "w") as f:
        json.dump(result, f, indent=1)


@tfx.dsl.components.component
def LightweightEmbeddingEvaluator(  # noqa: N802 (TFX component naming)
    examples: _InputArtifact[standard_artifacts.Examples],
    representations: _InputArtifact[artifacts.Representations],
    cross_tables: _InputArtifact[artifacts.CrossRepresentationTables],
    guard_result: _InputArtifact[artifacts.GuardResult],
    evaluation: _OutputArtifact[artifacts.EmbeddingEvaluation],
    publish_root: _Parameter[str],
    store_url: _Parameter[str] = "",
    train_days: _Parameter[float] = 3.0,
    tolerance: _Parameter[float] = LeeConfig.tolerance,
    config_json: _Parameter[str] = "{}",
) -> None:
    """Publishes the guard-passed candidate when the proxy blesses it (module doc).

    `config_json`: `LeeConfig` field overrides (JSON), e.g. `{"epochs": 3}`."""
    config = LeeConfig(**{**json.loads(config_json or "{}"), "tolerance": float(tolerance)})
    verdict = read_verdict(guard_result)
    if verdict["status"] != STATUS_PASSED:
        reason = ("the guard published the tables itself (publish_tables=1)"
                  if verdict["status"] == STATUS_PUBLISHED else
                  "the guard held the candidate: " + "; ".join(verdict["reasons"]))
        _record(evaluation, {"verdict": verdict["status"], "reasons": [reason],
                             "live_version": live_version(publish_root),
                             "published_path": verdict.get("published_path")})
        return
    train_files, test_files = (sorted(glob.glob(pattern))
                               for pattern in split_patterns(examples, "train,eval"))
    test_start, _ = data_input.time_range(test_files)
    test = ranker_data.read_rows(test_files)
    train = ranker_data.read_rows(train_files,
                                  start=test_start - int(round(train_days * features.DAY)),
                        end=test_start)
    result = evaluate_and_publish(
        train, test, artifact_table_dirs(representations, cross_tables),
        int(verdict["candidate_version"]), verdict_statistics(verdict), publish_root, config,
        store_url)
    _record(evaluation, result)
