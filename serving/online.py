"""The online loop of paper Fig. 4: serve the stored representations, then refresh them.

For a batch of requests (serialized tf.Examples of (user, item) pairs with their timestamps):

1. `fetch`: UR(u), IR(i), CR(u), CR(i) from the representation store, as the downstream model
   reads them (the state before this request; missing keys flagged); with a `ranker` (an
   `EmbeddingClient` of a downstream model, served beside the upstream), the requests go to
   it with those representations as features (`ur`, `ir`, `cr_user`, `cr_item` and their
   `*_found`; `common.downstream_requests`) and its `prediction` is the request's score;
2. run the upstream model through the TF-Serving-compatible server on the same examples: one
   call of the `representations` signature, one forward pass that yields UR(u), IR(i),
   CR(u,i) and the ad prediction together (Fig. 4, Sec. 4.3.1). With a ranker, this comes
   before step 1's ranking, so that the ranker's request also carries the upstream's
   prediction on it (`upstream_ad_prediction`, which a `distill` ranker reads). An upstream
   exported before that signature existed is asked with three calls (`user_representation`,
   `item_representation`, `cross_representation`; `one_call=False` forces them), and its
   prediction does not reach the ranker (a `distill` ranker refuses such requests by name);
3. write the new UR(u) and IR(i) (the latest request per key wins, as in the offline
   extractor: largest (timestamp, BLAKE2b digest of the example); a stored row with a later
   `updated_at` is kept, atomically: `put(..., only_newer=True)`) and fold CR(u,i) into
   CR(u), CR(i) with the store's atomic time-aware EMA (Eq. 1-2, the offline aggregator's
   tie rule) for the requests `cr_domains` selects (`common.representations.cr_folding`:
   `"ad"`, the default, folds ad requests only, paper Sec. 4.3.1; `"all"` every request).
   The loop gives the store each request's domain; `update_cross` folds the selected ones.

Replaying a time-ordered stream through `OnlineLoop.replay` leaves the same four tables as the
offline RepresentationExtractor + CrossRepresentationAggregator on that stream, with the same
`cr_domains`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common import features, signatures
from common.downstream_requests import with_representations
from common.representations import cr_folding
from common.representations.ema import DEFAULT_HALF_LIFE_SECONDS
from common.representations.tables import sample_digest
from serving.client import EmbeddingClient, ServingClientError, batches
from serving.store import CR_ITEM, CR_USER, IR, UR, RepresentationStore, Rows


@dataclass(frozen=True)
class Fetched:
    """What the downstream model gets for a batch: the stored rows before the update."""

    user: Rows
    item: Rows
    cross_user: Rows
    cross_item: Rows

    def features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Representation feature name -> (vectors `[n, d]`, found `[n]`), as a downstream
        model's request carries them."""
        return {signatures.UR_FEATURE: (self.user.representations, self.user.found),
                signatures.IR_FEATURE: (self.item.representations, self.item.found),
                signatures.CR_USER_FEATURE: (self.cross_user.representations,
                                             self.cross_user.found),
                signatures.CR_ITEM_FEATURE: (self.cross_item.representations,
                                             self.cross_item.found)}


@dataclass(frozen=True)
class Processed:
    """One `process` call: the fetched rows, the downstream scores and what was written."""

    fetched: Fetched
    model_version: int
    ur_written: int
    ir_written: int
    late_user: int
    late_item: int
    scores: np.ndarray | None = None  # the ranker's prediction [n], with a ranker
    ranker_version: int | None = None
    # wall seconds of each step: "store_read", "downstream_predict" (with a ranker),
    # "upstream_infer" (the three signatures), "store_write"
    seconds: dict[str, float] = field(default_factory=dict)
    cr_folded: int = 0  # the requests whose CR(u,i) was folded (`cr_domains`)


def _ids(examples: Sequence[bytes], with_domain: bool = False
         ) -> tuple[list[bytes], list[bytes], np.ndarray, list[bytes]]:
    """user_id, item_id, timestamp and (`with_domain`; else an empty list) domain of each
    serialized example (a clear error if one lacks one)."""
    from tensorflow.core.example import example_pb2

    users, items, domains = [], [], []
    wanted = [(features.USER_ID, users), (features.ITEM_ID, items)] + (
        [(features.DOMAIN, domains)] if with_domain else []
    )
    ts = np.empty(len(examples), dtype=np.int64)
    for row, serialized in enumerate(examples):
        feature = example_pb2.Example.FromString(serialized).features.feature
        for name, out in wanted:
            values = feature[name].bytes_list.value if name in feature else []
            if len(values) != 1:
                raise ValueError(f"example {row}: feature {name!r} must hold one bytes value")
            out.append(values[0])
        values = feature["timestamp"].int64_list.value if "timestamp" in feature else []
        if len(values) != 1:
            raise ValueError(f"example {row}: feature 'timestamp' must hold one int64 value")
        ts[row] = values[0]
    return users, items, ts, domains


