"""The model kinds the pipeline trains, one module each behind pipeline/models/base.py.

Adding a model is adding a module with a `base.ModelKind` subclass, its entry here and its Trainer
module file (pipeline/modules/<kind>_trainer.py).
"""

from __future__ import annotations

from pipeline.models import autoencoder, gbt, hybrid, mlp
from pipeline.models.base import ModelKind

#: Every kind by name, in the order the pipeline builds their Trainers.
KINDS: dict[str, ModelKind] = {k.name: k for k in (autoencoder.KIND, mlp.KIND, gbt.KIND, hybrid.KIND)}


def kind(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r} (one of {', '.join(KINDS)})") from None
