"""The served model's signature: what the pipeline exports and what the bridge reads.

Every model the pipeline pushes has a `serving_default` signature that takes serialized raw
`tf.Example`s (the Transform graph is inside the model, no client holds feature logic) and returns
at least SCORE, DECISION and THRESHOLD, one value per example. The optional outputs explain a score.
"""

SIGNATURE_NAME = "serving_default"
#: Input: a 1-D string tensor of serialized tf.Example protos holding the raw features (no label).
INPUT_EXAMPLES = "examples"

#: A second Predict signature for clients that hold the features as numbers (the bridge): same outputs
#: as SIGNATURE_NAME, no tf.Example parsing.
FEATURES_SIGNATURE_NAME = "serving_features"
#: Its input: float32 [batch, 30], the raw features in fraud.features.FEATURE_NAMES order (sent as
#: `tensor_content`).
INPUT_FEATURES = "features"

#: TF Serving's Classify and Regress APIs need signatures of their own method names
#: (tensorflow/serving/classify, tensorflow/serving/regress) over serialized tf.Examples under "inputs".
CLASSIFY_SIGNATURE_NAME = "classification"
REGRESS_SIGNATURE_NAME = "regression"

#: float32 [batch], in [0, 1]; higher means more likely fraud. TFMA's binary metrics judge this.
SCORE = "score"
#: int64 [batch], 1 when SCORE >= the threshold shipped with the model, else 0.
DECISION = "decision"
#: float32 [batch], the decision threshold recorded in the model (same value on every row).
THRESHOLD = "threshold"
#: float32 [batch], the autoencoder's raw reconstruction error (optional).
RECONSTRUCTION_ERROR = "reconstruction_error"
#: float32 [batch, 30], per-feature contribution in fraud.features.FEATURE_NAMES order (optional):
#: reconstruction error per feature for the autoencoder, an attribution for a supervised model.
FEATURE_CONTRIBUTIONS = "feature_contributions"

REQUIRED_OUTPUTS = (SCORE, DECISION, THRESHOLD)

#: The TF Serving model name the pipeline pushes the served model under (serving_model_dir / name).
DEFAULT_MODEL_NAME = "fraud"
