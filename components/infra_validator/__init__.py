"""Infra validation without Docker or Kubernetes: load the candidate in this project's TF Serving-compatible
server, query it with real requests built from evaluation examples, bless it only if every answer is
well formed, and ship those requests as the model's warm-up file. See component.LocalInfraValidator."""

from components.infra_validator.component import LocalInfraValidator, build_for_pipeline

__all__ = ["LocalInfraValidator", "build_for_pipeline"]
