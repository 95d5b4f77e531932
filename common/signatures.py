"""Names of the exported signatures and their input/output keys (docs/ARCHITECTURE.md,
"Signatures").

`serving/` and `components/` import these; nothing else spells them out.
"""

from collections.abc import Callable, Mapping

from common import features

INPUT_KEY = "examples"

SERVING_DEFAULT = "serving_default"
USER_REPRESENTATION = "user_representation"
ITEM_REPRESENTATION = "item_representation"
CROSS_REPRESENTATION = "cross_representation"
# One forward pass for a (user, item) request (paper Fig. 4, Sec. 4.3.1): UR, IR, CR(u,i) and
# the ad prediction together, equal to what the single signatures return for those examples.
REPRESENTATIONS = "representations"
# Only in pipeline exports (Transform graph inside): raw examples -> transformed features, for
# TFMA slicing on transformed features such as `item_cold_start`.
TRANSFORM_FEATURES = "transform_features"

AD_PREDICTION = "ad_prediction"
CONTENT_PREDICTION = "content_prediction"
CONVERSION_PREDICTION = "conversion_prediction"

# signature name -> output keys, in the order they are documented.
OUTPUT_KEYS = {
    SERVING_DEFAULT: (AD_PREDICTION, CONTENT_PREDICTION, CONVERSION_PREDICTION),
    USER_REPRESENTATION: (USER_REPRESENTATION,),
    ITEM_REPRESENTATION: (ITEM_REPRESENTATION,),
    CROSS_REPRESENTATION: (CROSS_REPRESENTATION,),
    REPRESENTATIONS: (USER_REPRESENTATION, ITEM_REPRESENTATION, CROSS_REPRESENTATION,
                      AD_PREDICTION),
}

# signature name -> raw features it reads from each serialized tf.Example.
REQUIRED_FEATURES = {
    SERVING_DEFAULT: features.USER_FEATURES + features.ITEM_FEATURES + (features.SCENARIO,),
    USER_REPRESENTATION: features.USER_FEATURES,
    ITEM_REPRESENTATION: features.ITEM_FEATURES,
    CROSS_REPRESENTATION: features.USER_FEATURES + features.ITEM_FEATURES + (features.SCENARIO,),
    REPRESENTATIONS: features.USER_FEATURES + features.ITEM_FEATURES + (features.SCENARIO,),
}

WARMUP_FILE = "tf_serving_warmup_requests"

# -- downstream (paper Sec. 3.4) ------------------------------------------------------------
# Representation features of a downstream tf.Example: float lists filled from the published
# tables or the representation store, as of strictly before the row's timestamp. Each has an
# int64 0/1 companion `<name>_found` (0: the key had no representation yet; the vector is zeros).
UR_FEATURE = "ur"
IR_FEATURE = "ir"
CR_USER_FEATURE = "cr_user"
CR_ITEM_FEATURE = "cr_item"
# The latest CR(u,i) event of the user / the item before the row (no aggregation, Table 1).
CR_LATEST_USER_FEATURE = "cr_latest_user"
CR_LATEST_ITEM_FEATURE = "cr_latest_item"
REPRESENTATION_FEATURES = (UR_FEATURE, IR_FEATURE, CR_USER_FEATURE, CR_ITEM_FEATURE,
                           CR_LATEST_USER_FEATURE, CR_LATEST_ITEM_FEATURE)
FOUND_SUFFIX = "_found"
# The upstream's predicted ad click probability of the row itself (its `ad_prediction` on this
# very request, float, one per row; the `distill` mode, ExFM): computed at request time by the
# live upstream model, which never trained on the row, not looked up as of before the row.
UPSTREAM_AD_PREDICTION_FEATURE = "upstream_ad_prediction"


def found_feature(name: str) -> str:
    """The 0/1 indicator feature of representation feature `name`."""
    return name + FOUND_SUFFIX


# Outputs of the downstream models' `serving_default`.
DOWNSTREAM_PREDICTION = "prediction"  # the ranker: click probability [batch, 1]
TOP_K_IDS = "top_k_ids"  # standalone retrieval: item ids [batch, k] (bytes)
TOP_K_SCORES = "top_k_scores"  # and their scores [batch, k]
RETRIEVAL_SCORE = "score"  # standalone retrieval's score(u, i) of Eq. 6 [batch, 1]

# Reusable endpoints of the upstream SavedModel beside its signatures (TF Hub's Reusable
# SavedModel interface): attributes of the loaded object, called on the dense raw-feature dict
# of `features.parse_examples`.
USER_TOWER_ENDPOINT = "user_tower"
ITEM_TOWER_ENDPOINT = "item_tower"
AD_MODULE_ENDPOINT = "ad_module"
ENDPOINTS = (USER_TOWER_ENDPOINT, ITEM_TOWER_ENDPOINT, AD_MODULE_ENDPOINT)


def representations_fn(loaded, path: str) -> Callable[..., Mapping]:
    """A loaded upstream SavedModel's representations in one function of serialized examples
    `[batch]` -> `{UR, IR, CR: [batch, d]}`: its `representations` signature (one forward pass;
    its output also holds the ad prediction), or, for an export from before that signature,
    its three single signatures. ValueError naming `path` when neither is there."""
    if REPRESENTATIONS in loaded.signatures:
        combined = loaded.signatures[REPRESENTATIONS]
        return lambda examples: dict(combined(**{INPUT_KEY: examples}))
    single = (USER_REPRESENTATION, ITEM_REPRESENTATION, CROSS_REPRESENTATION)
    missing = [name for name in single if name not in loaded.signatures]
    if missing:
        raise ValueError(f"SavedModel {path!r} lacks the signatures {missing}; it has "
                         f"{sorted(loaded.signatures)}")
    return lambda examples: {name: loaded.signatures[name](**{INPUT_KEY: examples})[name]
                             for name in single}
