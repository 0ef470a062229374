from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from topoclass.trainer.signals import EXIT_RESUMABLE, STOP_SIGNALS, install_stop_handlers

pytestmark = pytest.mark.integration  # starts topoclass processes

# Stands in for a training loop: polls the flag, "checkpoints" and exits resumable.
# With IGNORE_FLAG it keeps running, so a second Ctrl-C is needed to stop it.
_LOOP = textwrap.dedent(
    """
    import sys, time
    from topoclass.trainer.signals import EXIT_RESUMABLE, install_stop_handlers
    ignore_flag = sys.argv[1] == "IGNORE_FLAG"
    try:
        with install_stop_handlers() as stop:
            print("ready", flush=True)
            announced = False
            while True:
                time.sleep(0.01)
                if stop.requested and not announced:
                    print("stop", stop.signal_name, flush=True)
                    announced = True
                    if not ignore_flag:
                        sys.exit(EXIT_RESUMABLE)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


def _start(mode: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", _LOOP, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_first_signal_sets_the_flag_and_the_loop_exits_resumable(signum):
    process = _start("EXIT")
    process.send_signal(signum)
    out, err = process.communicate(timeout=10)
    assert process.returncode == EXIT_RESUMABLE, err
    assert out.strip() == f"stop {signal.Signals(signum).name}"


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_sigint_after_a_stop_request_interrupts_immediately(first):
    process = _start("IGNORE_FLAG")
    process.send_signal(first)
    assert process.stdout.readline().strip() == f"stop {first.name}"
    process.send_signal(signal.SIGTERM)  # repeats of a non-interrupt signal change nothing
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130, err
    assert out.strip() == "interrupted"


def test_flag_in_process_and_previous_handlers_restored():
    def custom_handler(signum, frame):
        pass

    before = signal.signal(signal.SIGUSR1, custom_handler)
    try:
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        with install_stop_handlers() as stop:
            assert not stop.requested and stop.signal_name is None
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.requested and stop.signal_name == "SIGUSR1"
        assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == previous
        assert signal.getsignal(signal.SIGUSR1) is custom_handler
    finally:
        signal.signal(signal.SIGUSR1, before)
