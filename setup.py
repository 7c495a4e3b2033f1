"""Packaging for the real-time credit-card fraud detection project (TFX + Apache Kafka).

Dependencies are pinned in requirements.lock and installed by scripts/setup-env.sh with --no-deps
(the TFX 1.16 stack cannot be resolved by pip on CPython 3.11 without backtracking); the loose
requirements below only document what the code imports.
"""

from setuptools import find_packages, setup

PACKAGES = [
    "fraud",
    "fraudctl",
    "pipeline",
    "components",
    "schema",
    "serving",
    "kafka_bridge",
    "preprocessing",
    "monitoring",
    "warehouse",
]

setup(
    name="fraud-tfx",
    version="0.1.0",
    description="Real-time credit-card fraud detection on TensorFlow Extended and Apache Kafka",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=[p for name in PACKAGES for p in (name, f"{name}.*")]),
    package_data={
        "fraud": ["embedded/pom.xml", "embedded/*.yaml", "sample/*"],
        "schema": ["*.pbtxt"],
        "pipeline": ["beam_requirements.txt"],
        "monitoring": ["*.json"],
        "preprocessing": ["*.yaml"],
    },
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-model-analysis==0.47.1",
        "tensorflow-serving-api==2.16.1",
        "apache-beam==2.74.0",
        "kafka-python>=3",
        "confluent-kafka",
        "orjson",
        "prometheus-client",
        "tqdm",
    ],
    entry_points={"console_scripts": ["fraudctl = fraudctl.cli:main"]},
)
