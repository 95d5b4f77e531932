"""TFX component: DownstreamExamples, the downstream models' training and evaluation rows.

The pushed upstream is replayed over every example in time order (`trainer.downstream.replay`,
the offline twin of the online loop of Fig. 4), and each ad row of the downstream window gets
UR(u), IR(i), CR(u), CR(i) as the store held them strictly before the row
(`trainer.downstream.point_in_time`), written as the downstream ranker's serving request
(`common.downstream_requests.with_representations`: float lists with their int64
`<name>_found`), plus `item_cold_start` (1 when the item has no row in the downstream training
window) for the evaluation's cold-start slice. Output: an `Examples` artifact with

    Split-train/   the ad rows of the last `train_days` before the eval split
    Split-eval/    the ad rows of the eval split (which the upstream did not train on)

CR(u) and CR(i) fold the CR(u,i) of the requests `cr_domains` selects
(`common.representations.cr_folding`: `ad`, the default, as paper Sec. 4.3.1, or `all`), as
the aggregator and the online loop do; UR and IR take every request. The setting is recorded
on the output as the custom property `cr_domains`.

The representations of the training rows come from an upstream that trained on those rows, so
a ranker may trust them more than it should; the eval split, which neither model saw, is the
honest test. Nothing runs when no upstream was pushed (`skipped` = 1).

The replay runs in this process in bounded memory: the upstream's events are spilled to local
files by key bucket and the histories are built one bucket at a time (`build_from`).
"""

import glob
import os
import pickle
import tempfile

import numpy as np
from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

from common import features, signatures
from common.downstream_requests import with_representations
from common.representations import cr_folding, tables
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS
from components.key_buckets import key_buckets
from components.representation_extractor.component import pushed_model_dir, split_patterns
from trainer.downstream import point_in_time, replay

_OutputArtifact = tfx.dsl.components.OutputArtifact
_InputArtifact = tfx.dsl.components.InputArtifact
_Parameter = tfx.dsl.components.Parameter

ITEM_COLD_START = "item_cold_start"
FEATURES = signatures.REPRESENTATION_FEATURES[:4]  # UR, IR, CR(u), CR(i)
SPLITS = ("train", "eval")
FILE_NAME = "data.tfrecord.gz"


NUM_BUCKETS = 32  # key buckets of the spilled events: a bucket's events are held at a time


def _dataset(files: list[str]):
    import tensorflow as tf

    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def _eval_start(files: list[str], batch_size: int) -> int:
    """The earliest timestamp of the eval split (the downstream windows' boundary)."""
    import tensorflow as tf

    spec = features.feature_spec((features.TIMESTAMP,))
    first = None
    for batch in _dataset(files).batch(batch_size):
        t = int(tf.io.parse_example(batch, spec)[features.TIMESTAMP].numpy().min())
        first = t if first is None else min(first, t)
    if first is None:
        raise ValueError(f"the eval split has no examples (files {files})")
    return first


def _with_int(examples: list[bytes], name: str, values: np.ndarray) -> list[bytes]:
    from tensorflow.core.example import example_pb2

    out = []
    for serialized, value in zip(examples, values, strict=True):
        example = example_pb2.Example.FromString(serialized)
        example.features.feature[name].int64_list.value.append(int(value))
        out.append(example.SerializeToString())
    return out


# Side -> (its key column, (feature, upstream output, history builder) of each table).
SIDES = {
    point_in_time.USER_SIDE: (features.USER_ID, ((signatures.UR_FEATURE, replay.UR, "latest"),
                              (signatures.CR_USER_FEATURE, replay.CR, "aggregated"))),
    point_in_time.ITEM_SIDE: (features.ITEM_ID, ((signatures.IR_FEATURE, replay.IR, "latest"),
                              (signatures.CR_ITEM_FEATURE, replay.CR, "aggregated"))),
}


class _Spill:
    """Each side's upstream events in `num_buckets` files by `crc32(key) % num_buckets`, in
    arrival order (so a key's events keep their order, which the tie rules rely on), with
    whether each one's CR(u,i) folds (`cr_domains`)."""

    def __init__(self, directory: str, num_buckets: int):
        self.num_buckets = num_buckets
        self.paths = {side: [os.path.join(directory, f"{side}-{b:04d}.pkl")
                             for b in range(num_buckets)] for side in SIDES}
        self.files = {side: [open(path, "wb") for path in paths]
                      for side, paths in self.paths.items()}

    def write(self, side: str, keys, timestamps, digests, fold, outputs: dict) -> None:
        bucket = key_buckets(keys, self.num_buckets)
        for b in np.unique(bucket):
            rows = bucket == b
            pickle.dump((keys[rows], timestamps[rows], digests[rows], fold[rows],
                         {name: v[rows] for name, v in outputs.items()}),
                        self.files[side][b], protocol=pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        for files in self.files.values():
            for f in files:
                f.close()

    def read(self, side: str, bucket: int):
        """(keys, timestamps, digests, fold bool [n], {output: [n, d]}) of one bucket, in
        arrival order."""
        parts = []
        with open(self.paths[side][bucket], "rb") as f:
            while True:
                try:
                    parts.append(pickle.load(f))
                except EOFError:
                    break
        if not parts:
            return None
        keys, t, digests, fold, outputs = zip(*parts, strict=True)
        return (np.concatenate(keys), np.concatenate(t), np.concatenate(digests),
                np.concatenate(fold),
                {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]})


