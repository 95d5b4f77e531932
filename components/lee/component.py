"""TFX component: LightweightEmbeddingEvaluator (paper Sec. 4.3.3), after the guard.

The guard checks the candidate tables' statistics; this component checks their usefulness
(`components.lee.evaluator`): a proxy ranker trained on the recent downstream rows (the ad rows
of the last `train_days` of the train split) and tested on the later ones (the ad rows of the
eval split, which the upstream did not train on), with the candidate tables, against the same
proxy with the live published tables. Before the first publication nothing is live to protect:
the candidate is published and its delta against the proxy with no representations is recorded,
not judged (as TFMA's change thresholds need a baseline). Otherwise the candidate is blessed
when the AUC delta is not below `-tolerance`; only then is it published (the guard's layout
under `publish_root`, `LIVE` replaced last) and, with `store_url`, loaded into the serving
store. Held, nothing under `publish_root` or in the store changes. When the test rows hold too
few clicks to compare (`LeeConfig.min_test_clicks`), nothing is measured: the live version
stays, or with none yet the candidate is published.

Recorded in ML Metadata (custom properties of the output) and in `evaluation.json` in it:
`verdict` (published | held), `blessed`, `delta`, `delta_stderr`, `candidate_auc`,
`reference_auc`, `reference` (live | none), `live_version`, `train_rows`, `test_rows`,
`test_clicks`, `reasons`, `published_path`, `store_url`, `seconds`.
"""

import glob
import json
import os

from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components import artifacts as A
from components.lee.evaluator import LeeConfig, TooFewRows, evaluate, table_source
from components.representation_extractor.component import split_patterns
from components.representation_guard.component import (
    artifact_table_dirs,
    live_version,
    load_into_store,
    publish,
    read_verdict,
    verdict_statistics,
)
from trainer import features as F
from trainer import input as data_input
from trainer.downstream import data as D
from trainer.downstream import point_in_time as P
from trainer.representations.statistics import STATUS_HELD, STATUS_PASSED, STATUS_PUBLISHED

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

EVALUATION_FILE = "evaluation.json"


def evaluate_and_publish(train: D.Rows, test: D.Rows, table_dirs: dict[str, str], version: int,
                         statistics: dict, publish_root: str, config: LeeConfig,
                         store_url: str = "") -> dict:
    """The candidate tables in `table_dirs` (model `version`) against the live version under
    `publish_root`; published (and loaded into the store at `store_url`) when blessed.
    `statistics`: the guard's per-table statistics, written beside the published tables."""
    live = live_version(publish_root)
    reference = P.HistorySource.from_published(publish_root) if live is not None else None
    try:
        result = evaluate(train, test, table_source(table_dirs), reference, config)
    except TooFewRows as e:
        # Nothing measured: keep the live version; with none, nothing can get worse.
        result = {"reasons": [f"not evaluated: {e}"], "reference": None, "blessed": live is None}
    else:
        result["reasons"] = []
        if live is None:  # nothing live to protect (as TFMA without a baseline)
            result["blessed"] = True
            result["reasons"].append(
                "first publication: nothing live to compare with; against no representations "
                f"the proxy's AUC delta is {result['delta']:+.4f} (recorded, not judged)")
    result.update(verdict=STATUS_HELD, live_version=live, candidate_version=int(version),
                  published_path=None)
    if not result["blessed"]:
        if "delta" in result:
            result["reasons"].append(
                f"the proxy's AUC with the candidate is {result['candidate_auc']:.4f}, "
                f"{-result['delta']:.4f} below the {result['reference']} reference "
                f"({result['reference_auc']:.4f}; tolerance {config.tolerance})")
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


def _record(out, result: dict) -> None:
    out.set_string_custom_property("verdict", result["verdict"])
    out.set_int_custom_property("published", int(result["verdict"] == STATUS_PUBLISHED))
    if "blessed" in result:  # absent when the guard held the tables (nothing evaluated)
        out.set_int_custom_property("blessed", int(bool(result["blessed"])))
    out.set_string_custom_property("reasons", json.dumps(result["reasons"]))
    out.set_int_custom_property("live_version", int(result.get("live_version") or 0))
    for name in ("delta", "delta_stderr", "candidate_auc", "reference_auc", "seconds"):
        if result.get(name) is not None:
            out.set_float_custom_property(name, float(result[name]))
    for name in ("train_rows", "test_rows", "test_clicks"):
        if result.get(name) is not None:
            out.set_int_custom_property(name, int(result[name]))
    for name in ("reference", "published_path", "store_url"):
        if result.get(name):
            out.set_string_custom_property(name, str(result[name]))
    os.makedirs(out.uri, exist_ok=True)
    with open(os.path.join(out.uri, EVALUATION_FILE), "w") as f:
        json.dump(result, f, indent=1)


@tfx.dsl.components.component
def LightweightEmbeddingEvaluator(  # noqa: N802 (TFX component naming)
    examples: _InputArtifact[standard_artifacts.Examples],
    representations: _InputArtifact[A.Representations],
    cross_tables: _InputArtifact[A.CrossRepresentationTables],
    guard_result: _InputArtifact[A.GuardResult],
    evaluation: _OutputArtifact[A.EmbeddingEvaluation],
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
    test = D.read_rows(test_files)
    train = D.read_rows(train_files, start=test_start - int(round(train_days * F.DAY)),
                        end=test_start)
    result = evaluate_and_publish(
        train, test, artifact_table_dirs(representations, cross_tables),
        int(verdict["candidate_version"]), verdict_statistics(verdict), publish_root, config,
        store_url)
    _record(evaluation, result)
