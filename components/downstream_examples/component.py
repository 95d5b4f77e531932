"""TFX component: DownstreamExamples, the downstream models' training and evaluation rows.

The pushed upstream is replayed over every example in time order (`trainer.downstream.replay`,
the offline twin of the online loop of Fig. 4), and each ad row of the downstream window gets
UR(u), IR(i), CR(u), CR(i) as the store held them strictly before the row
(`trainer.downstream.point_in_time`), written as the downstream ranker's serving request
(`trainer.downstream.requests.with_representations`: float lists with their int64
`<name>_found`), plus `item_cold_start` (1 when the item has no row in the downstream training
window) for the evaluation's cold-start slice. Output: an `Examples` artifact with

    Split-train/   the ad rows of the last `train_days` before the eval split
    Split-eval/    the ad rows of the eval split (which the upstream did not train on)

The representations of the training rows come from an upstream that trained on those rows, so
a ranker may trust them more than it should; the eval split, which neither model saw, is the
honest test. Nothing runs when no upstream was pushed (`skipped` = 1).

The replay runs in this process (about 40 s for 200k examples on two cores); at larger sizes
it belongs in Beam, as the extractor does.
"""

import glob
import os

import numpy as np
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

from components.representation_extractor.component import pushed_model_dir, split_patterns
from trainer import features as F
from trainer import signatures as S
from trainer.downstream import point_in_time as P
from trainer.downstream import replay as R
from trainer.downstream.requests import with_representations
from trainer.representations.ema import DEFAULT_HALF_LIFE_SECONDS

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

ITEM_COLD_START = "item_cold_start"
FEATURES = S.REPRESENTATION_FEATURES[:4]  # UR, IR, CR(u), CR(i)
SPLITS = ("train", "eval")
FILE_NAME = "data.tfrecord.gz"


def _records(files: list[str]) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _keys(records: list[bytes]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    names = (F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.DOMAIN)
    parsed = tf.io.parse_example(tf.constant(records, tf.string), F.feature_spec(names))
    return {name: parsed[name].numpy() for name in names}


def _with_int(examples: list[bytes], name: str, values: np.ndarray) -> list[bytes]:
    from tensorflow.core.example import example_pb2

    out = []
    for serialized, value in zip(examples, values, strict=True):
        example = example_pb2.Example.FromString(serialized)
        example.features.feature[name].int64_list.value.append(int(value))
        out.append(example.SerializeToString())
    return out


def build(split_files: dict[str, list[str]], model_dir: str, out_dirs: dict[str, str],
          train_days: float, half_life_seconds: float) -> dict[str, int]:
    """Writes the downstream splits (module doc) from the upstream's `train` and `eval` split
    files; returns the rows written per split."""
    import tensorflow as tf

    records = {split: _records(files) for split, files in split_files.items()}
    events = R.run_upstream(R.saved_model_fn(model_dir), records["train"] + records["eval"])
    source = R.histories(events, half_life_seconds)
    eval_start = int(_keys(records["eval"])[F.TIMESTAMP].min())
    window = {"train": (eval_start - int(round(train_days * F.DAY)), eval_start),
              "eval": (eval_start, np.iinfo(np.int64).max)}
    counts, train_items = {}, np.zeros(0, dtype=object)
    for split in SPLITS:
        keys = _keys(records[split])
        lo, hi = window[split]
        keep = ((keys[F.DOMAIN] == F.DOMAIN_AD) & (keys[F.TIMESTAMP] >= lo)
                & (keys[F.TIMESTAMP] < hi))
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(keys[F.TIMESTAMP][rows], kind="stable")]  # time order
        if not rows.size:
            raise ValueError(f"the downstream {split} window [{lo}, {hi}) holds no ad rows "
                             f"(train_days={train_days})")
        users, items = keys[F.USER_ID][rows], keys[F.ITEM_ID][rows]
        attached = P.attach(source, users, items, keys[F.TIMESTAMP][rows], FEATURES)
        examples = with_representations(
            [records[split][r] for r in rows],
            {name: (attached[name], attached[S.found_feature(name)] > 0) for name in FEATURES})
        if split == "train":
            train_items = items.astype(object)
        cold = ~np.isin(items.astype(object), train_items)
        examples = _with_int(examples, ITEM_COLD_START, cold.astype(np.int64))
        os.makedirs(out_dirs[split], exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(out_dirs[split], FILE_NAME), "GZIP") as writer:
            for example in examples:
                writer.write(example)
        counts[split] = len(examples)
    return counts


@tfx.dsl.components.component
def DownstreamExamples(  # noqa: N802 (TFX component naming)
    examples: _InputArtifact[standard_artifacts.Examples],
    pushed_model: _InputArtifact[standard_artifacts.PushedModel],
    downstream_examples: _OutputArtifact[standard_artifacts.Examples],
    train_days: _Parameter[float] = 3.0,
    half_life_seconds: _Parameter[float] = DEFAULT_HALF_LIFE_SECONDS,
) -> None:
    """The downstream window's ad rows with point-in-time representations (module doc)."""
    downstream_examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    pushed = pushed_model_dir(pushed_model)
    if pushed is None:
        downstream_examples.set_int_custom_property("skipped", 1)
        return
    model_dir, version = pushed
    split_files = {split: sorted(glob.glob(pattern)) for split, pattern in
                   zip(SPLITS, split_patterns(examples, ",".join(SPLITS)), strict=True)}
    out_dirs = {split: artifact_utils.get_split_uri([downstream_examples], split)
                for split in SPLITS}
    counts = build(split_files, model_dir, out_dirs, train_days, half_life_seconds)
    downstream_examples.set_int_custom_property("skipped", 0)
    downstream_examples.set_int_custom_property("upstream_version", int(version))
    for split, n in counts.items():
        downstream_examples.set_int_custom_property(f"{split}_rows", n)
