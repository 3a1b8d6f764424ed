"""Starting a run from the page: only a config from the folders the server was started with,
only a few overrides, validated by the same schema as ``--set`` before anything starts, never a
config that imports the user's code unless the server was told so; the run itself is
``python -m precision_suite.cli run`` in a child process (the server never imports a framework),
one at a time, writing an ordinary run directory under the served folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from precision_suite.backends import RegistryError
from precision_suite.config import ConfigError, apply_overrides, load_config, parse_yaml, user_code_keys
from precision_suite.plan import check_backends
from precision_suite.serve.runs import SERVE_FILE

# Override keys the page accepts (a key, or a prefix followed by "."): what to run, never where
# data comes from or which code is imported.
ALLOWED_OVERRIDES = (
    "seeds",
    "train.epochs",
    "train.steps",
    "train.batch_size",
    "backends.names",
    "backends.policies",
    "speed.enabled",
    "speed.rounds",
)
STOP_TIMEOUT_S = 30


class StartError(Exception):
    """A start the page refuses: one line, and the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def packaged_configs_dir() -> Path:
    try:
        return Path(str(resources.files("precision_suite.configs")))
    except ModuleNotFoundError:  # a source tree that was never installed
        return Path(__file__).resolve().parents[2] / "configs"


def list_configs(extra_dirs: list[Path]) -> dict[str, Path]:
    """The configs a page may start, by the name it shows: ``smoke.yaml`` (packaged) and
    ``DIRNAME/x.yaml`` for each ``--configs DIR``."""
    out = {path.name: path for path in sorted(packaged_configs_dir().glob("*.yaml"))}
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*.yaml")):
            out[f"{Path(folder).name}/{path.name}"] = path
    return out


def user_code(raw: Any) -> list[str]:
    """The keys by which a config would import the user's code (``config.user_code_keys``)."""
    return user_code_keys(raw)


def parse_overrides(text: str) -> list[str]:
    """One ``KEY=VALUE`` per non-empty line, each key one the page allows."""
    items = [line.strip() for line in text.splitlines() if line.strip()]
    for item in items:
        key = item.partition("=")[0].strip()
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in ALLOWED_OVERRIDES):
            raise StartError(f"override {key!r} is not allowed from the page; allowed: {', '.join(ALLOWED_OVERRIDES)}")
    return items


def check_config(name: str, path: Path, overrides: list[str], allow_user_code: bool) -> None:
    """Refuse a config the page must not start: user code (403) or one the schema rejects (400)."""
    try:
        raw = apply_overrides(parse_yaml(path.read_text(), name) or {}, overrides)
    except ConfigError as exc:
        raise StartError(str(exc)) from None
    if (keys := user_code(raw)) and not allow_user_code:
        raise StartError(
            f"{name} imports user code ({'; '.join(keys)}): not startable from the page unless the server "
            f"was started with --allow-user-code",
            status=403,
        )
    try:
        # The checks `run` makes before any job (known backends, their policies and options):
        # backend classes import no framework.
        check_backends(load_config(path, overrides), name)
    except (ConfigError, RegistryError) as exc:
        raise StartError(str(exc).replace(str(path), name)) from None


@dataclass
class ActiveRun:
    name: str  # relative to the served folder
    process: subprocess.Popen
    log: Any
    started: float = field(default_factory=time.time)

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()


class Launcher:
    """One run at a time, started as a child process; stopped when the server stops."""

    def __init__(self, root: Path, config_dirs: list[Path], allow_user_code: bool) -> None:
        self.root = root
        self.config_dirs = config_dirs
        self.allow_user_code = allow_user_code
        self.active: ActiveRun | None = None
        self._lock = threading.Lock()

    def configs(self) -> dict[str, Path]:
        return list_configs(self.config_dirs)

    def start(self, config: str, overrides_text: str) -> str:
        """Validate and start; returns the new run's name (its folder under the served one)."""
        configs = self.configs()
        if config not in configs:
            raise StartError(f"unknown config {config!r}; known: {', '.join(configs)}")
        overrides = parse_overrides(overrides_text)
        check_config(config, configs[config], overrides, self.allow_user_code)
        with self._lock:
            if self.active is not None and self.active.exit_code is None:
                raise StartError(f"a run is already in progress ({self.active.name}); one at a time", status=409)
            stem = Path(config).stem.replace("/", "-")
            name = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{stem}"
            out = self.root / name
            out.mkdir(parents=True)
            (out / SERVE_FILE).write_text(json.dumps({"config": config, "overrides": overrides}, indent=1) + "\n")
            command = [sys.executable, "-m", "precision_suite.cli", "run", str(configs[config]), "--out", str(out)]
            for item in overrides:
                command += ["--set", item]
            log = open(out / "serve.log", "wb")
            env = {**os.environ, "COLUMNS": "160"}
            process = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
            self.active = ActiveRun(name, process, log)
        return name

    def state(self) -> dict[str, Any] | None:
        active = self.active
        if active is None:
            return None
        code = active.exit_code
        if code is not None and not active.log.closed:
            active.log.close()
        return {
            "name": active.name,
            "running": code is None,
            "exit_code": code,
            "elapsed_s": time.time() - active.started,
        }

    def stop(self) -> None:
        """Stop a run still going (SIGTERM: the runner keeps its finished records), then kill."""
        active = self.active
        if active is None:
            return
        if active.exit_code is None:
            active.process.terminate()
            try:
                active.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                active.process.kill()
                active.process.wait(STOP_TIMEOUT_S)
        active.log.close()
