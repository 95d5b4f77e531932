"""Small data and a small trained upstream shared by the downstream tests (made once)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from common.representations import tables
from pipelines.sources import synthetic
from tests.conftest import made_once
from trainer import data_input
from trainer.config import ModelConfig, TrainConfig
from trainer.downstream import data as ranker_data
from trainer.downstream import replay
from trainer.export import export_saved_model
from trainer.train import fit_and_evaluate

DAY = 86_400
TINY = ModelConfig(user_id_buckets=2000, item_id_buckets=2000, mlp_hidden=(32, 16),
                   tower_hidden=(16,), representation_dim=8, embedding_dim=4)


@dataclasses.dataclass
class Upstream:
    data: str
    export: str  # the version directory
    config: ModelConfig
    source: object  # HistorySource over every record
    # "train" (day 4), "validation" (day 5), "test" (day 6): ad rows with the representation
    # features and the upstream's ad prediction of each row
    rows: dict
    windows: dict


@pytest.fixture(scope="session")
def downstream_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("downstream-data")
    synthetic.generate(str(out), examples=6000, seed=5, days=6, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def upstream(downstream_data, tmp_path_factory) -> Upstream:
    """An upstream trained on days 1-2 (evaluated on day 3), replayed over all six days (the
    export is made once for all test processes)."""
    files = data_input.list_files(downstream_data)

    def train(directory):
        model, _, warmup = fit_and_evaluate(downstream_data, TINY,
                                            TrainConfig(epochs=1, skip_last_days=3), verbose=0)
        export_saved_model(model, str(directory / "lfm4ads"), warmup, version=5)

    export = str(made_once(tmp_path_factory, "upstream-tiny-days1-2-v5", train) / "lfm4ads"
                 / "5")
    source = replay.histories(replay.run_upstream(replay.saved_model_fn(export),
                                        data_input.records_in_window(files)), 3600.0)
    lo, hi = data_input.time_range(files)
    windows = {"train": (lo + 3 * DAY, lo + 4 * DAY), "validation": (lo + 4 * DAY, lo + 5 * DAY),
               "test": (lo + 5 * DAY, hi + 1)}
    from trainer.downstream.point_in_time import FEATURE_TABLES

    ad_prediction = ranker_data.saved_model_ad_prediction_fn(
        export
    )  # `distill`: the row's own p_up
    rows = {name: ranker_data.with_upstream_prediction(
        ranker_data.with_representations(ranker_data.read_rows(files, *w), source,
                                         tuple(FEATURE_TABLES)),
        ad_prediction) for name, w in windows.items()}
    return Upstream(downstream_data, export, TINY, source, rows, windows)


def publish(source, directory, version: int, before: int) -> str:
    """Writes the four tables as they stood just before `before` (one row per key) in the
    published layout `<directory>/<version>/<table>/part-...`; returns the version directory."""
    root = f"{directory}/{version}"
    for table in tables.TABLES:
        history = source.histories[table]
        keep = history.updated_at < before
        last = type(history)(history.keys[keep], history.updated_at[keep],
                             history.vectors[keep]).last()
        tf.io.gfile.makedirs(f"{root}/{table}")
        with tf.io.TFRecordWriter(f"{root}/{table}/part-00000-of-00001{tables.FILE_SUFFIX}",
                                  "GZIP") as writer:
            for key, t, vector in zip(last.keys, last.updated_at, last.vectors, strict=True):
                writer.write(tables.encode_row(key, np.asarray(vector), int(t), version))
    return root
