"""``topoclass serve``: check the optional libraries, load the models, run uvicorn until stopped."""

from __future__ import annotations

import gc
import importlib
import logging
import socket
from collections.abc import Sequence

from topoclass.errors import TopoclassError
from topoclass.serve.limits import Limits

logger = logging.getLogger(__name__)

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


def run_server(
    models: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    batching: bool = True,
) -> int:
    """Load ``models`` (bundled names or run directories) once and answer on ``host:port`` until stopped."""
    require_serve_libraries()
    check_address(host, port)
    import uvicorn

    # A warning about a model (say, "trained on crystal structures" for formula requests) would
    # otherwise repeat with every request: the log says it once.
    # The filter leaves with the server: the process may go on logging (a test, a notebook).
    once = OncePerMessage()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        from topoclass.serve.app import create_app
        from topoclass.serve.registry import load_models

        app = create_app(load_models(models), limits or Limits(), batching=batching)
        # The loaded models are hundreds of thousands of objects that live as long as the server:
        # moved out of the collector's sight, full collections no longer walk them between requests.
        gc.collect()
        gc.freeze()
        logger.info("Web page and API on http://%s:%d (API documentation at /docs)", host, port)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        for handler in handlers:
            handler.removeFilter(once)
    return 0


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
