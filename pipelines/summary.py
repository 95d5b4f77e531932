"""What a pipeline run produced, read back from ML Metadata and the artifacts.

`run_summary(metadata_path, pipeline_name)` returns the figures the runners print: the TFMA
AUC / GAUC per domain and on the cold-start slice, the blessing, the pushed version, the
representation table sizes, the guard's verdict and the embedding evaluator's (whether the
tables went live: `published`), each gate's paired comparison (better / worse / inconclusive
with the smallest difference its test rows resolve), plus each component's wall time.
"""

from __future__ import annotations

import json
import os

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from common import signatures
from components import artifacts
from components.blessing_gate import VS_LAST_BLESSED, VS_NONE
from trainer import paired_comparison
from trainer.transform import ITEM_COLD_START


def open_metadata(metadata_path: str) -> metadata_store.MetadataStore:
    """The pipeline's ML Metadata store (SQLite file, `metadata_file`), read-only."""
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_artifact(store, type_name: str, component_id: str | None = None):
    """The newest artifact of `type_name` in ML Metadata (with `component_id`: among those
    that component wrote, `<pipeline_root>/<component_id>/<output>/<execution>`), or None.

    Several components may write one type (`ExampleStatistics`: StatisticsGen and the
    Transform's pre/post-transform statistics; `Model`: both trainers): without
    `component_id` the newest of them comes back, whichever wrote it."""
    artifacts = store.get_artifacts_by_type(type_name)
    if component_id is not None:
        part = os.sep + component_id + os.sep
        artifacts = [a for a in artifacts if part in a.uri]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _prop(artifact, name: str, default=None):
    if artifact is None or name not in artifact.custom_properties:
        return default
    value = artifact.custom_properties[name]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else default


def _slice(slice_key) -> dict[str, str]:
    out = {}
    for part in slice_key.single_slice_keys:
        kind = part.WhichOneof("kind")
        value = getattr(part, kind)
        out[part.column] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def tfma_metrics(evaluation_uri: str, baseline: bool = False) -> dict[tuple, dict[str, float]]:
    """(output name, sorted slice items) -> {metric: value} of a TFMA evaluation: the candidate
    model's, or with `baseline` the baseline model's (when the evaluation holds one)."""
    import tensorflow_model_analysis as tfma

    out: dict[tuple, dict[str, float]] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        slice_items = tuple(sorted(_slice(metrics.slice_key).items()))
        for kv in metrics.metric_keys_and_values:
            # With a baseline, TFMA also reports the baseline model's own metrics: the run's
            # figures are the candidate's.
            if kv.key.is_diff or (kv.key.model_name == tfma.BASELINE_KEY) != baseline:
                continue
            value = kv.value
            if value.WhichOneof("type") != "double_value":
                continue
            out.setdefault((kv.key.output_name, slice_items), {})[kv.key.name] = (
                value.double_value.value)
    return out


def _metric(metrics, output: str, slice_items: dict, name: str):
    values = metrics.get((output, tuple(sorted(slice_items.items()))), {})
    value = values.get(name)
    if name in ("auc", "gauc") and values.get("mean_label") in (0.0, 1.0):
        return None  # one class only: TFMA reports 0, the AUC is undefined
    return None if value is None or value != value else round(float(value), 4)


def component_windows(store, pipeline_name: str) -> dict[str, tuple[float, float]]:
    """(start, end) in epoch seconds of each component's latest execution in `pipeline_name`."""
    out: dict[str, tuple[float, float]] = {}
    latest: dict[str, int] = {}
    for execution in store.get_executions():
        node = _prop(execution, "component_id") or ""
        for context in store.get_contexts_by_execution(execution.id):
            if context.type == "node" and context.name.startswith(pipeline_name + "."):
                node = context.name[len(pipeline_name) + 1:]
        if not node or execution.id < latest.get(node, -1):
            continue
        latest[node] = execution.id
        out[node] = (execution.create_time_since_epoch / 1e3,
                     execution.last_update_time_since_epoch / 1e3)
    return out


def component_seconds(store, pipeline_name: str) -> dict[str, float]:
    """Wall seconds of each component's latest execution in `pipeline_name`."""
    return {node: round(end - start, 2)
            for node, (start, end) in component_windows(store, pipeline_name).items()}


