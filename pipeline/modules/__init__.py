"""TFX module files (`preprocessing_fn`, `run_fn`).

TFX packages every top-level .py of this folder into a wheel for the components that use them, so
the folder holds only module files: thin adapters over plain functions in `pipeline.training`.
"""