def build(split_files: dict[str, list[str]], model_dir: str, out_dirs: dict[str, str],
          train_days: float, half_life_seconds: float,
          cr_domains: str = cr_folding.DEFAULT) -> dict[str, int]:
    """Writes the downstream splits (module doc) from the upstream's `train` and `eval` split
    files; returns the rows written per split."""
    return build_from(replay.saved_model_fn(model_dir), split_files, out_dirs, train_days,
                      half_life_seconds, cr_domains=cr_domains)


def build_from(fn: replay.RepresentationFn, split_files: dict[str, list[str]],
               out_dirs: dict[str, str], train_days: float, half_life_seconds: float,
               num_buckets: int = NUM_BUCKETS, batch_size: int = 4096,
               cr_domains: str = cr_folding.DEFAULT) -> dict[str, int]:
    """`build` with the upstream as a `replay.RepresentationFn`, in bounded memory.

    1. The upstream runs over every example (`train` then `eval`, in batches); each side's
       events (key, time, digest, whether its CR(u,i) folds under `cr_domains`, the
       latest-table output and CR(u,i)) are spilled to local files by key bucket, and the ad
       rows of the two windows are noted (keys and time only).
    2. Per side and bucket: the bucket's UR/IR and CR histories (`replay.histories`' rules,
       key by key, so the same states as over all events at once; CR from the events that
       fold only) answer the window rows whose key falls in it.
    3. Each split is read again; its window rows are written in time order with their
       representations.

    Memory holds one bucket's events, the window rows' keys, vectors and (in step 3) one
    split's window rows; the spill takes about the size of the events on local disk
    (`tempfile`'s directory: set `TMPDIR` to move it).
    """
    import tensorflow as tf

    cr_folding.check(cr_domains)
    eval_start = _eval_start(split_files["eval"], batch_size)
    window = {"train": (eval_start - int(round(train_days * features.DAY)), eval_start),
              "eval": (eval_start, np.iinfo(np.int64).max)}
    tagged = None
    for code, split in enumerate(SPLITS):
        ds = _dataset(split_files[split]).map(lambda r, c=code: (r, c))
        tagged = ds if tagged is None else tagged.concatenate(ds)
    names = (features.USER_ID, features.ITEM_ID, features.TIMESTAMP, features.DOMAIN)
    spec = features.feature_spec(names)
    rows: dict[str, dict[str, list]] = {s: {"index": [], features.USER_ID: [], features.ITEM_ID: [],
                                            features.TIMESTAMP: []} for s in SPLITS}
    seen = dict.fromkeys(SPLITS, 0)
    with tempfile.TemporaryDirectory(prefix="downstream_examples_") as directory:
        spill = _Spill(directory, num_buckets)
        try:
            for batch, codes in tagged.batch(batch_size).prefetch(1):
                ids = {k: v.numpy() for k, v in tf.io.parse_example(batch, spec).items()}
                users, items = (
                    ids[features.USER_ID].astype(object),
                    ids[features.ITEM_ID].astype(object),
                )
                t = ids[features.TIMESTAMP].astype(np.int64)
                digests = np.array([tables.sample_digest(r) for r in batch.numpy()], dtype=object)
                outputs = {k: np.asarray(v, np.float32) for k, v in fn(batch).items()}
                fold = cr_folding.fold_mask(ids[features.DOMAIN].astype(object), cr_domains)  # [n]
                for side, (_, side_tables) in SIDES.items():
                    keys = users if side == point_in_time.USER_SIDE else items
                    spill.write(side, keys, t, digests, fold,
                                {out: outputs[out] for _, out, _ in side_tables})
                codes = codes.numpy()
                for code, split in enumerate(SPLITS):
                    mine = np.flatnonzero(codes == code)
                    lo, hi = window[split]
                    keep = mine[(ids[features.DOMAIN][mine] == features.DOMAIN_AD) & (t[mine] >= lo)
                                & (t[mine] < hi)]
                    part = rows[split]
                    part["index"].append(keep - mine[0] + seen[split] if mine.size else keep)
                    part[features.USER_ID].append(users[keep])
                    part[features.ITEM_ID].append(items[keep])
                    part[features.TIMESTAMP].append(t[keep])
                    seen[split] += mine.size
        finally:
            spill.close()
        rows = {split: {k: np.concatenate(v) for k, v in part.items()}
                for split, part in rows.items()}
        for split in SPLITS:
            if not rows[split]["index"].size:
                lo, hi = window[split]
                raise ValueError(f"the downstream {split} window [{lo}, {hi}) holds no ad "
                                 f"rows (train_days={train_days})")
        attached = _lookup(spill, rows, half_life_seconds)
    counts, train_items = {}, set()
    for split in SPLITS:
        part = rows[split]
        order = np.argsort(part[features.TIMESTAMP], kind="stable")  # time order
        wanted = part["index"]  # ascending: the rows' positions in the split's files
        records = list(_select(split_files[split], wanted, batch_size))
        examples = with_representations(
            [records[o] for o in order],
            {name: (vectors[order], found[order])
             for name, (vectors, found) in attached[split].items()})
        items = part[features.ITEM_ID][order]
        if split == "train":
            train_items = set(items.tolist())
        # A set, not np.isin: on object arrays np.isin compares every pair (quadratic).
        cold = np.fromiter((item not in train_items for item in items.tolist()), bool,
                           items.shape[0])
        examples = _with_int(examples, ITEM_COLD_START, cold.astype(np.int64))
        os.makedirs(out_dirs[split], exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(out_dirs[split], FILE_NAME), "GZIP") as writer:
            for example in examples:
                writer.write(example)
        counts[split] = len(examples)
    return counts


