"""Model versions: which to serve, loading and unloading them, labels, and their states.

TF Serving's file-system source and availability-preserving manager, in one class:

- a model's versions are the integer-named subdirectories of its `base_path` (other names are
  skipped); its `model_version_policy` picks the aspired ones: `latest { num_versions: n }`
  (default, n = 1), `all {}` or `specific { versions: ... }`;
- the base path is polled every `file_system_poll_wait_seconds` (0: once per config, < 0:
  never); each poll applies TF's AvailabilityPreservingPolicy: unload an un-aspired version only
  once an aspired one is AVAILABLE (or none is aspired), and load the highest new aspired
  version. A new version is loaded and warmed up before it becomes AVAILABLE, so a swap never
  leaves a request without a version;
- a version that fails to load (after `max_num_load_retries` retries) ends in END with its
  error, and is not tried again while it stays aspired; the old version keeps serving;
- version labels come with the config and may point only at AVAILABLE versions (unless
  `allow_version_labels_for_unavailable_models`, for labels not yet assigned elsewhere).

Requests read an immutable snapshot of the servable versions, so they never wait for a load.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

import grpc
import tensorflow as tf

from serving.model_server.config import validate_model_config_list
from serving.model_server.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    not_found,
)
from serving.model_server.servable import Servable

logger = logging.getLogger("serving.model_server")

LoadFn = Callable[[str, int, str], Servable]


class State(enum.IntEnum):
    """`ModelVersionStatus.State` of get_model_status.proto."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None


class _Version:
    """A version the manager knows about. `managed`: still in the manager (TF's harness)."""

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        self.state = State.START
        self.servable: Servable | None = None
        self.error: ServingError | None = None
        self.aspired = True
        self.managed = True


class _Model:
    def __init__(self, config):
        self.name = config.name
        self.config = config  # ModelConfig proto; None once removed from the config
        self.versions: dict[int, _Version] = {}


_VERSION_DIR = re.compile(r"[+-]?\d+")


def _version_dirs(base_path: str) -> dict[int, str] | None:
    """Integer-named children of `base_path` -> their paths; None if `base_path` is missing."""
    if not tf.io.gfile.isdir(base_path):
        return None
    found: dict[int, str] = {}
    for child in sorted(tf.io.gfile.listdir(base_path)):
        child = child.rstrip("/")
        if _VERSION_DIR.fullmatch(child):
            path = tf.io.gfile.join(base_path, child)
            if tf.io.gfile.isdir(path):
                found[int(child)] = path
    return found


