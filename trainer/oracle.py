"""The synthetic generator's ground truth (`oracle.npz` beside its shards), read by evaluations.

`pipelines.sources.synthetic` writes one row per example, in record order: `timestamp`,
`item_id`, `is_ad`, `label`, the true click probability `p_label` and the score the simulator
draws from features alone (`feature_score`). Other data sets have no oracle; every function here
then returns None or nothing.
"""

from __future__ import annotations

import os

import numpy as np

from trainer.evaluation import auc, expected_auc

ORACLE_FILE = "oracle.npz"
USERS_FILE = "users.npz"  # the simulator's per-user ground truth (interest group, demographics)


def load(data: str):
    """The oracle of the data directory `data`, or None when it has none."""
    path = os.path.join(data, ORACLE_FILE) if os.path.isdir(data) else ""
    return np.load(path) if path and os.path.exists(path) else None


def load_users(data: str) -> dict[str, np.ndarray] | None:
    """The per-user ground truth of the data directory `data` (`USERS_FILE`), or None."""
    path = os.path.join(data, USERS_FILE) if os.path.isdir(data) else ""
    if not path or not os.path.exists(path):
        return None
    with np.load(path) as users:
        return {key: users[key] for key in users.files}


def window(oracle, start: int, end: int | None = None,
           domain_is_ad: bool | None = None) -> np.ndarray:
    """Mask of the oracle's rows with `start <= timestamp < end` (of one domain if given)."""
    mask = oracle["timestamp"] >= start
    if end is not None:
        mask &= oracle["timestamp"] < end
    if domain_is_ad is not None:
        mask &= oracle["is_ad"] if domain_is_ad else ~oracle["is_ad"]
    return mask


def same_rows(oracle, mask: np.ndarray, labels: np.ndarray, items: np.ndarray,
              is_ad: np.ndarray | None = None, timestamps: np.ndarray | None = None) -> bool:
    """Whether rows read from the data (their labels, item ids, and optionally domains and
    timestamps, in record order) are the oracle's `mask` rows, in the same order."""
    if int(mask.sum()) != np.asarray(labels).size:
        return False
    checks = [(oracle["label"][mask], labels)]
    if is_ad is not None:
        checks.append((oracle["is_ad"][mask], is_ad))
    if timestamps is not None:
        checks.append((oracle["timestamp"][mask], timestamps))
    if not all(np.array_equal(a, np.asarray(b)) for a, b in checks):
        return False
    return np.array_equal(oracle["item_id"][mask].astype(str),
                          np.char.decode(np.asarray(items).astype(bytes), "utf-8"))


def probabilities(data: str, labels: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                  start: int, end: int, domain_is_ad: bool | None = True) -> np.ndarray | None:
    """The true click probability of each row of a window read from `data`, or None without an
    oracle or when the oracle's rows of that window are not these rows."""
    oracle = load(data)
    if oracle is None:
        return None
    mask = window(oracle, start, end, domain_is_ad)
    if not same_rows(oracle, mask, labels, items, timestamps=timestamps):
        return None
    return oracle["p_label"][mask].astype(np.float64)


def metrics(data: str, cut: int, train_end: int | None = None,
            scores: dict[str, np.ndarray] | None = None,
            end: int | None = None) -> dict[str, float | None]:
    """Oracle AUCs on the slices of `trainer.train`'s evaluation (the window `cut <= timestamp <
    end`): ad, content and cold-start ad rows (items never seen before `train_end`, default
    `cut`), and the AUC of the simulator's features-only score.

    With a model's `scores` on the window (dict of `ad`, `content`, `label`, `is_ad`, `item`
    arrays in record order), also the model's and the oracle's AUC in expectation over the
    draw of the labels (`evaluation.expected_auc` with the true probabilities), which ~100
    positives otherwise move by about 0.02. Empty without an oracle."""
    oracle = load(data)
    if oracle is None:
        return {}
    mask = window(oracle, cut, end)
    items = oracle["item_id"].astype(str)
    trained = oracle["timestamp"] < (cut if train_end is None else train_end)
    cold = ~np.isin(items, np.unique(items[trained]))
    ad = mask & oracle["is_ad"]
    content = mask & ~oracle["is_ad"]
    p, y = oracle["p_label"], oracle["label"]
    out = {
        "oracle_auc_ad": auc(y[ad], p[ad]),
        "oracle_auc_content": auc(y[content], p[content]),
        "oracle_auc_cold_start": auc(y[ad & cold], p[ad & cold]),
    }
    if "feature_score" in oracle.files:  # the true score from features alone (no ids)
        score = oracle["feature_score"]
        out["features_only_auc_ad"] = auc(y[ad], score[ad])
        out["features_only_auc_content"] = auc(y[content], score[content])
    is_ad = oracle["is_ad"][mask]
    if scores is not None and same_rows(oracle, mask, scores["label"], scores["item"],
                                        is_ad=scores["is_ad"]):
        for name, rows in (("ad", is_ad), ("content", ~is_ad)):
            truth = p[mask][rows]
            out[f"expected_auc_{name}"] = expected_auc(truth, scores[name][rows])
            out[f"oracle_expected_auc_{name}"] = expected_auc(truth, truth)
    return out
