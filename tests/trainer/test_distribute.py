"""Distributed training (`trainer.distribute`): the strategies train and export on localhost.

Clusters run in their own processes (a cluster connection is process-wide TensorFlow state):
* an in-process cluster of 2 workers and 2 parameter servers (`ps_in_process.py`) trains with
  its tables sharded, and its export serves over gRPC;
* `python -m trainer.train --strategy parameter_server` started once per task with its
  `TF_CONFIG` (chief, 2 workers, 1 ps) finishes after a worker is killed mid-run;
* `--strategy multi_worker` on 2 worker processes gives the weights of one worker.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from common import signatures
from pipelines.sources import synthetic
from serving.client import EmbeddingClient
from serving.model_server import ModelServer
from trainer import data_input, distribute, train
from trainer.config import ModelConfig, TrainConfig
from trainer.model import LFM4AdsModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_FLAGS = ["--user_id_buckets=500", "--item_id_buckets=500", "--mlp_hidden=32,16",
               "--tower_hidden=16", "--representation_dim=8", "--embedding_dim=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("distribute_data")
    synthetic.generate(str(out), examples=1500, seed=5, days=3, progress=False)
    return str(out)


def _ports(count: int) -> list[int]:
    import portpicker

    return [portpicker.pick_unused_port() for _ in range(count)]


def _env(cluster: dict | None = None, task: tuple[str, int] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    if cluster is not None:
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": task[0], "index": task[1]}})
    return env


def _train(args: list[str], log, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.train", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _json_line(path: str) -> dict:
    return _json_line_of(open(path).read(), path)


def _json_line_of(text: str, where: str = "the output") -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in {where}:\n{text[-3000:]}"
    return json.loads(lines[-1])


def _saved_variables(export_base: str) -> dict[str, np.ndarray]:
    (path,) = glob.glob(os.path.join(export_base, "*", "saved_model.pb"))
    reader = tf.train.load_checkpoint(os.path.join(os.path.dirname(path), "variables",
                                                   "variables"))
    return {name: reader.get_tensor(name) for name, dtype
            in reader.get_variable_to_dtype_map().items() if dtype.is_floating}


# -- the cluster from TF_CONFIG, the choices, the refusals ----------------------------------
def _with_tf_config(monkeypatch, config) -> None:
    monkeypatch.setenv("TF_CONFIG", config if isinstance(config, str) else json.dumps(config))


def test_local_strategies_need_no_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_resolver("default") is None
    assert distribute.cluster_resolver("mirrored") is None
    assert distribute.cluster_resolver("multi_worker") is None  # one worker, locally
    assert distribute.strategy_name(tf.distribute.get_strategy()) == "default"
    assert distribute.is_chief(tf.distribute.get_strategy())


@pytest.mark.parametrize("config, message", [
    (None, "TF_CONFIG is unset"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ({"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "chief"}},
     "needs a 'ps' job"),
    ({"cluster": {"chief": ["h:1"], "ps": ["h:3"]}, "task": {"type": "chief"}},
     "needs a 'worker' job"),
    ({"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]}}, "no 'task'"),
    ({"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
      "task": {"type": "worker", "index": 4}}, "task worker:4 is not in its cluster"),
])
def test_parameter_server_refuses_a_cluster_it_cannot_run_on(monkeypatch, config, message):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        _with_tf_config(monkeypatch, config)
    with pytest.raises(distribute.StrategyError, match=message):
        distribute.cluster_resolver("parameter_server")


def test_a_chief_task_is_not_served(monkeypatch):
    _with_tf_config(monkeypatch, {"cluster": {"chief": ["h:1"], "worker": ["h:2"],
                                              "ps": ["h:3"]}, "task": {"type": "chief"}})
    resolver = distribute.cluster_resolver("parameter_server")
    assert resolver.task_type == "chief"
    assert distribute.serve_if_server_task("parameter_server", resolver) is False
    assert distribute.serve_if_server_task("multi_worker", resolver) is False


def test_config_refuses_unknown_strategies_and_negative_sizes():
    with pytest.raises(ValueError, match="unknown strategy 'horovod'.*parameter_server"):
        TrainConfig(strategy="horovod")
    with pytest.raises(ValueError, match="variable_shards must be >= 0"):
        TrainConfig(variable_shards=-1)
    with pytest.raises(ValueError, match="min_shard_bytes must be >= 1"):
        TrainConfig(min_shard_bytes=0)


def test_what_a_strategy_cannot_train_is_refused_by_name():
    path = ModelConfig(feature_path=True)
    distribute.check_supported("default", path, TrainConfig())
    distribute.check_supported("multi_worker", path, TrainConfig(feature_path_epochs=0))
    with pytest.raises(distribute.StrategyError, match="feature_path_epochs"):
        distribute.check_supported("mirrored", path, TrainConfig())
    with pytest.raises(distribute.StrategyError, match="validation_days"):
        distribute.check_supported("parameter_server", ModelConfig(),
                                   TrainConfig(validation_days=1))
    distribute.check_supported("multi_worker", ModelConfig(), TrainConfig(validation_days=1))


def test_cli_without_a_cluster_says_what_is_missing(monkeypatch, tmp_path, capsys, data):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = train.main(["--data", data, "--export_dir", str(tmp_path / "e"),
                       "--strategy", "parameter_server"])
    assert code == 2
    assert "needs TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_loss_is_the_batch_mean_in_one_process(small_batch):
    """Summed losses divided by the rows: the mean Keras' default reduction gave."""
    tf.keras.utils.set_random_seed(3)
    model = LFM4AdsModel(ModelConfig(id_dropout=0.0), TrainConfig(conversion_loss_weight=0.5))
    outputs = model(small_batch)
    is_ad = (small_batch["domain"].numpy() == b"ad").astype(np.float32)
    label = small_batch["label"].numpy().astype(np.float32)
    conversion = small_batch["conversion"].numpy().astype(np.float32)

    def bce(y, logit, weight):
        logit = logit.numpy()[:, 0].astype(np.float64)
        per_row = np.maximum(logit, 0) - logit * y + np.log1p(np.exp(-np.abs(logit)))
        return float(np.sum(per_row * weight) / len(y))

    expected = (bce(label, outputs["ad_logit"], is_ad)
                + bce(label, outputs["content_logit"], 1 - is_ad)
                + 0.5 * bce(conversion, outputs["conversion_logit"], is_ad))
    assert float(model.compute_loss(small_batch)) == pytest.approx(expected, rel=1e-5)