def _result_file(artifact, name: str) -> dict:
    if artifact is None:
        return {}
    path = os.path.join(artifact.uri, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def rounded(value, digits: int = 4):
    """`value` rounded for the summary, None kept."""
    return None if value is None else round(float(value), digits)


def run_summary(metadata_path: str, pipeline_name: str) -> dict:
    """The figures of the latest run (module doc)."""
    store = open_metadata(metadata_path)
    evaluation = latest_artifact(store, "ModelEvaluation", "Evaluator")
    blessing = latest_artifact(store, "ModelBlessing", "Evaluator")
    pushed = latest_artifact(store, "PushedModel", "Pusher")
    representations = latest_artifact(store, artifacts.Representations.TYPE_NAME)
    cross = latest_artifact(store, artifacts.CrossRepresentationTables.TYPE_NAME)
    guard = latest_artifact(store, artifacts.GuardResult.TYPE_NAME)
    lee = latest_artifact(store, artifacts.EmbeddingEvaluation.TYPE_NAME)
    if lee is not None and (guard is None or lee.id < guard.id):
        lee = None  # an earlier run's: this run had no evaluator
    published_by = lee if lee is not None else guard
    metrics = tfma_metrics(evaluation.uri) if evaluation is not None else {}
    ad, content = {"domain": "ad"}, {"domain": "content"}
    summary = {
        "auc_ad": _metric(metrics, signatures.AD_PREDICTION, ad, "auc"),
        "gauc_ad": _metric(metrics, signatures.AD_PREDICTION, ad, "gauc"),
        "auc_content": _metric(metrics, signatures.CONTENT_PREDICTION, content, "auc"),
        "gauc_content": _metric(metrics, signatures.CONTENT_PREDICTION, content, "gauc"),
        "auc_cold_start": _metric(metrics, signatures.AD_PREDICTION,
                                  {"domain": "ad", ITEM_COLD_START: "1"}, "auc"),
        "eval_ad_examples": _metric(metrics, signatures.AD_PREDICTION, ad, "example_count"),
        "blessed": bool(_prop(blessing, "blessed", 0)),
        "pushed": bool(_prop(pushed, "pushed", 0)),
        "pushed_version": int(_prop(pushed, "pushed_version", 0) or 0) or None,
        "pushed_path": _prop(pushed, "pushed_destination"),
        "ur_rows": _prop(representations, "user_rows"),
        "ir_rows": _prop(representations, "item_rows"),
        "cr_users": _prop(cross, "cross_user_rows"),
        "cr_items": _prop(cross, "cross_item_rows"),
        "cr_domains": _prop(cross, "cr_domains"),  # the requests whose CR(u,i) folded
        "guard": _prop(guard, "verdict"),
        "guard_reasons": json.loads(_prop(guard, "reasons", "[]")),
        "lee_verdict": _prop(lee, "verdict"),  # None when the pipeline has no evaluator
        # None when there was no evaluator or it did not evaluate (the guard held the tables).
        "lee_blessed": None if _prop(lee, "blessed") is None else bool(_prop(lee, "blessed")),
        # better | worse | inconclusive (None when it did not evaluate)
        "lee_comparison": _prop(lee, "comparison"),
        "lee_delta": rounded(_prop(lee, "delta")),
        "lee_delta_stderr": rounded(_prop(lee, "delta_stderr")),
        "lee_delta_low": rounded(_prop(lee, "delta_low")),
        "lee_delta_high": rounded(_prop(lee, "delta_high")),
        "lee_detectable_effect": rounded(_prop(lee, "detectable_effect")),
        "lee_candidate_auc": rounded(_prop(lee, "candidate_auc")),
        "lee_reference_auc": rounded(_prop(lee, "reference_auc")),
        "lee_reference": _prop(lee, "reference"),
        "lee_test_rows": _prop(lee, "test_rows"),
        "lee_test_clicks": _prop(lee, "test_clicks"),
        "lee_test_users": _prop(lee, "test_users"),
        "lee_min_test_clicks": _prop(lee, "min_test_clicks"),
        "lee_reasons": json.loads(_prop(lee, "reasons", "[]")),
        "published": _prop(published_by, "verdict") == "published",
        "live_representations_version": _prop(published_by, "live_version") or None,
        "store_url": _prop(published_by, "store_url"),
        "store_rows": _result_file(published_by, "evaluation.json" if lee is not None
                                   else "verdict.json").get("store_rows"),
        "evaluation_uri": evaluation.uri if evaluation is not None else None,
        "component_seconds": component_seconds(store, pipeline_name),
    }
    summary.update(_downstream(store, lee))
    if summary["eval_ad_examples"] is not None:
        summary["eval_ad_examples"] = int(summary["eval_ad_examples"])
    return summary


def _count(value):
    return None if value is None else int(value)


def _downstream(store, lee) -> dict:
    """The downstream ranker's figures of this run (none when its branch did not run)."""
    def this_run(type_name, component_id):
        artifact = latest_artifact(store, type_name, component_id)
        return artifact if artifact is not None and lee is not None and artifact.id > lee.id \
            else None

    evaluation = this_run("ModelEvaluation", "DownstreamEvaluator")
    blessing = this_run("ModelBlessing", "DownstreamBlessingGate")
    pushed = this_run("PushedModel", "DownstreamPusher")
    baseline_model = this_run("Model", "DownstreamBaselineTrainer")
    candidate = tfma_metrics(evaluation.uri) if evaluation is not None else {}
    baseline = tfma_metrics(evaluation.uri, baseline=True) if evaluation is not None else {}
    out = {
        "downstream_auc": _metric(candidate, "", {}, "auc"),
        "downstream_gauc": _metric(candidate, "", {}, "gauc"),
        "downstream_auc_cold_start": _metric(candidate, "", {"item_cold_start": "1"}, "auc"),
        "downstream_baseline_auc": _metric(baseline, "", {}, "auc"),
        "downstream_baseline_gauc": _metric(baseline, "", {}, "gauc"),
        "downstream_eval_examples": _count(_metric(candidate, "", {}, "example_count")),
        "downstream_eval_rows": _prop(blessing, "eval_rows"),  # the gate's test rows
        "downstream_eval_clicks": _prop(blessing, "eval_clicks"),
        "downstream_min_clicks": _prop(blessing, "min_clicks"),
        # The last blessed ranker's AUC on the same rows (None before the first blessing).
        "downstream_last_blessed_auc": rounded(
            _prop(blessing, f"{VS_LAST_BLESSED}_reference_auc")),
        "downstream_blessed": None if blessing is None else bool(_prop(blessing, "blessed", 0)),
        "downstream_blessing_reasons": json.loads(_prop(blessing, "reasons", "[]")),
        "downstream_pushed": bool(_prop(pushed, "pushed", 0)),
        "downstream_pushed_version": int(_prop(pushed, "pushed_version", 0) or 0) or None,
        "downstream_pushed_path": _prop(pushed, "pushed_destination"),
        "downstream_baseline_model": (os.path.join(baseline_model.uri, "Format-Serving")
                                      if baseline_model is not None else None),
    }
    # The gate's paired comparison with each baseline: downstream_vs_none_comparison (better |
    # worse | inconclusive), _delta, _delta_low, _delta_high, _detectable_effect; the same
    # for vs_last_blessed (None before the first blessing).
    for vs in (VS_NONE, VS_LAST_BLESSED):
        out[f"downstream_{vs}_comparison"] = _prop(blessing, f"{vs}_comparison")
        for name in ("delta", "delta_low", "delta_high", "detectable_effect"):
            out[f"downstream_{vs}_{name}"] = rounded(_prop(blessing, f"{vs}_{name}"))
    return out


def gate_verdicts(summary: dict) -> dict[str, str]:
    """Each gate's paired comparison in plain words (`trainer.paired_comparison.describe`):
    `lee`, `downstream_vs_none`, `downstream_vs_last_blessed`, for those that compared."""
    out = {}
    if summary.get("lee_comparison"):
        out["lee"] = paired_comparison.describe({
            "verdict": summary["lee_comparison"], "delta": summary.get("lee_delta"),
            "low": summary.get("lee_delta_low"), "high": summary.get("lee_delta_high"),
            "detectable_effect": summary.get("lee_detectable_effect"),
            "rows": summary.get("lee_test_rows"), "clicks": summary.get("lee_test_clicks"),
            "min_clicks": summary.get("lee_min_test_clicks")})
    for vs in (VS_NONE, VS_LAST_BLESSED):
        key = f"downstream_{vs}"
        if summary.get(f"{key}_comparison"):
            out[key] = paired_comparison.describe({
                "verdict": summary[f"{key}_comparison"], "delta": summary.get(f"{key}_delta"),
                "low": summary.get(f"{key}_delta_low"), "high": summary.get(f"{key}_delta_high"),
                "detectable_effect": summary.get(f"{key}_detectable_effect"),
                "rows": summary.get("downstream_eval_rows"),
                "clicks": summary.get("downstream_eval_clicks"),
                "min_clicks": summary.get("downstream_min_clicks")})
    return out


def format_summary(summary: dict) -> str:
    """The printed table of a run."""
    rows = [
        ("ad AUC / GAUC", f"{summary['auc_ad']} / {summary['gauc_ad']}"),
        ("content AUC / GAUC", f"{summary['auc_content']} / {summary['gauc_content']}"),
        ("cold-start ad AUC", f"{summary['auc_cold_start']}"),
        ("blessed / pushed", f"{summary['blessed']} / {summary['pushed']}"),
        ("pushed model", f"{summary['pushed_path']} (version {summary['pushed_version']})"),
        ("UR / IR rows", f"{summary['ur_rows']} / {summary['ir_rows']}"),
        ("CR(u) / CR(i) rows", f"{summary['cr_users']} / {summary['cr_items']} (CR(u,i) of "
         f"{summary.get('cr_domains')} requests)"),
        ("guard", summary["guard"]),
    ]
    rows += [("  reason", r) for r in summary["guard_reasons"]]
    verdicts = gate_verdicts(summary)
    if summary.get("lee_verdict") is not None and summary.get("lee_blessed") is None:
        rows.append(("embedding evaluator", "not run (the guard held the tables)"))
    elif summary.get("lee_blessed") is not None and summary.get("lee_delta") is None:
        rows.append(("embedding evaluator", f"{summary['lee_verdict']} (not evaluated)"))
    elif summary.get("lee_blessed") is not None:
        rows.append(("embedding evaluator", (
            f"{summary['lee_verdict']}: proxy AUC {summary['lee_candidate_auc']} with the "
            f"candidate vs {summary['lee_reference_auc']} with the {summary['lee_reference']} "
            f"reference, on {summary['lee_test_rows']} test rows "
            f"({summary['lee_test_clicks']} clicks, {summary.get('lee_test_users')} users)")))
    if "lee" in verdicts:  # the comparison with the live tables (or with none)
        rows.append((f"  vs {summary['lee_reference']}" if summary.get("lee_reference")
                     else "  verdict", verdicts["lee"]))
    rows += [("  reason", r) for r in summary.get("lee_reasons", [])]
    rows.append(("representations", f"{'published' if summary['published'] else 'held'} "
                 f"(live version {summary['live_representations_version']})"))
    if summary.get("store_rows"):
        rows.append(("store", f"{summary['store_url']} {summary['store_rows']}"))
    if summary.get("downstream_blessed") is not None:
        rows += [
            ("downstream AUC / GAUC", f"{summary['downstream_auc']} / "
             f"{summary['downstream_gauc']} (baseline without representations "
             f"{summary['downstream_baseline_auc']} / {summary['downstream_baseline_gauc']}; "
             f"last blessed ranker {summary['downstream_last_blessed_auc']}; "
             f"cold-start AUC {summary['downstream_auc_cold_start']}; "
             f"{summary['downstream_eval_examples']} eval ad rows)"),
            ("  vs none", verdicts.get("downstream_vs_none", "not compared")),
            ("  vs last blessed", verdicts.get(
                "downstream_vs_last_blessed", "no ranker blessed before: nothing live to compare")),
            ("downstream blessed", f"{summary['downstream_blessed']} / pushed "
             f"{summary['downstream_pushed']} {summary['downstream_pushed_path'] or ''}"),
        ]
        rows += [("  reason", r) for r in summary.get("downstream_blessing_reasons", [])]
    if summary.get("online_requests"):
        rows.append(("online loop", f"{summary['online_requests']} next-day requests in "
                     f"batches of 32 through the in-process server (version "
                     f"{summary['online_model_version']}), p50 {summary['online_batch_p50_ms']} "
                     "ms per batch; store updated"))
    if summary.get("online_ad_requests") is not None:
        rows.append(("online downstream AUC", f"{summary['online_downstream_auc']} with the "
                     f"served ranker vs {summary['online_baseline_auc']} without "
                     f"representations, on {summary['online_ad_requests']} ad requests "
                     f"({summary['online_ad_clicks']} clicks)"))
    if summary.get("model_config_file"):
        rows.append(("model config", summary["model_config_file"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def metadata_file(pipeline_root: str) -> str:
    """The SQLite ML Metadata file the local runner uses for `pipeline_root`."""
    return os.path.join(pipeline_root, "metadata.sqlite")