def _latest_rows(keys: list[bytes], ts: np.ndarray, examples: Sequence[bytes]) -> list[int]:
    """Row index of each key's latest example by (timestamp, digest), as the extractor."""
    best: dict[bytes, tuple[int, bytes, int]] = {}
    for row, key in enumerate(keys):
        rank = (int(ts[row]), sample_digest(examples[row]), row)
        if key not in best or rank[:2] > best[key][:2]:
            best[key] = rank
    return [rank[2] for rank in best.values()]


class OnlineLoop:
    """Fig. 4's online path over an `EmbeddingClient` of the upstream model and a
    `RepresentationStore`; with `ranker` (an `EmbeddingClient` of a downstream model), each
    request is also scored by it from the stored representations. `cr_domains`: the requests
    whose CR(u,i) folds into CR(u), CR(i) (module doc); under `"ad"` each request must carry
    its `domain`."""

    def __init__(self, client: EmbeddingClient, store: RepresentationStore,
                 ranker: EmbeddingClient | None = None, cr_domains: str = cr_folding.DEFAULT,
                 one_call: bool = True):
        self.client = client
        self.store = store
        self.ranker = ranker
        self.cr_domains = cr_folding.check(cr_domains)
        self.one_call = one_call

    def infer(self, examples: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The upstream's UR `[n, d_ur]`, IR, CR(u,i) and ad prediction `[n, 1]` (module doc,
        step 2), keyed by the `representations` signature's output names; without the ad
        prediction when the upstream is asked with its three single signatures."""
        if self.one_call:
            try:
                return self.client.representations(examples)
            except ServingClientError as e:  # an export from before the signature existed
                if e.code.name != "FAILED_PRECONDITION" or signatures.REPRESENTATIONS not in str(e):
                    raise
                self.one_call = False
        return {signatures.USER_REPRESENTATION: self.client.user_representations(examples),
                signatures.ITEM_REPRESENTATION: self.client.item_representations(examples),
                signatures.CROSS_REPRESENTATION: self.client.cross_representations(examples)}

    def rank(self, examples: Sequence[bytes], fetched: Fetched,
             upstream_prediction: np.ndarray | None = None) -> np.ndarray:
        """The ranker's click probability `[n]` of each request, given the representations
        fetched for it and, when known, the upstream's ad prediction `[n]` on the request."""
        if self.ranker is None:
            raise ValueError("this OnlineLoop has no ranker")
        floats = None
        if upstream_prediction is not None:
            floats = {signatures.UPSTREAM_AD_PREDICTION_FEATURE:
                      np.asarray(upstream_prediction, np.float32).reshape(len(examples), -1)}
        requests = with_representations(examples, fetched.features(), floats)
        return self.ranker.predict(requests, (signatures.DOWNSTREAM_PREDICTION,))[
            signatures.DOWNSTREAM_PREDICTION].reshape(-1)

    def fetch(self, user_ids: Sequence[bytes], item_ids: Sequence[bytes]) -> Fetched:
        """UR(u), IR(i), CR(u), CR(i) as stored now."""
        return Fetched(self.store.get(UR, user_ids), self.store.get(IR, item_ids),
                       self.store.get(CR_USER, user_ids), self.store.get(CR_ITEM, item_ids))

    def _write_latest(self, table: str, keys: list[bytes], ts: np.ndarray,
                      examples: Sequence[bytes], vectors: np.ndarray, version: int) -> int:
        rows = _latest_rows(keys, ts, examples)
        # A stored row from a later request stays, decided atomically by the store.
        result = self.store.put(table, [keys[r] for r in rows], vectors[rows], ts[rows],
                                version, only_newer=True)
        return result.rows

    def process(self, examples: Sequence[bytes]) -> Processed:
        """Fetch for, then refresh from, a batch of requests (module doc)."""
        examples = [bytes(e) for e in examples]
        if not examples:
            raise ValueError("examples is empty")
        users, items, ts, domains = _ids(examples, cr_folding.needs_domains(self.cr_domains))
        seconds: dict[str, float] = {}
        last = time.perf_counter()

        def lap(step: str) -> None:  # the time since the previous step ended
            nonlocal last
            now = time.perf_counter()
            seconds[step], last = now - last, now

        fetched = self.fetch(users, items)
        lap("store_read")
        upstream = self.infer(examples)
        ur, ir, cr = (upstream[signatures.USER_REPRESENTATION],
                      upstream[signatures.ITEM_REPRESENTATION],
                      upstream[signatures.CROSS_REPRESENTATION])
        version = int(self.client.last_model_version or 0)
        lap("upstream_infer")
        scores = None
        if self.ranker is not None:
            scores = self.rank(examples, fetched, upstream.get(signatures.AD_PREDICTION))
            lap("downstream_predict")
        ur_written = self._write_latest(UR, users, ts, examples, ur, version)
        ir_written = self._write_latest(IR, items, ts, examples, ir, version)
        # the store folds the events `cr_domains` selects, by each request's domain
        update = self.store.update_cross(users, items, cr, ts, model_version=version,
                                         domains=domains or None, cr_domains=self.cr_domains)
        lap("store_write")
        return Processed(fetched, version, ur_written, ir_written, update.late_user,
                         update.late_item, scores,
                         self.ranker.last_model_version if self.ranker is not None else None,
                         seconds, update.events - update.not_folded)

    def replay(self, records: Iterable[bytes], batch_size: int = 64) -> dict[str, int]:
        """Processes a time-ordered stream in batches; returns counts."""
        totals = {"requests": 0, "batches": 0, "late_user": 0, "late_item": 0, "cr_folded": 0}
        for batch in batches(records, batch_size):
            out = self.process(batch)
            totals["requests"] += len(batch)
            totals["batches"] += 1
            totals["late_user"] += out.late_user
            totals["late_item"] += out.late_item
            totals["cr_folded"] += out.cr_folded
        return totals



