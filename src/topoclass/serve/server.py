"""``topoclass serve``: check the optional libraries, load the models, run uvicorn until stopped."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from topoclass.errors import TopoclassError
from topoclass.logs import configure_logging
from topoclass.serve.answers import DEFAULT_ROWS
from topoclass.serve.limits import Limits
from topoclass.threads import PROCESSES_ENV

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

SETTINGS_ENV = "TOPOCLASS_SERVE_SETTINGS"  # read by the workers of ``serve --workers``

# Import name -> distribution, for the message when one is missing.
REQUIRED = {
    "fastapi": "fastapi",
    "fastapi_offline": "fastapi-offline",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "markdown": "markdown",
}


def require_serve_libraries() -> None:
    """A one-line TopoclassError naming the install command when a ``serve`` extra library is missing."""
    missing = []
    for module, distribution in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise TopoclassError(f'serving needs {", ".join(missing)}: pip install "topoclass[serve]"')


def check_address(host: str, port: int) -> None:
    """A one-line TopoclassError when ``host:port`` cannot be listened on (taken, or not this machine's),
    found before the models spend seconds loading."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        raise TopoclassError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ServeSettings:
    """What every server process builds its application from."""

    models: tuple[str, ...]  # bundled names or run directories, the first the default
    limits: Limits = field(default_factory=Limits)
    batching: bool = True
    cached_rows: int = DEFAULT_ROWS

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        return cls(**{**values, "models": tuple(values["models"]), "limits": Limits(**values["limits"])})


def run_server(
    settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1
) -> int:
    """Load the models once per process and answer on ``host:port`` until stopped, in ``workers``
    processes that share the port."""
    require_serve_libraries()
    if workers < 1:
        raise TopoclassError(f"--workers must be at least 1, not {workers}")
    if settings.cached_rows < 0:
        raise TopoclassError(f"--cache-rows must be at least 0, not {settings.cached_rows}")
    check_address(host, port)
    from topoclass.serve.registry import model_directories

    # Resolved here, so that a model that does not exist is one line before any process starts.
    directories = model_directories(settings.models).values()
    settings = replace(settings, models=tuple(str(directory) for directory in directories))
    import uvicorn

    address = f"Web page and API on http://{host}:{port} (API documentation at /docs)"
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if workers == 1:
        with _each_warning_once():
            app = build_app(settings)
            logger.info("%s", address)
            uvicorn.run(app, **options)
        return 0
    # uvicorn starts each worker as a new interpreter that builds its application from an import
    # string: the settings go with the environment, which the workers inherit.
    logger.info("%s, from %d processes once each has loaded the models", address, workers)
    with _environment({SETTINGS_ENV: settings.to_json(), PROCESSES_ENV: str(workers)}):
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **options)
    return 0


def build_app(settings: ServeSettings) -> FastAPI:
    """The application answering with ``settings.models``, loaded in this process."""
    from topoclass.serve.app import create_app
    from topoclass.serve.registry import load_models

    models = load_models(settings.models)
    app = create_app(models, settings.limits, batching=settings.batching, cached_rows=settings.cached_rows)
    # The loaded models are hundreds of thousands of objects that live as long as the server:
    # moved out of the collector's sight, full collections no longer walk them between requests.
    gc.collect()
    gc.freeze()
    return app


def worker_app() -> FastAPI:
    """A worker process's application (``serve --workers``), from the settings its parent left."""
    configure_logging(logging.WARNING, sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(OncePerMessage())
    # tqdm guards its (here disabled) bars with a multiprocessing semaphore by default; a worker
    # stopped by its supervisor leaves it behind and Python warns of a "leaked semaphore" at
    # every shutdown. Only this process's threads share the bars: a thread lock is enough.
    tqdm.set_lock(threading.RLock())
    return build_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


@contextmanager
def _each_warning_once() -> Iterator[None]:
    """A warning about a model (say, "trained on crystal structures" for formula requests) would
    otherwise repeat with every request: the log says it once. The filter leaves with the server:
    the process may go on logging (a test, a notebook)."""
    once = OncePerMessage()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class OncePerMessage(logging.Filter):
    """Lets each distinct topoclass warning through once; everything else always."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.name.startswith("topoclass"):
            return True
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True
