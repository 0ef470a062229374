"""``topoclass serve`` on the command line: bad arguments and missing libraries are one line, exit 2."""

from __future__ import annotations

import sys

import pytest

from topoclass.api import bundled_model_dir
from topoclass.cli import build_parser, main


def test_defaults_bind_this_machine_only():
    args = build_parser().parse_args(["serve", "tang2019"])
    assert (args.host, args.port, args.models) == ("127.0.0.1", 8000, ["tang2019"])
    assert (args.max_rows, args.max_atoms, args.no_batching) == (1000, 500, False)
    assert (args.workers, args.cache_rows) == (1, 10_000)


def test_missing_serve_libraries_name_the_install_command(monkeypatch, capsys):
    for module in ("fastapi", "fastapi_offline", "uvicorn"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    assert main(["serve", "tang2019"]) == 2
    error = capsys.readouterr().err
    needs = "serving needs fastapi, fastapi-offline, uvicorn"
    assert error == f'topoclass: error: {needs}: pip install "topoclass[serve]"\n'


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (["nothing"], "'nothing' is neither a run directory nor a bundled model"),
        (["tang2019", str(bundled_model_dir("tang2019"))], "two models are named 'tang2019'"),
    ],
    ids=["unknown", "same-name"],
)
def test_bad_models_are_one_line_before_anything_loads(models, message, capsys):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    assert main(["serve", *models]) == 2
    error = capsys.readouterr().err
    assert error.startswith("topoclass: error: ") and message in error and error.count("\n") == 1


def test_the_server_log_says_each_topoclass_warning_once():
    import logging

    from topoclass.serve.server import OncePerMessage

    once = OncePerMessage()

    def passes(name: str, level: int, message: str) -> bool:
        return once.filter(logging.LogRecord(name, level, __file__, 1, message, None, None))

    assert passes("topoclass.api", logging.WARNING, "trained on structures")
    assert not passes("topoclass.api", logging.WARNING, "trained on structures")
    assert passes("topoclass.api", logging.WARNING, "another warning")
    assert passes("topoclass.api", logging.INFO, "info") and passes("topoclass.api", logging.INFO, "info")
    assert passes("uvicorn.error", logging.WARNING, "w") and passes("uvicorn.error", logging.WARNING, "w")


def test_a_taken_port_or_a_zero_limit_is_one_line_before_anything_loads(capsys):
    import socket

    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "tang2019", "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith(f"topoclass: error: cannot listen on 127.0.0.1:{port}: ") and error.count("\n") == 1
    )
    assert main(["serve", "tang2019", "--max-rows", "0"]) == 2
    assert capsys.readouterr().err == "topoclass: error: --max-rows must be at least 1, not 0\n"
    assert main(["serve", "tang2019", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "topoclass: error: --workers must be at least 1, not 0\n"
    assert main(["serve", "tang2019", "--cache-rows", "-1"]) == 2
    assert capsys.readouterr().err == "topoclass: error: --cache-rows must be at least 0, not -1\n"