def model_config(models: dict[str, str]):
    """A `ModelServerConfig` serving each `{name: base path}` (what `--model_config_file`
    holds, in text format: `google.protobuf.text_format.MessageToString`)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        config.model_config_list.config.add(name=name, base_path=base_path,
                                            model_platform="tensorflow")
    return config


def serve_and_replay(model_name: str, model_base_path: str, store_url: str,
                     records: Sequence[bytes], batch_size: int = 32,
                     half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS,
                     ranker: tuple[str, str] | None = None,
                     cr_domains: str = cr_folding.DEFAULT) -> dict:
    """Starts the server in-process on a free port, replays `records` through the online loop
    (folding the CR(u,i) of the requests `cr_domains` selects) into the store at `store_url`,
    stops the server; returns counts and per-batch latency.

    With `ranker` (`(model name, base path)` of a downstream model), the server hosts both
    models and each request is also scored by the ranker from the stored representations;
    the scores come back as `scores` (`[len(records)]`, in the order of `records`)."""
    from serving.model_server import ModelServer
    from serving.store import open_store

    cr_folding.check(cr_domains)
    latencies, scores = [], []
    late, folded = [0, 0], 0
    models = {model_name: model_base_path}
    if ranker is not None:
        models[ranker[0]] = ranker[1]
    with ModelServer(model_server_config=model_config(models), port=0,
                     rest_api_port=None) as server:
        store = open_store(store_url, half_life_seconds=half_life_seconds)
        try:
            with EmbeddingClient(server.grpc_target, model_name, timeout=30) as client:
                ranker_client = (EmbeddingClient(server.grpc_target, ranker[0], timeout=30)
                                 if ranker is not None else None)
                try:
                    loop = OnlineLoop(client, store, ranker_client, cr_domains)
                    for batch in batches(records, batch_size):
                        started = time.perf_counter()
                        out = loop.process(batch)
                        latencies.append(time.perf_counter() - started)
                        late[0] += out.late_user
                        late[1] += out.late_item
                        folded += out.cr_folded
                        if out.scores is not None:
                            scores.append(out.scores)
                finally:
                    if ranker_client is not None:
                        ranker_client.close()
                version = client.last_model_version
        finally:
            store.close()
    ms = np.asarray(latencies) * 1e3
    out = {
        "online_requests": len(records),
        "online_batches": len(latencies),
        "online_model_version": version,
        "online_late_events": late[0] + late[1],
        "online_cr_domains": cr_domains,
        "online_cr_folded": folded,
        "online_batch_p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "online_batch_p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }
    if ranker is not None:
        out["scores"] = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return out