# -- parameter servers, in one process ------------------------------------------------------
@pytest.fixture(scope="module")
def ps_run(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ps_in_process")
    log = out / "log.txt"
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "tests.trainer.ps_in_process", data, str(out / "export")],
            cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=480)
    assert done.returncode == 0, log.read_text()[-4000:]
    return _json_line(str(log))


@pytest.mark.slow
def test_parameter_servers_train_sharded_tables_and_the_loss_goes_down(ps_run):
    assert ps_run["strategy"] == "parameter_server"
    assert ps_run["sharded_variables"] >= 6  # the id and feature tables, each in 2 shards
    assert ps_run["epochs"] == 2
    assert ps_run["trained_loss"] < 0.8 * ps_run["untrained_loss"]
    assert ps_run["auc_ad"] is not None and ps_run["auc_content"] is not None


@pytest.mark.slow
def test_a_sharded_checkpoint_restores_with_other_shard_counts(ps_run):
    reshard = ps_run["reshard"]
    assert reshard["item_id"]["shards"] == [2, 3, 1]
    for name, table in reshard.items():
        assert table["equal"] == [True, True], name


@pytest.mark.slow
def test_the_parameter_server_export_serves(ps_run, data):
    export = ps_run["export_path"]
    loaded = tf.saved_model.load(export)
    assert set(loaded.signatures) >= {signatures.SERVING_DEFAULT, signatures.USER_REPRESENTATION,
                                      signatures.ITEM_REPRESENTATION,
                                      signatures.CROSS_REPRESENTATION}
    files = data_input.list_files(data)
    examples = [r.numpy() for r in data_input.records_in_window(files).take(16)]
    expected = loaded.signatures[signatures.USER_REPRESENTATION](
        examples=tf.constant(examples))[signatures.USER_REPRESENTATION].numpy()
    with ModelServer(model_name="lfm4ads", model_base_path=os.path.dirname(export), port=0,
                     rest_api_port=None) as server:
        with EmbeddingClient(server.grpc_target, "lfm4ads") as client:
            served = client.user_representations(examples)
    np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-6)
    assert np.std(served) > 0