def _select(files: list[str], wanted: np.ndarray, batch_size: int):
    """The records at positions `wanted` (ascending) of `files`, in that order, read
    `batch_size` records at a time."""
    wanted = np.asarray(wanted, np.int64)
    start, w = 0, 0  # the batch's first position; the next wanted row's index in `wanted`
    for batch in _dataset(files).batch(batch_size):
        if w == wanted.size:
            return
        records = batch.numpy()  # [n] bytes
        end = start + records.shape[0]
        hi = int(np.searchsorted(wanted, end))  # wanted[w:hi] fall in [start, end)
        for position in wanted[w:hi].tolist():
            yield records[position - start]
        w, start = hi, end
    if w < wanted.size:
        raise ValueError(f"{files} changed while being read: row {int(wanted[w])} is missing")


def _lookup(spill: _Spill, rows: dict, half_life_seconds: float) -> dict:
    """{split: {feature: (vectors [n, d], found bool [n])}} for the window rows, bucket by
    bucket (`build_from` step 2)."""
    out: dict[str, dict] = {split: {} for split in rows}
    for side, (key_name, side_tables) in SIDES.items():
        buckets = {split: key_buckets(part[key_name], spill.num_buckets)
                   for split, part in rows.items()}
        for b in range(spill.num_buckets):
            events = spill.read(side, b)
            if events is None:
                continue
            keys, t, digests, fold, outputs = events
            histories = {}
            for name, output, kind in side_tables:
                if kind == "latest":
                    histories[name] = point_in_time.RepresentationHistory.latest(
                        keys, t, outputs[output], digests
                    )
                else:  # CR: the events that fold only (`cr_domains`)
                    histories[name] = point_in_time.RepresentationHistory.aggregated(
                        keys[fold], t[fold], outputs[output][fold], half_life_seconds)
            del events, outputs
            for split, part in rows.items():
                mine = np.flatnonzero(buckets[split] == b)
                for name, history in histories.items():
                    found = history.as_of(part[key_name][mine], part[features.TIMESTAMP][mine])
                    if name not in out[split]:
                        n = part[key_name].shape[0]
                        out[split][name] = (np.zeros((n, history.dim), np.float32),
                                            np.zeros(n, dtype=bool))
                    out[split][name][0][mine] = found.vectors
                    out[split][name][1][mine] = found.found
    return out


@tfx.dsl.components.component
def DownstreamExamples(  # noqa: N802 (TFX component naming)
    examples: _InputArtifact[standard_artifacts.Examples],
    pushed_model: _InputArtifact[standard_artifacts.PushedModel],
    downstream_examples: _OutputArtifact[standard_artifacts.Examples],
    train_days: _Parameter[float] = 3.0,
    half_life_seconds: _Parameter[float] = DEFAULT_HALF_LIFE_SECONDS,
    cr_domains: _Parameter[str] = cr_folding.DEFAULT,
) -> None:
    """The downstream window's ad rows with point-in-time representations (module doc)."""
    cr_folding.check(cr_domains)
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
    counts = build(split_files, model_dir, out_dirs, train_days, half_life_seconds, cr_domains)
    downstream_examples.set_int_custom_property("skipped", 0)
    downstream_examples.set_string_custom_property("cr_domains", cr_domains)
    downstream_examples.set_int_custom_property("upstream_version", int(version))
    for split, n in counts.items():
        downstream_examples.set_int_custom_property(f"{split}_rows", n)
