"""The LFM4Ads TFX pipeline (paper Sec. 3.2-3.3, 4.3): one `create_pipeline(...)` for every runner.

    ExampleGen (time split) -> StatisticsGen -> SchemaGen (inferred, for reference)
                                  |            ImportSchemaGen (curated schema in the repo)
                                  +---------> ExampleValidator -> ValidationGate (stops on anomaly)
    Transform (TFT) -> Trainer (TFRS model, run_fn) -> Evaluator (TFMA, vs last blessed) -> Pusher
    Pusher -> RepresentationExtractor -> CrossRepresentationAggregator -> RepresentationGuard
           -> LightweightEmbeddingEvaluator (publishes the tables a proxy ranker finds useful)
    (when the tables went live) DownstreamExamples (ad rows + point-in-time UR, IR, CR(u), CR(i))
           -> Trainer[lfm4ads ranker], Trainer[none baseline]
           -> Evaluator (TFMA metrics vs none), BlessingGate (paired comparisons with the none
              ranker and the last blessed one) -> Pusher

Every path, threshold and Beam argument is a parameter; `pipelines.configs` has the defaults.
"""

from __future__ import annotations

import json
import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from components.blessing_gate import BlessingGate
from components.cr_aggregation.component import CrossRepresentationAggregator
from components.downstream_examples.component import ITEM_COLD_START as DOWNSTREAM_COLD_START
from components.downstream_examples.component import DownstreamExamples
from components.lee.component import LightweightEmbeddingEvaluator
from components.representation_extractor.component import RepresentationExtractor
from components.representation_guard.component import RepresentationGuard
from pipelines import configs
from pipelines.example_gen import time_split_example_gen
from pipelines.validation_gate import ValidationGate
from trainer import signatures as S
from trainer.representations import cr_domains as CD
from trainer.transform import ITEM_COLD_START


def eval_config(auc_threshold: float, max_drop: float) -> tfma.EvalConfig:
    """TFMA config: AUC and GAUC per domain, slices by domain, scenario and cold-start items.

    The ad AUC on the `domain: ad` slice blesses the model: at least `auc_threshold`, and at
    most `max_drop` below the baseline (the last blessed model) when there is one.
    """
    ad_slice = tfma.SlicingSpec(feature_values={"domain": "ad"})
    blessing = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": auc_threshold}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_drop},
        ),
    )
    gauc = tfma.MetricConfig(class_name="GAUC", module="components.tfma_metrics",
                             config=json.dumps({"user_key": "user_id"}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=S.SERVING_DEFAULT,
            label_keys={S.AD_PREDICTION: "label", S.CONTENT_PREDICTION: "label"},
            preprocessing_function_names=[S.TRANSFORM_FEATURES],
        )],
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=["domain"]),
            tfma.SlicingSpec(feature_keys=["domain", "scenario"]),
            tfma.SlicingSpec(feature_keys=["domain", ITEM_COLD_START]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(
                output_names=[S.AD_PREDICTION],
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(class_name="MeanLabel"),
                    tfma.MetricConfig(
                        class_name="AUC",
                        per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                            slicing_specs=[ad_slice], threshold=blessing)],
                    ),
                    gauc,
                ],
            ),
            tfma.MetricsSpec(
                output_names=[S.CONTENT_PREDICTION],
                metrics=[tfma.MetricConfig(class_name="MeanLabel"),
                         tfma.MetricConfig(class_name="AUC"), gauc],
            ),
        ],
    )


def downstream_eval_config() -> tfma.EvalConfig:
    """TFMA config of the downstream ranker: AUC and GAUC overall and on cold-start items,
    beside the baseline model's (the `none` ranker trained in the same run). No thresholds:
    the Evaluator reports, `BlessingGate` decides (on a paired bootstrap over the eval users,
    which TFMA's change thresholds on a point estimate cannot do)."""
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=S.SERVING_DEFAULT, label_key="label",
                                    prediction_key=S.DOWNSTREAM_PREDICTION)],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[DOWNSTREAM_COLD_START])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="AUC"),
            tfma.MetricConfig(class_name="GAUC", module="components.tfma_metrics",
                              config=json.dumps({"user_key": "user_id"})),
        ])],
    )


