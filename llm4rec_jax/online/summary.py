"""What one :meth:`~llm4rec_jax.online.learner.OnlineLearner.run` did, as logged and reported."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4rec_jax import metrics as metrics_lib


@dataclasses.dataclass
class RunSummary:
  """What :meth:`OnlineLearner.run` did (this run only: a resumed run counts from its resume
  position)."""
  events: int = 0  # interactions learned from
  records: int = 0  # records consumed (interactions + item registrations)
  steps: int = 0
  new_items: int = 0
  seconds: float = 0.0
  # learn() wall time per micro-batch; with online.sync_every > 1 the device may still be running
  # the step when learn() returns (the time then shows at the next sync).
  step_latency_ms: list[float] = dataclasses.field(default_factory=list)
  ranks: list[int] = dataclasses.field(default_factory=list)  # prequential, when evaluated
  position: int = 0
  compilations: int = 0  # XLA compilations during the run (0 after warm_up for known sizes)
  snapshots: int = 0  # snapshots written during the stream (online.snapshot_every[_s]; + 1 at the end)
  # Bad records this run skipped (online.bad_events / time_order), each message with its line.
  skipped: list[str] = dataclasses.field(default_factory=list)

  def to_json(self, ks: Sequence[int] = (10,)) -> dict[str, Any]:
    # The first step compiles; it is reported apart from the latency percentiles.
    lat = np.asarray(self.step_latency_ms[1:] or self.step_latency_ms or [np.nan])
    out = {'events': self.events, 'records': self.records, 'steps': self.steps,
           'new_items': self.new_items, 'seconds': round(self.seconds, 3),
           'events_per_s': round(self.events / max(self.seconds, 1e-9), 1),
           'update_latency_ms_p50': round(float(np.percentile(lat, 50)), 2),
           'update_latency_ms_p99': round(float(np.percentile(lat, 99)), 2),
           'first_step_ms': round(self.step_latency_ms[0], 2) if self.step_latency_ms else None,
           'position': self.position, 'compilations': self.compilations,
           'snapshots_during_stream': self.snapshots,
           'skipped_records': len(self.skipped), 'skipped_examples': self.skipped[:10]}
    if self.ranks:
      out['prequential'] = metrics_lib.ranking_metrics(np.asarray(self.ranks), ks)
    return out
