"""Parameter-server training on an in-process cluster, run in its own process by
`test_distribute.py` (a cluster connection is process-wide state, kept out of the test process).

    python -m tests.trainer.ps_in_process DATA EXPORT_DIR

Starts 2 workers and 2 parameter servers in this process on free localhost ports, trains the
upstream model under `ParameterServerStrategy` with its tables sharded, exports it, and prints
one JSON line: the trainer's results, the mean training loss of the trained model and of the
same model untrained, and a checkpoint of a sharded model restored with other shard counts.
"""

from common import legacy_keras  # noqa: F401

# isort: split
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from trainer import data_input, distribute, train
from trainer.config import ModelConfig, TrainConfig
from trainer.export import export_saved_model
from trainer.model import LFM4AdsModel

SMALL = dict(user_id_buckets=500, item_id_buckets=500, mlp_hidden=(32, 16), tower_hidden=(16,),
             representation_dim=8, embedding_dim=4)
MIN_SHARD_BYTES = 1024  # small tables still split in two


def mean_loss(model: LFM4AdsModel, dataset: tf.data.Dataset) -> float:
    losses = [float(model.compute_loss(batch)) for batch in dataset]
    return float(np.mean(losses))


def reshard(resolver, batch) -> dict:
    """A sharded model's checkpoint, restored under 3 shards and with none."""
    def build(strategy):
        with strategy.scope():
            model = LFM4AdsModel(ModelConfig(**SMALL))
            model(batch)
        return model

    two = build(distribute.make_strategy("parameter_server", resolver,
                                         min_shard_bytes=MIN_SHARD_BYTES))
    rng = np.random.default_rng(0)
    for table in two.embeddings.tables.values():
        table.assign(rng.normal(size=table.shape).astype("float32"))
    three = build(tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(3)))
    one = LFM4AdsModel(ModelConfig(**SMALL))
    one(batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = tf.train.Checkpoint(model=two).write(os.path.join(tmp, "ckpt"))
        for model in (three, one):
            tf.train.Checkpoint(model=model).read(path).assert_existing_objects_matched()
    out = {}
    for name, table in two.embeddings.tables.items():
        value = tf.convert_to_tensor(table).numpy()
        out[name] = {
            "shards": [len(getattr(m.embeddings.tables[name], "variables", [None]))
                       for m in (two, three, one)],
            "equal": [bool(np.array_equal(value, tf.convert_to_tensor(
                m.embeddings.tables[name]).numpy())) for m in (three, one)],
        }
    return out


def main(data: str, export_dir: str) -> None:
    resolver = distribute.in_process_cluster(num_workers=2, num_ps=2)
    strategy = distribute.make_strategy("parameter_server", resolver,
                                        min_shard_bytes=MIN_SHARD_BYTES)
    model_config = ModelConfig(**SMALL)
    train_config = TrainConfig(epochs=2, batch_size=64, steps_per_epoch=12, learning_rate=5e-3)
    model, results, warmup = train.fit_and_evaluate(data, model_config, train_config, verbose=2,
                                                    strategy=strategy)
    results["export_path"] = export_saved_model(model, export_dir, warmup_examples=warmup)
    files = data_input.list_files(data)
    batches = data_input.make_dataset(files, 256, end=results["train_window"][1])
    tf.keras.utils.set_random_seed(train_config.seed)
    untrained = LFM4AdsModel(model_config, train_config, preprocessor=model.preprocessor)
    results["trained_loss"] = mean_loss(model, batches)
    results["untrained_loss"] = mean_loss(untrained, batches)
    results["reshard"] = reshard(resolver, next(iter(batches)))
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
