"""Event sources (Python iterables, JSON-lines files, stdin) and micro-batching by size or time.

Every source yields :class:`~llm4rec_jax.data.events.Event` records in order; the learner counts the
records it has applied (its *stream position*) and a resumed learner skips that many records of a
source that starts again from its beginning (a file, a replayed log).
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from llm4rec_jax.data.events import Event, iter_jsonl, parse_each, parse_event
from llm4rec_jax.errors import DataError

Source = str | os.PathLike | Iterable[Any]


BAD_EVENTS = ('raise', 'skip')
TIME_ORDERS = ('any', 'raise', 'skip')


def open_events(source: Source, *, skip: int = 0, bad_events: str = 'raise',
                time_order: str = 'any', skipped: list[str] | None = None) -> Iterator[Event]:
  """Events of ``source``: a JSON-lines path (``.gz`` too), ``'-'`` for stdin, an open text stream,
  or an iterable of dicts / Events; the first ``skip`` records are dropped (resume).

  ``bad_events``: a malformed record (not JSON, unknown field, bad id or number) raises a DataError
  naming ``path:line`` and the field ('raise'), or is skipped ('skip'). ``time_order``: an
  interaction whose timestamp is before an earlier one's is accepted ('any'), an error ('raise') or
  skipped ('skip'). Each skipped record's message (with its line) is appended to ``skipped``.
  Records are checked before the resume skip, so a restarted stream skips the same ones; those
  before the resume position are not appended again (the run that applied the records around them
  reported them), so over a stopped and resumed stream each bad record is reported once.
  """
  if bad_events not in BAD_EVENTS:
    raise ValueError(f'bad_events must be one of {BAD_EVENTS}, got {bad_events!r}')
  if time_order not in TIME_ORDERS:
    raise ValueError(f'time_order must be one of {TIME_ORDERS}, got {time_order!r}')
  resumed = skip <= 0

  def record(error: DataError) -> None:
    if skipped is not None and resumed:
      skipped.append(str(error))
  on_error = record if bad_events == 'skip' else None
  if isinstance(source, (str, os.PathLike)):
    events = (iter_jsonl(sys.stdin, name='<stdin>', on_error=on_error) if str(source) == '-'
              else iter_jsonl(source, on_error=on_error))
  elif hasattr(source, 'readline'):
    events = iter_jsonl(source, on_error=on_error)
  else:
    events = parse_each(source, lambda r, n: parse_event(r, path='<iterator>', line=n), on_error)
  if time_order != 'any':
    name = ('<stdin>' if str(source) == '-' else str(source)) if isinstance(
        source, (str, os.PathLike)) else getattr(source, 'name', '<iterator>')
    events = _in_time_order(events, time_order == 'raise', record, str(name))
  if resumed:
    return iter(events)

  def after_resume() -> None:
    nonlocal resumed
    resumed = True
  return _resume_after(events, skip, after_resume)


def _resume_after(events: Iterable[Event], skip: int, on_resumed) -> Iterator[Event]:
  """``events`` from the ``skip + 1``-th on; ``on_resumed()`` runs once the first ``skip`` are
  consumed, before anything after them is read."""
  it = iter(events)
  for _ in itertools.islice(it, skip):
    pass
  on_resumed()
  yield from it


def _in_time_order(events: Iterable[Event], strict: bool, record, name: str) -> Iterator[Event]:
  latest = None
  for e in events:
    if e.is_interaction and e.timestamp is not None:
      if latest is not None and e.timestamp < latest:
        error = DataError(f'timestamp {e.timestamp:g} is before an earlier event\'s {latest:g} '
                          '(config.online.time_order)', path=name, line=e.line or None,
                          field='timestamp')
        if strict:
          raise error
        record(error)
        continue
      latest = e.timestamp
    yield e


_END = object()


def micro_batches(events: Iterable[Event], *, size: int, max_wait_s: float = 0.0,
                  window_s: float = 0.0) -> Iterator[list[Event]]:
  """Groups events into lists of at most ``size``.

  A partial batch is also closed when ``window_s`` > 0 and the next event's timestamp lies
  ``window_s`` or more after the batch's first (event time), or when ``max_wait_s`` > 0 seconds of
  wall time have passed since the batch's first event arrived (a slow live stream, e.g. stdin, then
  still gets timely updates; the source is read on a background thread).
  """
  if size <= 0:
    raise ValueError(f'micro-batch size must be positive, got {size}')
  if max_wait_s > 0:
    yield from _timed(events, size, max_wait_s, window_s)
    return
  batch: list[Event] = []
  for e in events:
    if batch and _window_closed(batch, e, window_s):
      yield batch
      batch = []
    batch.append(e)
    if len(batch) >= size:
      yield batch
      batch = []
  if batch:
    yield batch


def _window_closed(batch: list[Event], e: Event, window_s: float) -> bool:
  t0 = batch[0].timestamp
  return window_s > 0 and t0 is not None and e.timestamp is not None and e.timestamp - t0 >= window_s


def _timed(events: Iterable[Event], size: int, max_wait_s: float,
           window_s: float) -> Iterator[list[Event]]:
  q: queue.Queue = queue.Queue(maxsize=4 * size)
  stop = threading.Event()

  def read():
    try:
      for e in events:
        while not stop.is_set():
          try:
            q.put(e, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(_END)
    except BaseException as exc:  # pylint: disable=broad-except
      q.put(exc)  # re-raised on the consumer's thread, with its path:line message

  thread = threading.Thread(target=read, name='llm4rec-events', daemon=True)
  thread.start()
  batch: list[Event] = []
  deadline = None
  try:
    while True:
      timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
      try:
        item = q.get(timeout=timeout)
      except queue.Empty:
        yield batch
        batch, deadline = [], None
        continue
      if item is _END:
        break
      if isinstance(item, BaseException):
        raise item
      if batch and _window_closed(batch, item, window_s):
        yield batch
        batch, deadline = [], None
      if not batch:
        deadline = time.monotonic() + max_wait_s
      batch.append(item)
      if len(batch) >= size:
        yield batch
        batch, deadline = [], None
    if batch:
      yield batch
  finally:
    stop.set()
