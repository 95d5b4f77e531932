"""Writing a SavedModel in TF Serving's layout: `<export_dir>/<integer version>/` with
`saved_model.pb`, `variables/` and `assets.extra/tf_serving_warmup_requests`.

The version directory is written under a temporary name and renamed when complete, so a server
polling `export_dir` never sees a half-written version. Every exported model of the project
(the upstream, the downstream ranker, standalone retrieval) goes through `save_versioned`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import tensorflow as tf

from common import signatures

SAVED_MODEL_FILE = "saved_model.pb"


def resolve_export_dir(export_dir: str) -> str:
    """The SavedModel directory of `export_dir`: itself when it holds `saved_model.pb`, else
    (a model base path in TF Serving layout, `<base>/<integer version>/`) its highest version.

    Raises:
      FileNotFoundError: naming `export_dir`, when it is missing, holds no SavedModel and no
        integer version, or its highest version has no `saved_model.pb`.
    """
    if not tf.io.gfile.isdir(export_dir):
        raise FileNotFoundError(f"export {export_dir!r} does not exist or is not a "
                                "directory")
    if tf.io.gfile.exists(os.path.join(export_dir, SAVED_MODEL_FILE)):
        return export_dir
    versions = [d.strip("/") for d in tf.io.gfile.listdir(export_dir) if d.strip("/").isdigit()]
    if not versions:
        raise FileNotFoundError(
            f"export {export_dir!r} holds neither {SAVED_MODEL_FILE} nor an integer "
            "version directory (TF Serving layout: <base>/<version>/saved_model.pb)")
    path = os.path.join(export_dir, max(versions, key=int))
    if not tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"the highest version of export {export_dir!r}, "
                                f"{path!r}, has no {SAVED_MODEL_FILE}")
    return path


def version_of(path: str) -> int | None:
    """The integer version of a version directory (its name), None if its name is not one."""
    name = os.path.basename(path.rstrip("/"))
    return int(name) if name.isdigit() else None


def next_version(export_dir: str) -> int:
    """A version greater than every integer version already in `export_dir` (unix seconds)."""
    existing = [int(d) for d in tf.io.gfile.listdir(export_dir) if d.strip("/").isdigit()] if (
        tf.io.gfile.exists(export_dir)
    ) else []
    return max([int(time.time())] + [v + 1 for v in existing])


def write_warmup_requests(path: str, serialized_examples: Sequence[bytes],
                          signature_names: Sequence[str]) -> None:
    """TF Serving warmup file: one `PredictionLog` per signature over `serialized_examples`."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    tensor = tf.make_tensor_proto(list(serialized_examples), dtype=tf.string)
    with tf.io.TFRecordWriter(path) as writer:
        for name in signature_names:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=name),
                inputs={signatures.INPUT_KEY: tensor},
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def save_versioned(module: tf.Module, functions: Mapping[str, tf.types.experimental.Function],
                   export_dir: str, warmup_examples: Sequence[bytes],
                   version: int | None = None, versioned: bool = True,
                   warmup_signatures: Sequence[str] | None = None,
                   extra_assets: Mapping[str, str] | None = None,
                   options: tf.saved_model.SaveOptions | None = None) -> str:
    """Saves `module` with the signature `functions` as `<export_dir>/<version>/`; returns it.

    `warmup_examples`: serialized tf.Examples every warmup signature (default: all of
    `functions`) is called on. `extra_assets`: file name -> text written to `assets.extra/`.
    `options`: `tf.saved_model.SaveOptions` (e.g. ScaNN's op namespace).
    `versioned=False` writes into `export_dir` itself (TFX Trainer's `serving_model_dir`;
    the Pusher versions it).
    """
    if not warmup_examples:
        raise ValueError("warmup_examples is empty: give a few serialized tf.Examples")
    if versioned:
        version = next_version(export_dir) if version is None else int(version)
        final = os.path.join(export_dir, str(version))
        tmp = os.path.join(export_dir, f".tmp-{version}")
    else:
        final = export_dir.rstrip("/")
        tmp = final + ".tmp"
    if tf.io.gfile.exists(final) and (versioned or tf.io.gfile.listdir(final)):
        what = f"version {version}" if versioned else "a SavedModel"
        raise FileExistsError(f"{what} already exists at {final}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures=dict(functions), options=options)
    extra = os.path.join(tmp, "assets.extra")
    tf.io.gfile.makedirs(extra)
    write_warmup_requests(os.path.join(extra, signatures.WARMUP_FILE), list(warmup_examples),
                          list(warmup_signatures or functions))
    for name, text in (extra_assets or {}).items():
        with tf.io.gfile.GFile(os.path.join(extra, name), "w") as f:
            f.write(text)
    if tf.io.gfile.exists(final):  # an empty directory made for us (TFX serving_model_dir)
        tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    return final
