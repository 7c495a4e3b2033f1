"""TFX module files (`preprocessing_fn`, `run_fn`, `custom_eval_shared_model`).

Thin adapters over plain functions in `pipeline.models`. The pipeline passes them as importable paths
(`pipeline.modules.<name>.<fn>`), so TFX builds no user-module wheel; with `package_user_modules`
it passes the files instead and TFX packages every top-level .py of this folder, so the folder holds
only module files.
"""