def downstream_components(example_gen, pusher, lee, serving_root: str, mode: str,
                          model_name: str, train_days: float, train_overrides: dict,
                          max_drop: float, cr_domains: str = CD.DEFAULT) -> list:
    """The downstream ranker in `mode`, trained with the `none` baseline, reported by TFMA
    beside it, compared by `BlessingGate` with it and with the last blessed ranker (`max_drop`:
    the gate's tolerance, how far below a baseline it must be shown to be to count as worse),
    pushed to `<serving_root>/<model_name>/` when the gate blesses it; run only when the new
    tables went live."""
    # Nodes created inside the Cond run only when it holds (TFX conditionals).
    published = lee.outputs["evaluation"].future()[0].custom_property("published") == 1
    with tfx.dsl.Cond(published):
        return _downstream_nodes(example_gen, pusher, serving_root, mode, model_name,
                                 train_days, train_overrides, max_drop, cr_domains)


def _downstream_nodes(example_gen, upstream_pusher, serving_root: str, mode: str,
                      model_name: str, train_days: float, train_overrides: dict,
                      max_drop: float, cr_domains: str) -> list:
    examples = DownstreamExamples(examples=example_gen.outputs["examples"],
                                  pushed_model=upstream_pusher.outputs["pushed_model"],
                                  train_days=float(train_days), cr_domains=cr_domains)
    trainers = {
        name: tfx.components.Trainer(
            run_fn=configs.DOWNSTREAM_RUN_FN,
            examples=examples.outputs["downstream_examples"],
            custom_config={"mode": ranker_mode, "train": dict(train_overrides)},
        ).with_id(component_id)
        for name, ranker_mode, component_id in (
            ("candidate", mode, "DownstreamTrainer"),
            ("baseline", "none", "DownstreamBaselineTrainer"))
    }
    last_blessed = latest_blessed("DownstreamTrainer", "DownstreamBlessingGate",
                                  "LatestBlessedRankerResolver")
    evaluator = tfx.components.Evaluator(
        examples=examples.outputs["downstream_examples"],
        model=trainers["candidate"].outputs["model"],
        baseline_model=trainers["baseline"].outputs["model"],
        example_splits=["eval"],
        eval_config=downstream_eval_config(),
    ).with_id("DownstreamEvaluator")
    gate = BlessingGate(model=trainers["candidate"].outputs["model"],
                        examples=examples.outputs["downstream_examples"],
                        baseline_model=trainers["baseline"].outputs["model"],
                        last_blessed_model=last_blessed.outputs["model"],
                        tolerance=float(max_drop)).with_id("DownstreamBlessingGate")
    pusher = tfx.components.Pusher(
        model=trainers["candidate"].outputs["model"],
        model_blessing=gate.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_root, model_name))),
    ).with_id("DownstreamPusher")
    return [examples, *trainers.values(), last_blessed, evaluator, gate, pusher]


