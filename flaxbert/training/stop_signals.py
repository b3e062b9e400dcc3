"""SIGTERM and SIGINT (a preemption, Ctrl-C) ask a training run to save and stop, never end it mid-way.

`StopRequest` is what the training loop holds while it runs: a signal sets its flag, and the loop
saves and stops at the next step boundary, every process of a multi-process run at the same step
(flaxbert.training.loop.StopAgreement). `deferred()` is what a training command holds from before
it imports JAX to its end: a signal that arrives while the job starts (joins the other processes,
reads data, restores, compiles) is recorded rather than ending the process, and the next loop to
start takes it over, so that the run stops at the first step all its processes agree on. Ending at
once instead would leave the other processes of a multi-process run waiting in a collective that
the ended one never joins. A second Ctrl-C while the job starts quits at once.

No JAX here: the command installs `deferred()` before the seconds that importing JAX takes.
"""
import contextlib
import signal
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: list[str] = []  # the signal deferred() recorded and no loop has taken yet


class StopRequest:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at the next step boundary. A
  signal that `deferred()` recorded before the loop began counts as received now."""

  def __init__(self):
    self.signal = _pending.pop() if _pending else None
    self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

  def _handle(self, signum, _frame):
    self.signal = signal.Signals(signum).name

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _record(signum, _frame):
  name = signal.Signals(signum).name
  if name == "SIGINT" and name in _pending:
    raise KeyboardInterrupt  # Ctrl-C twice: quit now
  _pending[:] = [name]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """SIGTERM/SIGINT outside the training loop are recorded for the next loop (see the module's
  docstring) for the block; the previous handlers are put back after it."""
  previous = {s: signal.signal(s, _record) for s in SIGNALS}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _pending.clear()
