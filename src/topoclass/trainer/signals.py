"""Graceful stop on SIGTERM, SIGUSR1 and SIGINT.

Batch schedulers send SIGTERM (or SIGUSR1, e.g. Slurm's ``--signal``) some time
before killing a job; a user presses Ctrl-C. Inside :func:`install_stop_handlers`
the first such signal only raises a flag; the training loop polls it at a safe
point, writes a checkpoint and exits with :data:`EXIT_RESUMABLE`. A second
Ctrl-C means "now": it raises KeyboardInterrupt immediately.

The handler does no I/O at all (no logging, no printing): Python runs it
between two bytecodes of the main thread, which may be in the middle of a
logging call holding the logging lock, or of a write to the same stream.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from topoclass.errors import EXIT_RESUMABLE

__all__ = ["EXIT_RESUMABLE", "STOP_SIGNALS", "StopRequest", "StopRequested", "install_stop_handlers"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass
class StopRequest:
    """Set by the first stop signal; polled by the training loop.

    While ``immediate`` is set (data loading and featurization, where there is nothing to
    checkpoint and no safe point to poll at), the first signal also raises
    :class:`StopRequested` at once.
    """

    requested: bool = False
    signal_name: str | None = None
    immediate: bool = False


class StopRequested(BaseException):
    """A stop signal arrived while there was nothing to checkpoint yet: rerun to continue.

    A ``BaseException``, like ``KeyboardInterrupt``: code that turns a failing record into a
    reject (``except Exception``) must not turn a stop into one.
    """


@contextmanager
def install_stop_handlers() -> Iterator[StopRequest]:
    """Install the stop handlers for the duration of the ``with`` block, then restore the previous ones.

    Signal handlers can only be installed from the main thread; elsewhere this
    logs a warning and yields a request that never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        log.warning("Not in the main thread: stop signals will not be caught")
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        request.signal_name = signal.Signals(signum).name
        request.requested = True
        if request.immediate:
            raise StopRequested(f"stopped by {request.signal_name} while preparing the data; rerun to go on")

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, handle)
        yield request
    finally:
        for signum, handler in previous.items():
            # None means a handler installed outside Python; the default is the closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
