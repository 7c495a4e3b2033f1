"""The TFX training pipeline: `create_pipeline()` and thin runners (local, Beam, Kubeflow V2)."""
