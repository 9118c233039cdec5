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

from llm4rec_jax.data.events import Event, iter_jsonl, parse_event

Source = str | os.PathLike | Iterable[Any]


def open_events(source: Source, *, skip: int = 0) -> Iterator[Event]:
  """Events of ``source``: a JSON-lines path (``.gz`` too), ``'-'`` for stdin, an open text stream,
  or an iterable of dicts / Events; the first ``skip`` records are dropped (resume)."""
  if isinstance(source, (str, os.PathLike)):
    events = iter_jsonl(sys.stdin, name='<stdin>') if str(source) == '-' else iter_jsonl(source)
  elif hasattr(source, 'readline'):
    events = iter_jsonl(source)
  else:
    events = (parse_event(r, path='<iterator>', line=n) for n, r in enumerate(source, start=1))
  return itertools.islice(events, skip, None)


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