def latest_blessed(trainer_id: str, blessing_id: str, resolver_id: str) -> tfx.dsl.Resolver:
    """The last model of `trainer_id` that `blessing_id` blessed (the pipeline has several
    trainers and evaluators: a resolver on the artifact types alone would mix them)."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model,
                              producer_component_id=trainer_id, output_key="model"),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing,
                                       producer_component_id=blessing_id,
                                       output_key="blessing"),
    ).with_id(resolver_id)


def vertex_trainer_config(project: str, region: str, image: str, strategy: str = "default",
                          workers: int = 1, parameter_servers: int = 0,
                          machine_type: str = "n1-standard-8") -> dict:
    """The Trainer's `custom_config` entries that run it as a Vertex AI custom job: pool 0 is
    the chief, pool 1 `workers - 1` more workers (`multi_worker`) or `workers` workers
    (`parameter_server`), pool 2 the parameter servers. Vertex sets each replica's TF_CONFIG;
    every replica runs `run_fn` from `image` (TFX sets the command)."""
    if strategy == "parameter_server" and (workers < 1 or parameter_servers < 1):
        raise ValueError("the parameter_server strategy needs workers >= 1 and "
                         f"parameter_servers >= 1, got {workers} and {parameter_servers}")
    if strategy != "parameter_server" and parameter_servers:
        raise ValueError(f"parameter_servers={parameter_servers} needs the parameter_server "
                         f"strategy, not {strategy!r}")
    if strategy in ("default", "mirrored") and workers != 1:
        raise ValueError(f"strategy {strategy!r} runs on one machine; workers={workers} needs "
                         "multi_worker or parameter_server")

    def pool(replicas: int) -> dict:
        return {"machine_spec": {"machine_type": machine_type}, "replica_count": replicas,
                "container_spec": {"image_uri": image}}

    pools = [pool(1)]
    if strategy == "multi_worker" and workers > 1:
        pools.append(pool(workers - 1))
    elif strategy == "parameter_server":
        pools += [pool(workers), pool(parameter_servers)]
    vertex = tfx.extensions.google_cloud_ai_platform
    return {vertex.ENABLE_VERTEX_KEY: True, vertex.VERTEX_REGION_KEY: region,
            vertex.TRAINING_ARGS_KEY: {"project": project,
                                       "job_spec": {"worker_pool_specs": pools}}}


def create_pipeline(
    pipeline_name: str = configs.PIPELINE_NAME,
    pipeline_root: str = configs.PIPELINE_ROOT,
    data_root: str = configs.DATA_ROOT,
    serving_root: str = configs.SERVING_ROOT,
    model_name: str = configs.MODEL_NAME,
    schema_file: str = configs.SCHEMA_FILE,
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
    eval_days: float = configs.EVAL_DAYS,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    preset: str = configs.PRESET,
    auc_threshold: float = configs.AUC_AD_THRESHOLD,
    auc_max_drop: float = configs.AUC_MAX_DROP,
    cr_half_life_seconds: float = configs.CR_HALF_LIFE_SECONDS,
    cr_domains: str = configs.CR_DOMAINS,
    point_in_time_splits: str = configs.POINT_IN_TIME_SPLITS,
    guard_thresholds: dict | None = None,
    lee_tolerance: float | None = configs.LEE_TOLERANCE,
    lee_config: dict | None = None,
    downstream_mode: str | None = configs.DOWNSTREAM_MODE,
    downstream_model_name: str = configs.DOWNSTREAM_MODEL_NAME,
    downstream_train_days: float = configs.DOWNSTREAM_TRAIN_DAYS,
    downstream_train_overrides: dict | None = None,
    downstream_max_drop: float = configs.DOWNSTREAM_MAX_DROP,
    publish_root: str | None = None,
    store_url: str = "",
    enable_cache: bool = False,
    vertex_training: dict | None = None,
) -> tfx.dsl.Pipeline:
    """The whole pipeline. Pushed models go to `<serving_root>/<model_name>/<version>`; the
    guarded representation tables to `publish_root` (default `<serving_root>/representations`)
    and, with `store_url` (`sqlite:///...` or `redis://...`), into the serving store. The
    Trainer starts from `preset` (`trainer.config.PRESETS`) with `model_overrides` and
    `train_overrides` (ModelConfig / TrainConfig fields) over it. The last `eval_days` of the
    data are the eval split: the test rows of every gate, so a longer window (or more traffic)
    resolves smaller differences. Tables the guard passes are published when the embedding
    evaluator's paired comparison allows it (`components.lee`: shown better than the live
    tables, or, with none live, not shown worse than no representations by more than
    `lee_tolerance`; `lee_config`: `components.lee.LeeConfig` fields); with
    `lee_tolerance=None` there is no evaluator and the guard publishes. When the tables went
    live, a downstream ranker in `downstream_mode` (None: none) is trained on the last
    `downstream_train_days` before the eval split with point-in-time representations, compared
    on the eval split with the `none` baseline and the last blessed ranker
    (`components.blessing_gate`: pushed unless worse than `none` by more than
    `downstream_max_drop`, and, when a ranker is live, only when shown better than it) and
    pushed to `<serving_root>/<downstream_model_name>/<version>`.
    CR(u), CR(i) fold the CR(u,i) of the requests `cr_domains` selects (`"ad"`, paper Sec.
    4.3.1, or `"all"`; `trainer.representations.cr_domains`), in the aggregator and in
    DownstreamExamples alike.
    """
    CD.check(cr_domains)
    example_gen = time_split_example_gen(data_root, eval_days)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    curated_schema = tfx.components.ImportSchemaGen(schema_file=schema_file).with_id(
        "CuratedSchema")
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=curated_schema.outputs["schema"])
    gate = ValidationGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=curated_schema.outputs["schema"],
        preprocessing_fn=configs.PREPROCESSING_FN,
    )
    transform.add_upstream_node(gate)
    trainer_config = {
        "preset": preset,
        "model": dict(configs.MODEL_OVERRIDES if model_overrides is None else model_overrides),
        "train": dict(configs.TRAIN_OVERRIDES if train_overrides is None else train_overrides),
    }
    trainer_class = tfx.components.Trainer
    if vertex_training is not None:  # the Trainer runs as a Vertex AI custom job (its cluster)
        trainer_class = tfx.extensions.google_cloud_ai_platform.Trainer
        trainer_config.update(vertex_trainer_config(**vertex_training))
    trainer = trainer_class(
        run_fn=configs.RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=curated_schema.outputs["schema"],
        custom_config=trainer_config,
    )
    baseline = latest_blessed("Trainer", "Evaluator", "LatestBlessedModelResolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        example_splits=["eval"],
        eval_config=eval_config(auc_threshold, auc_max_drop),
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_root, model_name))),
    )
    extractor = RepresentationExtractor(
        examples=example_gen.outputs["examples"],
        pushed_model=pusher.outputs["pushed_model"],
    )
    aggregator = CrossRepresentationAggregator(
        representations=extractor.outputs["representations"],
        examples=example_gen.outputs["examples"],
        half_life_seconds=float(cr_half_life_seconds),
        point_in_time_splits=point_in_time_splits,
        cr_domains=cr_domains,
    )
    publish_root = publish_root or os.path.join(serving_root, "representations")
    guard = RepresentationGuard(
        representations=extractor.outputs["representations"],
        cross_tables=aggregator.outputs["cross_tables"],
        publish_root=publish_root,
        thresholds_json=json.dumps(configs.GUARD_THRESHOLDS if guard_thresholds is None
                                   else guard_thresholds),
        store_url=store_url if lee_tolerance is None else "",
        publish_tables=int(lee_tolerance is None),
    )
    representation_checks = [guard]
    if lee_tolerance is not None:
        lee = LightweightEmbeddingEvaluator(
            examples=example_gen.outputs["examples"],
            representations=extractor.outputs["representations"],
            cross_tables=aggregator.outputs["cross_tables"],
            guard_result=guard.outputs["guard_result"],
            publish_root=publish_root,
            store_url=store_url,
            tolerance=float(lee_tolerance),
            config_json=json.dumps(configs.LEE_CONFIG if lee_config is None else lee_config),
        )
        representation_checks.append(lee)
        if downstream_mode is not None:
            representation_checks += downstream_components(
                example_gen, pusher, lee, serving_root, downstream_mode, downstream_model_name,
                downstream_train_days,
                configs.DOWNSTREAM_TRAIN_OVERRIDES if downstream_train_overrides is None
                else downstream_train_overrides, downstream_max_drop, cr_domains)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[
            example_gen, statistics_gen, schema_gen, curated_schema, example_validator, gate,
            transform, trainer, baseline, evaluator, pusher, extractor, aggregator,
            *representation_checks,
        ],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or configs.beam_pipeline_args()),
    )
