"""Training metrics to TensorBoard event files, JSON lines and the console (process 0 only)."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any

import tqdm

from llm4rec_jax import workdir as workdir_lib

_LOG = logging.getLogger('llm4rec')
if not _LOG.handlers:
  _handler = logging.StreamHandler(sys.stderr)
  _handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  _LOG.addHandler(_handler)
  _LOG.propagate = False


class MetricLogger:
  """Writes ``train_log.jsonl`` (every step's metrics), ``events.jsonl`` (evaluations, start/stop
  records) and TensorBoard scalars under ``WORKDIR/tensorboard``."""

  def __init__(self, workdir: pathlib.Path, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(workdir / 'tensorboard'))
      self._steps = open(workdir_lib.path(workdir, workdir_lib.TRAIN_LOG), 'a', encoding='utf-8')
      self._events = open(workdir_lib.path(workdir, workdir_lib.EVENTS), 'a', encoding='utf-8')

  def step(self, step: int, metrics: dict[str, float]) -> None:
    if self.enabled:
      self._steps.write(json.dumps({'step': step, **metrics}) + '\n')

  def scalars(self, step: int, values: dict[str, Any]) -> None:
    if self.enabled:
      for k, v in values.items():
        if isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def info(self, record: dict[str, Any]) -> None:
    if self.enabled:
      self._events.write(json.dumps(record, default=str) + '\n')
      self._events.flush()
      self._steps.flush()
      _LOG.info('%s', json.dumps(record, default=str))

  def progress(self, total: int, initial: int):
    return tqdm.tqdm(total=total, initial=initial, disable=not self.enabled, unit='step',
                     dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._steps.close()
      self._events.close()
