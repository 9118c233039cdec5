"""Preemption: SIGTERM/SIGINT end the training loop at a step every process agrees on, with a
checkpoint, so ``train`` on the same workdir resumes exactly."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np


class StopFlag:
  """Set by SIGTERM/SIGINT so the loop can save a checkpoint and exit cleanly."""

  def __init__(self):
    self.signal: int | None = None

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
      signal.signal(s, lambda signum, _frame: setattr(self, 'signal', signum))
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)

  def agreed(self, step: int, every: int) -> int | None:
    """The signal to stop on at ``step``, the same on every process.

    A preemption may reach the processes of a multi-host run at different steps, and a process that
    left the loop alone would hang the others in their next collective. So with several processes
    the flags are compared on every ``every``-th step (log steps, which sync the host anyway) and
    all processes stop at the same step.
    """
    if jax.process_count() == 1:
      return self.signal
    if step % every:
      return None
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.int32(self.signal or 0))
    return int(np.max(flags)) or None
