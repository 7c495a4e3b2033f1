"""Model lifecycle, as TF Serving's ServerCore / FileSystemStoragePathSource / AspiredVersionsManager do it.

- Each model has a base path whose children named by integers are versions. The base paths are polled
  every `file_system_poll_wait_seconds`; the version policy (latest N, all, specific) picks the aspired
  versions. A version appears in status as START when aspired, then LOADING, AVAILABLE, UNLOADING, END.
- Actions follow TF Serving's AvailabilityPreservingPolicy: load the highest new aspired version first;
  unload an un-aspired version only when an aspired one is serving (or nothing is aspired, or several
  un-aspired ones are serving), so a model never goes dark while a new version loads.
- A load runs `Servable.load`, then the warm-up replay, and only then makes the version AVAILABLE:
  the switch of "latest" to it is one assignment under the lock. A failed load is retried
  `max_num_load_retries` times, then reported as END with the error in status; it is not retried while
  it stays aspired, and the previous version keeps serving.
- Requests hold a reference (`acquire`) while they run; a version being retired stops taking new
  requests (UNLOADING) and is released only once its in-flight requests have finished.
- Version labels come from the model config. As in TF Serving a label may only point at an AVAILABLE
  version unless `--allow_version_labels_for_unavailable_models` (then only new labels may).
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from fraud.logs import log_event
from serving.batching import BatchScheduler
from serving.config import ModelConfig, ServerConfig
from serving.errors import Code, ServingError
from serving.metrics import ServingMetrics
from serving.requests import ModelSpec
from serving.servable import Servable

log = logging.getLogger("serving.manager")

#: Unloaded (END) versions remembered per model for status, beyond the live ones.
_MAX_ENDED_VERSIONS = 50


class State(str, enum.Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass
class VersionEntry:
    version: int
    path: str
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    ended_at: float = 0.0


@dataclass
class ModelEntry:
    config: ModelConfig
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    aspired: dict[int, str] = field(default_factory=dict)  # version -> path, from the last successful poll
    failed: set[int] = field(default_factory=set)  # aspired versions whose load failed (not retried)
    polled: bool = False
    poll_error: str | None = None
    removed: bool = False


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    code: Code
    message: str


class Handle:
    """A reference to an AVAILABLE version; release it (or use `with`) when the request is done."""

    __slots__ = ("_manager", "_entry", "servable", "model_name", "_released")

    def __init__(self, manager: ModelManager, entry: VersionEntry, model_name: str) -> None:
        self._manager = manager
        self._entry = entry
        self.servable: Servable = entry.servable  # type: ignore[assignment]
        self.model_name = model_name
        self._released = False

    @property
    def version(self) -> int:
        return self._entry.version

    def retain(self) -> Handle:
        """Another reference to the same version (for work that may outlive this handle)."""
        return self._manager._retain(self._entry, self.model_name)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._entry)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def parse_version(name: str) -> int | None:
    """A child of a base path is a version when its name is an integer (TF Serving's SimpleAtoi)."""
    text = name.strip()
    if not text or not (text.isdigit() or (text[0] in "+-" and text[1:].isdigit())):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def aspired_versions(config: ModelConfig, children: Sequence[str]) -> dict[int, str]:
    """Apply the version policy to the children of a base path: version -> directory."""
    by_version: dict[int, str] = {}
    for child in sorted(children):
        version = parse_version(child)
        if version is not None:
            by_version[version] = os.path.join(config.base_path, child)
    policy = config.policy
    if policy.kind == "all":
        return by_version
    if policy.kind == "specific":
        return {v: p for v, p in by_version.items() if v in set(policy.versions)}
    newest = sorted(by_version, reverse=True)[: max(1, policy.num_versions)]
    return {v: by_version[v] for v in newest}


class ModelManager:
    """Owns every model's versions: polling, loading, warm-up, switching, retiring, status, labels."""

    def __init__(self, config: ServerConfig, metrics: ServingMetrics, batching: BatchScheduler | None = None,
                 loader: Callable[..., Servable] | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._batching = batching
        self._loader = loader or Servable.load
        self._lock = threading.Condition()
        self._models: dict[str, ModelEntry] = {}
        self._labels: Mapping[str, Mapping[str, int]] = MappingProxyType({})
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._unloaders: list[threading.Thread] = []

    # -----------------------------------------------------------------------------------------
    # Start / stop

    def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Apply the initial config, start polling, and (with `wait`) block until every model has a
        version AVAILABLE. As with TF Serving, a model whose initial load fails stops the start."""
        self.apply_config(self._config.models, initial=True)
        self._thread = threading.Thread(target=self._run, name="serving-manager", daemon=True)
        self._thread.start()
        if wait:
            self.wait_until_available([m.name for m in self._config.models], timeout=timeout, fail_on_error=True)

    def wait_until_available(self, names: Sequence[str], timeout: float | None = None,
                             fail_on_error: bool = False) -> None:
        """Block until each named model has an AVAILABLE version (ServerCore::WaitUntilModelsAvailable)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                pending, failed = [], []
                for name in names:
                    entry = self._models.get(name)
                    if entry is None:
                        continue
                    if any(v.state == State.AVAILABLE for v in entry.versions.values()):
                        continue
                    errors = [v for v in entry.versions.values() if v.state == State.END and v.error is not None]
                    live = [v for v in entry.versions.values() if v.state in (State.START, State.LOADING)]
                    if errors and not live and entry.polled and set(entry.aspired) <= entry.failed:
                        failed.append((name, errors[-1]))
                    else:
                        pending.append(name)
                if failed and fail_on_error:
                    detail = ", ".join(f"{{name: {n} version: {v.version}}} due to error: {v.error.message}"
                                       for n, v in failed if v.error)
                    raise ServingError(Code.UNKNOWN, f"{len(failed)} model(s) did not become available: {{{detail}}}")
                if not pending:
                    return
                if self._stop.is_set():
                    raise ServingError(Code.CANCELLED, "server stopped before models became available")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ServingError(Code.DEADLINE_EXCEEDED, f"models not available in time: {', '.join(pending)}")
                self._lock.wait(0.5 if remaining is None else min(0.5, remaining))

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop polling, then retire every version once its in-flight requests are done."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            entries = [(m, v) for m in self._models.values() for v in m.versions.values()
                       if v.state == State.AVAILABLE]
            for model, entry in entries:
                self._set_state(model.config.name, entry, State.UNLOADING)
        for model, entry in entries:
            self._finish_unload(model.config.name, entry, drain_timeout)
        for t in list(self._unloaders):
            t.join(drain_timeout)

    # -----------------------------------------------------------------------------------------
    # Config and labels

    def apply_config(self, models: Sequence[ModelConfig], initial: bool = False) -> None:
        """Install a new model list (labels, added / changed / removed models). Raises on bad labels."""
        with self._lock:
            new_labels = self._checked_labels(models)
            self._labels = MappingProxyType({n: MappingProxyType(dict(m)) for n, m in new_labels.items()})
            names = {m.name for m in models}
            for config in models:
                entry = self._models.get(config.name)
                if entry is None:
                    self._models[config.name] = ModelEntry(config=config)
                    log_event(log, logging.INFO, "model_added", model=config.name, base_path=config.base_path,
                               policy=config.policy.kind)
                elif entry.removed or entry.config != config:
                    entry.removed = False
                    entry.config = config
                    entry.polled = False
            for name, entry in self._models.items():
                if name not in names and not entry.removed:
                    entry.removed = True
                    entry.aspired = {}
                    log_event(log, logging.INFO, "model_removed", model=name)
            self._lock.notify_all()
        if not initial:
            self._wake.set()

    def _checked_labels(self, models: Sequence[ModelConfig]) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        allow = self._config.allow_version_labels_for_unavailable_models
        for config in models:
            entry = self._models.get(config.name)
            for label, version in config.labels.items():
                available = (entry is not None and version in entry.versions
                             and entry.versions[version].state == State.AVAILABLE)
                if not available:
                    existing = self._labels.get(config.name, {}).get(label)
                    if not allow or (existing is not None and existing != version):
                        raise ServingError(Code.FAILED_PRECONDITION,
                                           f"Request to assign label to version {version} of model {config.name}, "
                                           "which is not currently available for inference")
                result.setdefault(config.name, {})[label] = version
        return result

    # -----------------------------------------------------------------------------------------
    # Requests

    def acquire(self, spec: ModelSpec) -> Handle:
        """Resolve name/version/label to an AVAILABLE version and hold it. NOT_FOUND when there is none."""
        if not spec.name:
            raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        version = spec.version
        with self._lock:
            if spec.version_label is not None:
                version = self._labels.get(spec.name, {}).get(spec.version_label)
                if version is None:
                    raise ServingError(Code.INVALID_ARGUMENT,
                                       f"Unrecognized servable version label: {spec.version_label}")
            entry = self._models.get(spec.name)
            chosen: VersionEntry | None = None
            if entry is not None:
                if version is None:
                    for v in entry.versions.values():
                        if v.state == State.AVAILABLE and (chosen is None or v.version > chosen.version):
                            chosen = v
                else:
                    candidate = entry.versions.get(version)
                    if candidate is not None and candidate.state == State.AVAILABLE:
                        chosen = candidate
            if chosen is None:
                wanted = spec if version is None else spec.with_version(version)
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {wanted.describe()}")
            chosen.inflight += 1
            return Handle(self, chosen, spec.name)

    def _retain(self, entry: VersionEntry, model_name: str) -> Handle:
        with self._lock:
            entry.inflight += 1
            return Handle(self, entry, model_name)

    def _release(self, entry: VersionEntry) -> None:
        with self._lock:
            entry.inflight -= 1
            if entry.inflight == 0 and entry.state == State.UNLOADING:
                self._lock.notify_all()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: one version, or all versions of a model, newest first."""
        with self._lock:
            entry = self._models.get(name)
            versions = entry.versions if entry is not None else {}
            if version is not None:
                v = versions.get(version)
                if v is None:
                    raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
                chosen = [v]
            else:
                if not versions:
                    raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
                chosen = sorted(versions.values(), key=lambda v: v.version, reverse=True)
            return [VersionStatus(v.version, v.state, v.error.code if v.error else Code.OK,
                                  v.error.message if v.error else "") for v in chosen]

    def model_names(self) -> list[str]:
        with self._lock:
            return [n for n, e in self._models.items() if not e.removed]

    def inflight(self) -> int:
        with self._lock:
            return sum(v.inflight for m in self._models.values() for v in m.versions.values())

    # -----------------------------------------------------------------------------------------
    # The manager thread: poll, then act until nothing is left to do

    def _run(self) -> None:
        poll_every = self._config.file_system_poll_wait_seconds
        first = True
        while not self._stop.is_set():
            if first or poll_every > 0 or self._needs_poll():
                self._poll()
            first = False
            try:
                while not self._stop.is_set() and self._step():
                    pass
            except Exception:  # the manager thread must survive anything a model does
                log.exception("model manager step failed")
            self._wake.wait(poll_every if poll_every > 0 else None)
            self._wake.clear()

    def _needs_poll(self) -> bool:
        with self._lock:
            return any(not m.polled for m in self._models.values())

    def _poll(self) -> None:
        with self._lock:
            targets = [(name, m.config) for name, m in self._models.items() if not m.removed]
        for name, config in targets:
            try:
                children = os.listdir(config.base_path)
                error = None
            except OSError as exc:
                children, error = None, f"Could not find base path {config.base_path} for servable {name} with error {exc.strerror}"
            with self._lock:
                entry = self._models.get(name)
                if entry is None or entry.removed or entry.config != config:
                    continue
                if children is None:
                    if entry.poll_error != error:
                        log_event(log, logging.ERROR, "base_path_unreadable", model=name, error=error)
                    entry.poll_error = error
                    continue
                entry.poll_error = None
                aspired = aspired_versions(config, children)
                if not aspired and (entry.aspired or not entry.polled):
                    log_event(log, logging.WARNING, "no_versions_found", model=name, base_path=config.base_path,
                               hint="name version directories with integers, e.g. <base_path>/1/")
                entry.failed &= set(aspired)
                for version, path in aspired.items():
                    current = entry.versions.get(version)
                    if current is None or (current.state == State.END and version not in entry.failed):
                        entry.versions[version] = VersionEntry(version=version, path=path)
                        self._metrics.version_state(model=name, version=version, state=State.START.value)
                entry.aspired = aspired
                entry.polled = True
                self._lock.notify_all()

    def _step(self) -> bool:
        """Take one AvailabilityPreservingPolicy action for one model; False when there is nothing to do."""
        with self._lock:
            for name, model in list(self._models.items()):
                aspired = model.aspired
                serving = [v for v in model.versions.values() if v.state == State.AVAILABLE]
                unaspired_serving = [v for v in serving if v.version not in aspired]
                has_aspired_serving = any(v.version in aspired for v in serving)
                if unaspired_serving and (not aspired or has_aspired_serving or len(unaspired_serving) > 1):
                    victim = min(unaspired_serving, key=lambda v: v.version)
                    self._set_state(name, victim, State.UNLOADING)
                    self._spawn_unload(name, victim)
                    return True
                new = [v for v in aspired if v not in model.failed
                       and model.versions.get(v) is not None and model.versions[v].state == State.START]
                if new and not model.removed:
                    entry = model.versions[max(new)]
                    self._set_state(name, entry, State.LOADING)
                    break
                if model.removed and not serving and not any(
                        v.state in (State.LOADING, State.UNLOADING) for v in model.versions.values()):
                    del self._models[name]
                    return True
            else:
                return False
        self._load(name, entry)
        return True

    def _load(self, name: str, entry: VersionEntry) -> None:
        config = self._config
        attempts = 1 + config.max_num_load_retries
        error: ServingError | None = None
        servable: Servable | None = None
        for attempt in range(attempts):
            started = time.monotonic()
            log_event(log, logging.INFO, "version_loading", model=name, version=entry.version, model_path=entry.path,
                       attempt=attempt + 1)
            try:
                servable = self._loader(name, entry.version, entry.path, tags=config.saved_model_tags,
                                        batching=self._batching,
                                        method_name_check=config.enable_signature_method_name_check,
                                        intra_op=config.tensorflow_intra_op_parallelism,
                                        inter_op=config.tensorflow_inter_op_parallelism)
                self._metrics.load(model=name, version=entry.version, path=entry.path, ok=True,
                                   latency_s=time.monotonic() - started)
                if config.enable_model_warmup:
                    warm_start = time.monotonic()
                    try:
                        records = servable.warmup(config.num_request_iterations_for_warmup)
                    except Exception:
                        self._metrics.warmup(model=name, version=entry.version, path=entry.path, ok=False,
                                             latency_s=time.monotonic() - warm_start, records=0)
                        raise
                    self._metrics.warmup(model=name, version=entry.version, path=entry.path, ok=True,
                                         latency_s=time.monotonic() - warm_start, records=records)
                    if records:
                        log_event(log, logging.INFO, "version_warmed_up", model=name, version=entry.version, records=records,
                                   seconds=round(time.monotonic() - warm_start, 3))
                error = None
                break
            except Exception as exc:
                error = exc if isinstance(exc, ServingError) else ServingError(Code.UNKNOWN, f"{type(exc).__name__}: {exc}")
                if servable is not None:
                    servable.close()
                    servable = None
                else:
                    self._metrics.load(model=name, version=entry.version, path=entry.path, ok=False,
                                       latency_s=time.monotonic() - started)
                log_event(log, logging.ERROR, "version_load_failed", model=name, version=entry.version,
                           model_path=entry.path, attempt=attempt + 1, code=error.code.name, error=error.message)
            with self._lock:
                model = self._models.get(name)
                still_aspired = model is not None and entry.version in model.aspired
            if attempt + 1 < attempts and still_aspired and not self._stop.is_set():
                self._stop.wait(config.load_retry_interval_micros / 1e6)
            else:
                break
        with self._lock:
            if servable is not None and not self._stop.is_set():
                entry.servable = servable
                entry.error = None
                self._set_state(name, entry, State.AVAILABLE)
                log_event(log, logging.INFO, "version_available", model=name, version=entry.version, model_path=entry.path)
            else:
                if servable is not None:
                    servable.close()
                entry.error = error or ServingError(Code.CANCELLED, "server stopped during load")
                self._set_state(name, entry, State.END)
                model = self._models.get(name)
                if model is not None:
                    model.failed.add(entry.version)
            self._lock.notify_all()

    def _spawn_unload(self, name: str, entry: VersionEntry) -> None:
        t = threading.Thread(target=self._finish_unload, args=(name, entry, None), name=f"unload-{name}-{entry.version}",
                             daemon=True)
        self._unloaders = [u for u in self._unloaders if u.is_alive()]
        self._unloaders.append(t)
        t.start()

    def _finish_unload(self, name: str, entry: VersionEntry, timeout: float | None) -> None:
        """Wait until no request holds the version, then release it (END)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while entry.inflight > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    log_event(log, logging.WARNING, "unload_forced", model=name, version=entry.version,
                               inflight=entry.inflight)
                    break
                self._lock.wait(remaining if remaining is not None else 1.0)
            servable, entry.servable = entry.servable, None
        if servable is not None:
            servable.close()
        with self._lock:
            self._set_state(name, entry, State.END)
            self._forget_old(name)
            self._lock.notify_all()
        log_event(log, logging.INFO, "version_unloaded", model=name, version=entry.version)
        self._wake.set()

    def _forget_old(self, name: str) -> None:
        model = self._models.get(name)
        if model is None:
            return
        ended = sorted((v for v in model.versions.values() if v.state == State.END and v.version not in model.aspired),
                       key=lambda v: v.ended_at)
        for v in ended[:-_MAX_ENDED_VERSIONS] if len(ended) > _MAX_ENDED_VERSIONS else []:
            del model.versions[v.version]

    def _set_state(self, name: str, entry: VersionEntry, state: State) -> None:
        entry.state = state
        if state == State.END:
            entry.ended_at = time.monotonic()
        self._metrics.version_state(model=name, version=entry.version, state=state.value)

    # -----------------------------------------------------------------------------------------
    # Introspection for tests and the server

    def versions(self, name: str) -> Iterator[tuple[int, State]]:
        with self._lock:
            entry = self._models.get(name)
            items = [(v.version, v.state) for v in entry.versions.values()] if entry else []
        yield from sorted(items)
