"""ExampleValidator + ValidationGate stop the run on data that breaks the curated schema."""

import os

import pytest
import tensorflow as tf

from pipelines import local_runner
from pipelines.sources import synthetic
from pipelines.summary import metadata_file, run_summary


@pytest.mark.slow
def test_anomalous_data_stops_the_run_before_transform(tmp_path):
    good = tmp_path / "good"
    synthetic.generate(str(good), examples=400, seed=5, days=3, progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    records = list(tf.data.TFRecordDataset(
        sorted(str(p) for p in good.glob("*.tfrecord.gz")), "GZIP").as_numpy_iterator())
    with tf.io.TFRecordWriter(str(bad / "data-00000-of-00001.tfrecord.gz"), "GZIP") as w:
        for i, record in enumerate(records):
            example = tf.train.Example.FromString(record)
            if i % 50 == 0:  # a domain outside {content, ad}
                example.features.feature["domain"].bytes_list.value[:] = [b"promo"]
            w.write(example.SerializeToString())
    root = tmp_path / "root"
    with pytest.raises(RuntimeError, match="domain"):
        local_runner.run(str(bad), str(root), str(tmp_path / "serving"))
    summary = run_summary(metadata_file(str(root)), "lfm4ads")
    assert "Transform" not in summary["component_seconds"]
    assert summary["pushed_version"] is None
    assert not os.path.exists(tmp_path / "serving")