# -- parameter servers, one process per task, a worker lost -------------------------------
@pytest.mark.slow
def test_parameter_server_cli_on_tf_config_survives_a_lost_worker(data, tmp_path):
    chief_port, w0, w1, ps = _ports(4)
    cluster = {"chief": [f"localhost:{chief_port}"],
               "worker": [f"localhost:{w0}", f"localhost:{w1}"], "ps": [f"localhost:{ps}"]}
    args = ["--data", data, "--export_dir", str(tmp_path / "export"), *SMALL_FLAGS,
            "--strategy=parameter_server", "--min_shard_bytes=1024", "--variable_shards=2",
            "--epochs=3", "--steps_per_epoch=12", "--batch_size=64", "--json"]
    servers, logs = {}, {}
    try:
        for task in (("ps", 0), ("worker", 0), ("worker", 1)):
            logs[task] = open(tmp_path / f"{task[0]}{task[1]}.log", "w")
            servers[task] = _train(args, logs[task], _env(cluster, task))
        chief_log = tmp_path / "chief.log"
        with open(chief_log, "w") as f:
            chief = _train(args, f, _env(cluster, ("chief", 0)))
            deadline = time.monotonic() + 300
            while "Epoch 2/" not in chief_log.read_text():
                assert chief.poll() is None, chief_log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the chief never reached epoch 2"
                time.sleep(0.2)
            servers[("worker", 1)].send_signal(signal.SIGKILL)  # lost mid-run
            code = chief.wait(timeout=300)
        text = chief_log.read_text()
        assert code == 0, text[-4000:]
    finally:
        for proc in servers.values():
            proc.kill()
            proc.wait()
        for f in logs.values():
            f.close()
    results = _json_line(str(chief_log))
    assert results["strategy"] == "parameter_server" and results["epochs"] == 3
    assert results["sharded_variables"] >= 6  # 2 shards each, on the one ps
    assert "/job:worker/replica:0/task:1" in text  # the coordinator saw the loss, and went on
    assert os.path.exists(os.path.join(results["export_path"], "saved_model.pb"))
    served = (tmp_path / "worker0.log").read_text()
    assert "serving as worker:0 of a parameter-server cluster" in served


# -- multi-worker mirrored: 2 workers, the weights of one ---------------------------------
@pytest.mark.slow
def test_two_mirrored_workers_give_the_weights_of_one(data, tmp_path, monkeypatch, capsys):
    args = [*SMALL_FLAGS, "--data", data, "--strategy=multi_worker", "--id_dropout=0",
            "--shuffle_buffer=0", "--epochs=1", "--batch_size=64", "--json"]
    cluster = {"worker": [f"localhost:{p}" for p in _ports(2)]}
    procs, logs = [], []
    for index in range(2):
        logs.append(open(tmp_path / f"worker{index}.log", "w"))
        procs.append(_train([*args, "--export_dir", str(tmp_path / f"worker{index}")], logs[-1],
                            _env(cluster, ("worker", index))))
    ended: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 420
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for i, proc in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.time()
            time.sleep(0.1)
        codes = [proc.poll() for proc in procs]
    finally:
        for proc, f in zip(procs, logs, strict=True):
            proc.kill()
            f.close()
    for index, code in enumerate(codes):
        assert code == 0, (tmp_path / f"worker{index}.log").read_text()[-4000:]
    chief, other = (_json_line(str(tmp_path / f"worker{i}.log")) for i in range(2))
    # One process, the same flags and the default strategy, here (no cluster to connect).
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train.main([*args, "--strategy=default", "--export_dir",
                       str(tmp_path / "alone")]) == 0
    alone = _json_line_of(capsys.readouterr().out)
    assert chief["replicas"] == 2 and chief["strategy"] == "multi_worker"
    assert chief["chief"] and not other["chief"]
    assert other["export_path"] is None and not (tmp_path / "worker1").exists()
    # The other worker waits for the chief's export (a barrier), as TFX's Trainer needs.
    assert ended[1] >= os.path.getmtime(os.path.join(chief["export_path"], "saved_model.pb"))
    two = _saved_variables(str(tmp_path / "worker0"))
    one = _saved_variables(str(tmp_path / "alone"))
    # The one-process export also carries the optimizer's slots; the model's are the same.
    assert set(two) == {name for name in one if "/optimizer/" not in name}
    assert len(two) > 20
    for name in two:  # one epoch, 16 steps of Adam: float summation order only
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5, err_msg=name)
    assert chief["final_loss"] == pytest.approx(alone["final_loss"], rel=1e-5)


def test_a_lost_parameter_server_is_named_in_one_line():
    """What `python -m trainer.train` prints (exit 3) when a task goes away mid-run: losing a
    worker is survived, losing a parameter server is not (its variables are gone)."""
    message = (
        "in user code:\n\n    UnavailableError: Connection reset by peer\n    Additional GRPC "
        "error information from remote target /job:ps/replica:0/task:1/device:CPU:0 while "
        "calling /tensorflow.eager.EagerService/Enqueue:\n    :{\"grpc_status\":14} "
        "[Op:DivNoNan] name: ")
    line = distribute.lost_task_message(tf.errors.UnavailableError(None, None, message))
    assert line == ("the cluster lost ps:1 (a parameter server: the variables it held are "
                    "gone; start the run again): UnavailableError: Connection reset by peer")
    assert distribute.lost_task_message(ValueError("gone")) == "the cluster lost a task: gone"