def aspired_versions(config, found: dict[int, str]) -> dict[int, str]:
    """The versions the model's `model_version_policy` serves among `found`."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return dict(found)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        for version in sorted(wanted - set(found)):
            logger.warning("Version %d of servable %s, which was requested to be served as a "
                           "'specific' version in the servable's version policy, was not "
                           "found in the file system", version, config.name)
        return {v: p for v, p in found.items() if v in wanted}
    count = max(policy.latest.num_versions, 1)
    return {v: found[v] for v in sorted(found, reverse=True)[:count]}


class ModelManager:
    """Loads, serves and unloads the versions of the configured models."""

    def __init__(self, load: LoadFn, poll_wait_seconds: float = 1, max_num_load_retries: int = 5,
                 load_retry_interval_s: float = 60.0,
                 allow_version_labels_for_unavailable_models: bool = False):
        self._load_fn = load
        self._poll_wait = poll_wait_seconds
        self._retries = max(0, max_num_load_retries)
        self._retry_interval = max(0.0, load_retry_interval_s)
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: dict[str, _Model] = {}
        self._config = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._actions = threading.Lock()  # one poll / load / unload sequence at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Read by requests without a lock; replaced whole on every change.
        self._serving: dict[str, dict[int, Servable]] = {}
        self._latest: dict[str, Servable] = {}
        self._labels: dict[str, dict[str, int]] = {}

    # -- requests --------------------------------------------------------------------------

    def resolve(self, model_spec) -> Servable:
        """The servable a ModelSpec names (ServerCore::ServableRequestFromModelSpec)."""
        name = model_spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        if choice is None:
            servable = self._latest.get(name)
            if servable is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servable
        if choice == "version":
            version = model_spec.version.value
        else:
            label = model_spec.version_label
            version = self._labels.get(name, {}).get(label)
            if version is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
        servable = self._serving.get(name, {}).get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def statuses(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every version the manager has seen, highest first."""
        with self._lock:
            model = self._models.get(name)
            versions = model.versions if model else {}
            if version is not None:
                if version not in versions:
                    raise not_found(f"Could not find version {version} of model {name}")
                chosen = [versions[version]]
            else:
                if not versions:
                    raise not_found(f"Could not find any versions of model {name}")
                chosen = [versions[v] for v in sorted(versions, reverse=True)]
            return [VersionStatus(v.version, v.state, v.error) for v in chosen]

    def labels(self, name: str) -> dict[str, int]:
        return dict(self._labels.get(name, {}))

    @property
    def config(self):
        return self._config

    # -- configuration ---------------------------------------------------------------------

    def reload_config(self, config, wait_timeout: float | None = None,
                      is_cancelled: Callable[[], bool] = lambda: False) -> None:
        """ServerCore::ReloadConfig: validates, assigns labels, polls, waits for new models."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by "
                                   "HandleReloadConfigRequest. Only ModelConfigList is "
                                   "currently supported")
        validate_model_config_list(config.model_config_list)
        new_names = {m.name for m in config.model_config_list.config}
        with self._actions:
            old_names = set(self._configured_names())
            labels = self._checked_labels(config)
            with self._lock:
                self._config = config
                for model_config in config.model_config_list.config:
                    model = self._models.setdefault(model_config.name, _Model(model_config))
                    model.config = model_config
                for name in old_names - new_names:
                    self._models[name].config = None
                self._labels = labels
            if self._poll_wait >= 0:
                self._poll_all()
        self._wait_for(sorted(new_names - old_names), wait_timeout, is_cancelled)

    def _configured_names(self) -> Iterable[str]:
        return [name for name, model in self._models.items() if model.config is not None]

    def _checked_labels(self, config) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap."""
        labels: dict[str, dict[str, int]] = {}
        for model_config in config.model_config_list.config:
            name = model_config.name
            model = self._models.get(name)
            for label, version in model_config.version_labels.items():
                allowed = False
                if self._allow_unavailable_labels:
                    existing = self._labels.get(name, {}).get(label)
                    allowed = existing is None or existing == version
                entry = model.versions.get(version) if model else None
                if not allowed and (entry is None or entry.state != State.AVAILABLE):
                    raise failed_precondition(
                        f"Request to assign label to version {version} of model {name}, "
                        "which is not currently available for inference")
                labels.setdefault(name, {})[label] = version
        return labels

    def _wait_for(self, names: list[str], timeout: float | None,
                  is_cancelled: Callable[[], bool]) -> None:
        """WaitUntilModelsAvailable: each new model AVAILABLE, or its load has failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                pending = [n for n in names if not self._settled(self._models[n])]
                if not pending:
                    break
                if is_cancelled() or (deadline is not None and time.monotonic() >= deadline):
                    raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"Models {pending} have no version yet: waited for a "
                                       "numbered version directory under their base paths")
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                self._changed.wait(max(0.01, remaining))
            failed = [self._models[n] for n in names if not self._has_available(self._models[n])]
        if failed:
            parts = []
            for model in failed:
                for entry in model.versions.values():
                    if entry.error is not None and entry.managed:
                        parts.append(f"{{{{name: {model.name} version: {entry.version}}} due to "
                                     f"error: {entry.error}}}, ")
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"{len(failed)} model(s) did not become available: "
                               f"{{{''.join(parts)}}}")

    @staticmethod
    def _has_available(model: _Model) -> bool:
        return any(v.state == State.AVAILABLE for v in model.versions.values())

    def _settled(self, model: _Model) -> bool:
        if self._has_available(model):
            return True
        aspired = [v for v in model.versions.values() if v.managed and v.aspired]
        return bool(aspired) and all(v.state == State.END for v in aspired)

    # -- polling ---------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Polls every `poll_wait_seconds` in a daemon thread (none when it is <= 0)."""
        if self._poll_wait <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="fs_poll", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        """One poll of every model's base path (and the loads/unloads it leads to)."""
        with self._actions:
            self._poll_all()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_wait):
            try:
                self.poll()
            except Exception:  # noqa: BLE001  (the poll thread must outlive a bad poll)
                logger.exception("File-system poll failed")

    def _poll_all(self) -> None:
        for model in list(self._models.values()):
            if self._stop.is_set():
                return
            if model.config is None:
                aspired: dict[int, str] | None = {}
            else:
                found = _version_dirs(model.config.base_path)
                if found is None:
                    logger.error("Could not find base path %s for servable %s",
                                 model.config.base_path, model.name)
                    continue
                aspired = aspired_versions(model.config, found)
                if not aspired:
                    logger.warning("No versions of servable %s found under base path %s. Did "
                                   "you forget to name your leaf directory as a number "
                                   "(eg. '/1/')?", model.name, model.config.base_path)
            self._set_aspired(model, aspired)
            self._apply_policy(model)

    def _set_aspired(self, model: _Model, aspired: dict[int, str]) -> None:
        with self._lock:
            for entry in model.versions.values():
                if entry.managed:
                    entry.aspired = entry.version in aspired
            for version, path in aspired.items():
                entry = model.versions.get(version)
                if entry is None or not entry.managed:
                    model.versions[version] = _Version(version, path)
            self._changed.notify_all()

    def _apply_policy(self, model: _Model) -> None:
        """AvailabilityPreservingPolicy, one action at a time until there is none."""
        while not self._stop.is_set():
            with self._lock:
                self._retire_unaspired(model)
                managed = [v for v in model.versions.values() if v.managed]
                has_aspired = any(v.aspired for v in managed)
                aspired_serving = any(v.aspired and v.state == State.AVAILABLE for v in managed)
                unaspired_serving = [v for v in managed
                                     if not v.aspired and v.state == State.AVAILABLE]
                new = [v for v in managed if v.aspired and v.state == State.START]
            if unaspired_serving and (not has_aspired or aspired_serving
                                      or len(unaspired_serving) > 1):
                self._unload(model, min(unaspired_serving, key=lambda v: v.version))
            elif new:
                self._load(model, max(new, key=lambda v: v.version))
            else:
                return

    def _retire_unaspired(self, model: _Model) -> None:
        """Versions no longer aspired that never loaded, or failed, leave the manager."""
        for entry in model.versions.values():
            if entry.managed and not entry.aspired and entry.state in (State.START, State.END):
                entry.state = State.END
                entry.managed = False

    def _load(self, model: _Model, entry: _Version) -> None:
        with self._lock:
            entry.state = State.LOADING
            self._changed.notify_all()
        logger.info("Loading servable version {name: %s version: %d}", model.name, entry.version)
        servable, error = None, None
        for attempt in range(self._retries + 1):
            try:
                servable = self._load_fn(model.name, entry.version, entry.path)
                break
            except ServingError as e:
                error = e
            except Exception as e:  # noqa: BLE001  (a bad model must not stop the manager)
                error = internal(f"Loading {entry.path} failed: {type(e).__name__}: {e}")
            logger.error("Loading servable version {name: %s version: %d} failed (attempt %d "
                         "of %d): %s", model.name, entry.version, attempt + 1,
                         self._retries + 1, error)
            if attempt < self._retries and self._stop.wait(self._retry_interval):
                break
        with self._lock:
            if servable is not None:
                entry.servable, entry.state, entry.error = servable, State.AVAILABLE, None
                self._publish()
                logger.info("Successfully loaded servable version {name: %s version: %d}",
                            model.name, entry.version)
            else:
                entry.state, entry.error = State.END, error
            self._changed.notify_all()

    def _unload(self, model: _Model, entry: _Version) -> None:
        with self._lock:
            entry.state = State.UNLOADING
            self._publish()
            self._changed.notify_all()
        with self._lock:
            entry.servable = None
            entry.state = State.END
            entry.managed = False
            self._changed.notify_all()
        logger.info("Done unloading servable version {name: %s version: %d}", model.name,
                    entry.version)

    def _publish(self) -> None:
        """Rebuilds the request-side snapshot (caller holds the lock)."""
        serving: dict[str, dict[int, Servable]] = {}
        for name, model in self._models.items():
            available = {v.version: v.servable for v in model.versions.values()
                         if v.state == State.AVAILABLE and v.servable is not None}
            if available:
                serving[name] = available
        self._serving = serving
        self._latest = {name: versions[max(versions)] for name, versions in serving.items()}

    # -- shutdown --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops polling and unloads every version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._actions:
            for model in list(self._models.values()):
                for entry in list(model.versions.values()):
                    if entry.state == State.AVAILABLE:
                        self._unload(model, entry)
