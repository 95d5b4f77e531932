"""TFMA custom metric: GAUC, the impression-weighted per-user AUC (Zhou et al. 2018).

`GAUC = sum_u n_u AUC_u / sum_u n_u` over the users of the slice that have both a positive and
a negative row (`trainer.evaluation.gauc`, so the Evaluator and the standalone trainer report
the same number). Used in an `EvalConfig` as

    tfma.MetricConfig(class_name="GAUC", module="components.tfma_metrics",
                      config='{"user_key": "user_id"}')

The combiner keeps `(user, label, prediction)` of every row of a slice (16 bytes + the key per
row): fine for an eval window, not for a full log.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.utils import util

from trainer.evaluation import gauc

GAUC_NAME = "gauc"


class GAUC(tfma.metrics.Metric):
    """Impression-weighted per-user AUC.

    Args:
      name: metric name.
      user_key: the feature holding the user id.
    """

    def __init__(self, name: str = GAUC_NAME, user_key: str = "user_id"):
        super().__init__(_gauc_computations, name=name, user_key=user_key)


metric_types.register_metric(GAUC)


def _gauc_computations(
    name: str = GAUC_NAME,
    user_key: str = "user_id",
    eval_config=None,
    model_names: list[str] | None = None,
    output_names: list[str] | None = None,
    example_weighted: bool = False,
) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name,
                                         output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key],
                preprocessors=[metric_types.FeaturePreprocessor(feature_keys=[user_key])],
                combiner=_GAUCCombiner(key, eval_config, user_key),
            ))
    return computations


class _GAUCCombiner(beam.CombineFn):
    """Accumulator: three lists (users, labels, predictions) of the slice's rows."""

    def __init__(self, key: metric_types.MetricKey, eval_config, user_key: str):
        self._key = key
        self._eval_config = eval_config
        self._user_key = user_key

    def create_accumulator(self) -> tuple[list, list, list]:
        return [], [], []

    def add_input(self, accumulator, element):
        users = util.get_by_keys(element.features, [self._user_key])
        for label, prediction, _ in metric_util.to_label_prediction_example_weight(
            element,
            eval_config=self._eval_config,
            model_name=self._key.model_name,
            output_name=self._key.output_name,
            flatten=True,
        ):
            accumulator[1].append(float(label))
            accumulator[2].append(float(prediction))
        user = np.asarray(users).reshape(-1)
        if user.size != 1:
            raise ValueError(f"feature {self._user_key!r} must have one value per example, "
                             f"got {user.size}")
        accumulator[0].append(user[0])
        return accumulator

    def merge_accumulators(self, accumulators: Iterable):
        out = self.create_accumulator()
        for users, labels, predictions in accumulators:
            out[0].extend(users)
            out[1].extend(labels)
            out[2].extend(predictions)
        return out

    def extract_output(self, accumulator) -> dict:
        users, labels, predictions = accumulator
        value = gauc(np.asarray(users, dtype=object), np.asarray(labels),
                     np.asarray(predictions)) if users else None
        return {self._key: float("nan") if value is None else value}
