"""Distributed training on TensorFlow's own strategies, from the same trainer.

`TrainConfig.strategy` (`--strategy` for `python -m trainer.train`, `custom_config={"train":
{"strategy": ...}}` for the TFX Trainer) picks one of `STRATEGIES`:

* `default`: one process, one device (TensorFlow's default strategy).
* `mirrored`: `tf.distribute.MirroredStrategy`, every local GPU (one replica on a CPU-only host).
* `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`; every worker runs the same
  command and holds a full copy of the model; gradients are all-reduced each step, so each
  step's global batch is `batch_size` split across the replicas.
* `parameter_server`: `tf.distribute.ParameterServerStrategy`; the embedding tables (and every
  other variable of at least `TrainConfig.min_shard_bytes`) are sharded across the parameter
  servers (`MinSizePartitioner`, at most `TrainConfig.variable_shards` shards, 0 = one per
  server); workers run steps asynchronously, each on its own `batch_size` batch, dispatched by
  the coordinator (the `chief` task) through Keras `fit` with a `DatasetCreator`.

The cluster comes from `TF_CONFIG`, as TensorFlow defines it (`{"cluster": {"chief": [...],
"worker": [...], "ps": [...]}, "task": {"type": "worker", "index": 0}}`). Under
`parameter_server` the same command is started on every host: the `worker` and `ps` tasks start
a `tf.distribute.Server` and serve until they are killed (`serve_if_server_task`), the `chief`
trains. `in_process_cluster` starts such a cluster inside one process (for tests and trying it
out on one machine).

Whatever the strategy, the model is exported from a plain, unsharded copy restored from the
trained model's checkpoint (`unsharded_copy`), so the SavedModel is the same as a one-process
run's: same signatures, variables unpartitioned, servable by `serving/`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable

import tensorflow as tf

from trainer.config import STRATEGIES, ModelConfig, TrainConfig

# Tasks that serve variables or steps rather than run the trainer, under `parameter_server`.
SERVER_TASKS = ("worker", "ps")


class StrategyError(ValueError):
    """TF_CONFIG is missing or does not describe a cluster the chosen strategy can run on, or
    the configuration asks for something the strategy cannot train."""


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment variable (`{}` when unset)."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise StrategyError("TF_CONFIG must be a JSON object with a 'cluster' object")
    return config


def cluster_resolver(strategy: str) -> tf.distribute.cluster_resolver.ClusterResolver | None:
    """The cluster of `TF_CONFIG` for `strategy`, checked; None for the local strategies.

    Raises:
      StrategyError: naming what is missing: no TF_CONFIG, no `worker` or `ps` job for
        `parameter_server`, no `task`, or a task that is not in the cluster.
    """
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; strategies: {list(STRATEGIES)}")
    if strategy in ("default", "mirrored"):
        return None
    config = tf_config()
    cluster = config.get("cluster", {})
    if strategy == "multi_worker" and not cluster:
        return None  # one worker: MultiWorkerMirroredStrategy runs locally
    if not cluster:
        raise StrategyError(
            f"strategy {strategy!r} needs TF_CONFIG with a cluster (chief, worker and ps jobs); "
            "TF_CONFIG is unset")
    if strategy == "parameter_server":
        for job in ("worker", "ps"):
            if not cluster.get(job):
                raise StrategyError(f"strategy 'parameter_server' needs a {job!r} job in "
                                   f"TF_CONFIG's cluster; it has {sorted(cluster)}")
    task = config.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind is None:
        raise StrategyError("TF_CONFIG has a cluster but no 'task' (its type and index)")
    if kind not in cluster or not 0 <= int(index) < len(cluster[kind]):
        raise StrategyError(f"TF_CONFIG's task {kind}:{index} is not in its cluster "
                           f"({ {job: len(hosts) for job, hosts in cluster.items()} })")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _server_config(num_workers: int) -> tf.compat.v1.ConfigProto:
    # A worker whose inter-op pool is smaller than the number of concurrently running
    # functions can block forever (as TensorFlow's own in-process clusters note); hosts with
    # few cores default to as many threads as cores.
    config = tf.compat.v1.ConfigProto()
    if (os.cpu_count() or 1) < num_workers + 1:
        config.inter_op_parallelism_threads = num_workers + 1
    return config


def serve_if_server_task(strategy: str,
                         resolver: tf.distribute.cluster_resolver.ClusterResolver | None) -> bool:
    """Under `parameter_server`, a `worker` or `ps` task starts its `tf.distribute.Server` and
    serves until the process is killed (never returns); returns False for any other task (the
    `chief` coordinates the training)."""
    if strategy != "parameter_server" or resolver is None:
        return False
    if resolver.task_type not in SERVER_TASKS:
        return False
    spec = resolver.cluster_spec()
    server = tf.distribute.Server(
        spec, job_name=resolver.task_type, task_index=resolver.task_id,
        config=_server_config(len(spec.as_dict().get("worker", []))), protocol="grpc",
        start=True)
    print(f"serving as {resolver.task_type}:{resolver.task_id} of a parameter-server cluster "
          f"at {server.target}", flush=True)
    server.join()
    return True  # pragma: no cover (join returns only when the server is stopped)


def make_strategy(
    name: str,
    resolver: tf.distribute.cluster_resolver.ClusterResolver | None = None,
    *,
    variable_shards: int = 0,
    min_shard_bytes: int = 256 << 10,
) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` named `name` (one of `STRATEGIES`).

    `resolver` defaults to `cluster_resolver(name)` (`TF_CONFIG`). Under `parameter_server`,
    variables of at least `min_shard_bytes` are split into at most `variable_shards` shards
    (0: one per parameter server), each at least `min_shard_bytes`.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; strategies: {list(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if resolver is None:
        resolver = cluster_resolver(name)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if resolver is None:
        raise StrategyError("strategy 'parameter_server' needs a cluster (TF_CONFIG)")
    shards = variable_shards or resolver.cluster_spec().num_tasks("ps")
    if shards < 1 or min_shard_bytes < 1:
        raise StrategyError(f"variable_shards ({variable_shards}) and min_shard_bytes "
                           f"({min_shard_bytes}) must be positive")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=shards)
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def strategy_for(train_config: TrainConfig) -> tf.distribute.Strategy:
    """The strategy `train_config.strategy` names, on the cluster of `TF_CONFIG`. Under
    `parameter_server`, a `worker` or `ps` task serves here and never returns."""
    resolver = cluster_resolver(train_config.strategy)
    serve_if_server_task(train_config.strategy, resolver)
    return make_strategy(train_config.strategy, resolver,
                         variable_shards=train_config.variable_shards,
                         min_shard_bytes=train_config.min_shard_bytes)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: always, except the non-chief workers of
    `multi_worker` (the coordinator of `parameter_server` is the only one that runs this)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind == "worker" and index == 0 and not has_chief


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Which of `STRATEGIES` `strategy` is."""
    for name, cls in (("parameter_server", tf.distribute.ParameterServerStrategy),
                      ("multi_worker", tf.distribute.MultiWorkerMirroredStrategy),
                      ("mirrored", tf.distribute.MirroredStrategy)):
        if isinstance(strategy, cls):
            return name
    return "default"


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Under `multi_worker`, returns on each worker once every worker has reached it (a
    collective): the non-chief workers wait for the chief's export. A no-op otherwise."""
    if strategy_name(strategy) != "multi_worker" or strategy.num_replicas_in_sync < 2:
        return

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            "sum", tf.constant(1.0)))

    meet()


