"""A Pusher executor that writes TF Serving's integer versions: 1, 2, 3, ... under the base path.

The stock filesystem Pusher names versions by UNIX timestamp. This one takes the next integer after
the largest version already there, copies the SavedModel into a hidden temporary directory inside the
base path (TF Serving ignores names that are not integers) and renames it into place, so a server
polling the base path never sees a half-written version. Use it with the stock Pusher:

    Pusher(model=..., model_blessing=..., push_destination=...,
           custom_executor_spec=executor_spec.ExecutorClassSpec(versioned_pusher.Executor))
"""

import os
import shutil
from typing import Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils


def existing_versions(base_directory: str) -> list[int]:
    if not fileio.exists(base_directory):
        return []
    return sorted(int(name.rstrip("/")) for name in fileio.listdir(base_directory) if name.rstrip("/").isdigit())


def next_version(base_directory: str) -> int:
    versions = existing_versions(base_directory)
    return versions[-1] + 1 if versions else 1


def push_model(model_path: str, base_directory: str) -> tuple[int, str]:
    """Copies a SavedModel to `<base>/<next version>` atomically; returns (version, path)."""
    fileio.makedirs(base_directory)
    version = next_version(base_directory)
    final = os.path.join(base_directory, str(version))
    staging = os.path.join(base_directory, f".staging-{version}-{os.getpid()}")
    if fileio.exists(staging):
        fileio.rmtree(staging)
    io_utils.copy_dir(model_path, staging)
    try:
        os.rename(staging, final)  # atomic on one local file system; fails if `final` appeared meanwhile
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version, final


class Executor(pusher_executor.Executor):
    """Pushes a blessed model to push_destination.filesystem.base_directory as the next integer version."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("the versioned pusher pushes to a filesystem destination only")
        version, path = push_model(model_path, destination.filesystem.base_directory)
        logging.info("Model pushed as version %d to %s", version, path)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=path, pushed_version=str(version))
