"""Counting XLA compilations, to check that an online learner compiles nothing after warm-up.

JAX reports every backend compilation to :mod:`jax.monitoring` as the duration event
``/jax/core/compile/backend_compile_duration`` (``jax._src.dispatch.BACKEND_COMPILE_EVENT``). One
process-wide listener is registered on first use; :class:`CompileCounter` reads it::

  with CompileCounter() as c:
    learner.learn(events)
  assert c.count == 0, c.seconds
"""

from __future__ import annotations

import threading
from typing import Any

import jax

BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'

_lock = threading.Lock()
_totals = {'count': 0, 'seconds': 0.0}
_registered = False


def _listener(event: str, duration: float, **kwargs: Any) -> None:
  del kwargs
  if event == BACKEND_COMPILE_EVENT:
    with _lock:
      _totals['count'] += 1
      _totals['seconds'] += float(duration)


def _ensure_listener() -> None:
  global _registered  # pylint: disable=global-statement
  with _lock:
    if not _registered:
      jax.monitoring.register_event_duration_secs_listener(_listener)
      _registered = True


def total() -> tuple[int, float]:
  """(backend compilations, seconds spent in them) since the listener was registered."""
  _ensure_listener()
  with _lock:
    return _totals['count'], _totals['seconds']


class CompileCounter:
  """Backend compilations between ``start()`` (or ``__enter__``) and now (or ``__exit__``)."""

  def __init__(self):
    self._start = (0, 0.0)
    self._stop: tuple[int, float] | None = None

  def start(self) -> CompileCounter:
    self._start, self._stop = total(), None
    return self

  def stop(self) -> CompileCounter:
    self._stop = total()
    return self

  def __enter__(self) -> CompileCounter:
    return self.start()

  def __exit__(self, *exc: Any) -> None:
    self.stop()

  @property
  def count(self) -> int:
    end = self._stop or total()
    return end[0] - self._start[0]

  @property
  def seconds(self) -> float:
    end = self._stop or total()
    return end[1] - self._start[1]
