"""Names of the exported signatures and their input/output keys (DESIGN: signature contract).

`serving/` and `components/` import these; nothing else spells them out.
"""

from trainer import features

INPUT_KEY = "examples"

SERVING_DEFAULT = "serving_default"
USER_REPRESENTATION = "user_representation"
ITEM_REPRESENTATION = "item_representation"
CROSS_REPRESENTATION = "cross_representation"
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
}

# signature name -> raw features it reads from each serialized tf.Example.
REQUIRED_FEATURES = {
    SERVING_DEFAULT: features.USER_FEATURES + features.ITEM_FEATURES + (features.SCENARIO,),
    USER_REPRESENTATION: features.USER_FEATURES,
    ITEM_REPRESENTATION: features.ITEM_FEATURES,
    CROSS_REPRESENTATION: features.USER_FEATURES + features.ITEM_FEATURES + (features.SCENARIO,),
}

WARMUP_FILE = "tf_serving_warmup_requests"