def sharded_variables(model: tf.Module) -> list:
    """The model's variables that are split across parameter servers (`ShardedVariable`s)."""
    from tensorflow.python.distribute import sharded_variable  # noqa: PLC0415

    found, seen = [], set()
    for layer in model.submodules:
        for value in vars(layer).values():
            candidates = value.values() if isinstance(value, dict) else [value]
            for v in candidates:
                if isinstance(v, sharded_variable.ShardedVariable) and id(v) not in seen:
                    seen.add(id(v))
                    found.append(v)
    return found


def in_process_cluster(num_workers: int = 2, num_ps: int = 2,
                       ports: list[int] | None = None
                       ) -> tf.distribute.cluster_resolver.SimpleClusterResolver:
    """Starts `num_workers` workers and `num_ps` parameter servers as `tf.distribute.Server`s
    in this process on localhost (free ports, or `ports`) and returns the resolver for a
    coordinator here. The servers live as long as the process."""
    if ports is None:
        import portpicker  # noqa: PLC0415

        ports = [portpicker.pick_unused_port() for _ in range(num_workers + num_ps)]
    if len(ports) != num_workers + num_ps:
        raise ValueError(f"need {num_workers + num_ps} ports, got {len(ports)}")
    spec = {"worker": [f"localhost:{p}" for p in ports[:num_workers]],
            "ps": [f"localhost:{p}" for p in ports[num_workers:]]}
    cluster = tf.train.ClusterSpec(spec)
    config = _server_config(num_workers)
    for job, hosts in spec.items():
        for index in range(len(hosts)):
            tf.distribute.Server(cluster, job_name=job, task_index=index, config=config,
                                 protocol="grpc", start=True)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")


