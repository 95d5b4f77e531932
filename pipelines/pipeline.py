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

Every path and threshold is a field of one frozen `pipelines.pipeline_config.PipelineConfig`
(`create_pipeline(config, metadata_connection_config=..., beam_pipeline_args=...)`), whose
defaults are `pipelines.configs`'.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from common import signatures
from common.representations import cr_folding
from common.representations.statistics import GuardThresholds
from components.blessing_gate import BlessingGate
from components.cr_aggregation.component import CrossRepresentationAggregator
from components.downstream_examples.component import ITEM_COLD_START as DOWNSTREAM_COLD_START
from components.downstream_examples.component import DownstreamExamples
from components.lee.component import LightweightEmbeddingEvaluator
from components.representation_extractor.component import RepresentationExtractor
from components.representation_guard.component import RepresentationGuard
from pipelines import configs
from pipelines.example_gen import time_split_example_gen
from pipelines.pipeline_config import PipelineConfig, VertexTraining, changed_fields
from pipelines.validation_gate import ValidationGate
from trainer.downstream.config import DownstreamTrainConfig
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
            signature_name=signatures.SERVING_DEFAULT,
            label_keys={signatures.AD_PREDICTION: "label", signatures.CONTENT_PREDICTION: "label"},
            preprocessing_function_names=[signatures.TRANSFORM_FEATURES],
        )],
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=["domain"]),
            tfma.SlicingSpec(feature_keys=["domain", "scenario"]),
            tfma.SlicingSpec(feature_keys=["domain", ITEM_COLD_START]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(
                output_names=[signatures.AD_PREDICTION],
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
                output_names=[signatures.CONTENT_PREDICTION],
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
        model_specs=[tfma.ModelSpec(signature_name=signatures.SERVING_DEFAULT, label_key="label",
                                    prediction_key=signatures.DOWNSTREAM_PREDICTION)],
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
                          max_drop: float, cr_domains: str = cr_folding.DEFAULT) -> list:
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
    VertexTraining(project, region, image, strategy, workers, parameter_servers,
                   machine_type)  # ValueError for a cluster the strategy cannot use

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
    config: PipelineConfig | str | None = None,
    *args: str,
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
    **fields,
) -> tfx.dsl.Pipeline:
    """The whole pipeline of `config` (`pipelines.pipeline_config.PipelineConfig`: what each
    field does), its ML Metadata at `metadata_connection_config` (None: the orchestrator's),
    its Beam components run with `beam_pipeline_args` (default:
    `configs.beam_pipeline_args()`).

    The config's fields may also be given as arguments, as `create_pipeline` took them before
    the config (`create_pipeline(pipeline_name, pipeline_root, data_root, serving_root,
    preset="paper", model_overrides={...}, train_overrides={...}, ...)`; see
    `PipelineConfig.from_arguments`), or over a config (`create_pipeline(config,
    eval_days=3)`).
    """
    config = PipelineConfig.from_arguments(*(() if config is None else (config,)), *args,
                                           **fields)
    serving_root, cr_domains = config.serving_root, config.cr_domains
    example_gen = time_split_example_gen(config.data_root, config.eval_days)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    curated_schema = tfx.components.ImportSchemaGen(schema_file=config.schema_file).with_id(
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
    trainer_config = config.trainer_custom_config()
    trainer_class = tfx.components.Trainer
    if config.vertex is not None:  # the Trainer runs as a Vertex AI custom job (its cluster)
        trainer_class = tfx.extensions.google_cloud_ai_platform.Trainer
        trainer_config.update(vertex_trainer_config(**dataclasses.asdict(config.vertex)))
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
        eval_config=eval_config(config.auc_threshold, config.auc_max_drop),
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(serving_root, config.model_name))),
    )
    extractor = RepresentationExtractor(
        examples=example_gen.outputs["examples"],
        pushed_model=pusher.outputs["pushed_model"],
    )
    aggregator = CrossRepresentationAggregator(
        representations=extractor.outputs["representations"],
        examples=example_gen.outputs["examples"],
        half_life_seconds=float(config.cr_half_life_seconds),
        point_in_time_splits=config.point_in_time_splits,
        cr_domains=cr_domains,
    )
    publish_root = config.publish_root or os.path.join(serving_root, "representations")
    store_url, lee_tolerance = config.store_url, config.lee_tolerance
    guard = RepresentationGuard(
        representations=extractor.outputs["representations"],
        cross_tables=aggregator.outputs["cross_tables"],
        publish_root=publish_root,
        thresholds_json=json.dumps(changed_fields(config.guard_thresholds, GuardThresholds())),
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
            config_json=json.dumps(dict(config.lee_config)),
        )
        representation_checks.append(lee)
        if config.downstream_mode is not None:
            representation_checks += downstream_components(
                example_gen, pusher, lee, serving_root, config.downstream_mode,
                config.downstream_model_name, config.downstream_train_days,
                changed_fields(config.downstream_train, DownstreamTrainConfig()),
                config.downstream_max_drop, cr_domains)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[
            example_gen, statistics_gen, schema_gen, curated_schema, example_validator, gate,
            transform, trainer, baseline, evaluator, pusher, extractor, aggregator,
            *representation_checks,
        ],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or configs.beam_pipeline_args()),
    )