def unsharded_copy(model: tf.keras.Model, build: callable, example_batch: dict) -> tf.keras.Model:
    """A copy of `model` built outside any strategy (`build()` makes it, called on
    `example_batch` to create its variables), with the trained values restored from a
    checkpoint of `model`: sharded tables come back whole, mirrored variables as one."""
    with tempfile.TemporaryDirectory(prefix="lfm4ads-unshard-") as tmp:
        path = tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt"))
        copy = build()
        copy(example_batch, training=False)
        status = tf.train.Checkpoint(model=copy).read(path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # optimizer slots and metric states are left behind
    return copy


def lost_task_message(error: Exception) -> str:
    """A one-line account of a cluster task lost mid-run (a `tf.errors.UnavailableError`)."""
    match = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error))
    task = f"{match.group(1)}:{match.group(2)}" if match else "a task"
    hint = (" (a parameter server: the variables it held are gone; start the run again)"
            if match and match.group(1) == "ps" else "")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if re.match(r"\w+Error: ", line)),
                 lines[0] if lines else type(error).__name__)
    return f"the cluster lost {task}{hint}: {cause}"


def check_supported(name: str, model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Raises StrategyError, naming the setting, for what the strategy `name` cannot train."""
    if name == "default":
        return
    if model_config.feature_path and train_config.feature_path_epochs:
        raise StrategyError(
            "the feature path's first stage (feature_path_epochs > 0) trains in one process; "
            f"with strategy {name!r} use feature_path_epochs=0 (trained jointly) or no "
            "feature path")
    if name == "parameter_server" and train_config.validation_days > 0:
        raise StrategyError("validation_days > 0 (early stopping) is not supported with the "
                         "parameter_server strategy; evaluate on the eval window instead")


def training_batches(make: Callable[[bool], tf.data.Dataset]) -> Callable[..., tf.data.Dataset]:
    """`batches(drop_remainder=False)` for `fit`: `make(drop_remainder)` called once for the
    dataset one process iterates (cached, shared by the feature path's stage and `fit`), and
    afresh for each worker of `parameter_server` (`drop_remainder=True`)."""
    cached: dict[str, tf.data.Dataset] = {}

    def batches(drop_remainder: bool = False) -> tf.data.Dataset:
        if drop_remainder:
            return make(True)
        if "batches" not in cached:
            cached["batches"] = make(False)
        return cached["batches"]

    return batches


def tensorboard_callback(log_dir: str) -> tf.keras.callbacks.TensorBoard:
    """Keras' TensorBoard callback at its cheapest: each epoch's loss and metrics as scalars
    in `<log_dir>/train` and `<log_dir>/validation` (`val_*`), no graph, no histograms, no
    profile. Works under every strategy of `STRATEGIES`. Under `parameter_server` the
    coordinator, the one process that runs `fit`, writes; under `multi_worker` give it to the
    chief only (`is_chief`; the callback runs no collective, so the workers need not agree),
    or Keras writes each other worker's summaries to a temporary directory inside `log_dir`
    and removes it when `fit` ends."""
    return tf.keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=0, write_graph=False,
                                          update_freq="epoch", profile_batch=0)


def fit(model: tf.keras.Model, strategy: tf.distribute.Strategy, batches, rows: int,
        train_config: TrainConfig, verbose: int, log_dir: str | None = None, **fit_args):
    """Keras `fit` of `model` (built and compiled in `strategy.scope()`) under `strategy`.

    `batches(drop_remainder)` makes the training data: a `tf.data.Dataset` of `batch_size`
    batches in a seeded shuffle order, the same in every process. Under `parameter_server`
    each worker builds it (a `DatasetCreator`), keeps every n-th batch and repeats; an epoch
    is `steps_per_epoch` steps (0: `rows / batch_size`). Under `multi_worker` every worker
    keeps its replica's part of each batch (auto-shard by data), so a step's global batch is
    `batch_size` rows however many workers there are.

    `log_dir`: TensorBoard summaries of each epoch there (`tensorboard_callback`, after the
    callbacks of `fit_args`); None writes none.
    """
    if log_dir is not None:
        fit_args["callbacks"] = [*fit_args.get("callbacks", []), tensorboard_callback(log_dir)]
    name = strategy_name(strategy)
    if name == "parameter_server":
        steps = train_config.steps_per_epoch or max(1, -(-rows // train_config.batch_size))

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            ds = batches(drop_remainder=True)
            return ds.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()

        return model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                         epochs=train_config.epochs, steps_per_epoch=steps, verbose=verbose,
                         **fit_args)
    ds = batches(drop_remainder=False)
    if name == "multi_worker":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        ds = ds.with_options(options)
    return model.fit(ds, epochs=train_config.epochs, verbose=verbose, **fit_args)
