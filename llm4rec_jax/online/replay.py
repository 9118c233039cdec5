"""A replay buffer of past interactions, mixed into every online step against forgetting.

An entry is one training example as the model reads it: a left-padded window of ``width`` items
whose last item is the interaction's item and the rest the user's history before it. Two policies:

* ``reservoir``: every example ever offered has the same chance to be in the buffer (Vitter's
  algorithm R), so old behaviour stays represented however long the stream runs;
* ``recent``: a ring of the latest ``capacity`` examples.

Randomness comes from ``(seed, examples offered)`` and ``(seed, samples drawn)``, so a buffer restored
from a snapshot continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm4rec_jax.errors import ConfigError

POLICIES = ('reservoir', 'recent')


def example_window(history: Sequence[int], item: int, width: int) -> np.ndarray:
  """int32 [width]: one example, ``history + [item]``, its last ``width`` items, left-padded
  with 0."""
  seq = list(history[-(width - 1):]) + [item]
  out = np.zeros(width, np.int32)
  out[-len(seq):] = seq
  return out


class ReplayBuffer:
  """Fixed-capacity store of int32 windows ``[width]``; ``sample(n)`` draws uniformly with
  replacement."""

  def __init__(self, capacity: int, width: int, *, policy: str = 'reservoir', seed: int = 0):
    if policy not in POLICIES:
      raise ConfigError('online.replay_policy', f'{policy!r} is not one of {POLICIES}')
    if capacity < 0:
      raise ConfigError('online.replay_size', f'must be >= 0, got {capacity}')
    self.capacity, self.width, self.policy, self.seed = capacity, width, policy, seed
    self.windows = np.zeros((capacity, width), np.int32)
    self.size = 0
    self.offered = 0  # examples ever offered
    self.draws = 0  # sample() calls so far

  def __len__(self) -> int:
    return self.size

  def add(self, windows: np.ndarray) -> None:
    """Offers examples (int32 [n, width]) in order."""
    windows = np.asarray(windows, np.int32).reshape(-1, self.width)
    if not self.capacity or not len(windows):
      self.offered += len(windows)
      return
    rng = np.random.default_rng([self.seed, 1, self.offered])
    for w in windows:
      if self.size < self.capacity:
        self.windows[self.size] = w
        self.size += 1
      elif self.policy == 'recent':
        self.windows[self.offered % self.capacity] = w
      else:
        j = rng.integers(0, self.offered + 1)
        if j < self.capacity:
          self.windows[j] = w
      self.offered += 1

  def sample(self, n: int) -> np.ndarray:
    """int32 [n, width]: ``n`` stored examples drawn uniformly (all-padding rows if empty)."""
    out = np.zeros((n, self.width), np.int32)
    if self.size and n:
      rng = np.random.default_rng([self.seed, 2, self.draws])
      out[:] = self.windows[rng.integers(0, self.size, n)]
    self.draws += 1
    return out

  def state(self) -> dict[str, np.ndarray]:
    """Arrays for a snapshot (Orbax cannot store zero-size arrays, so at least one row is kept)."""
    return {'windows': self.windows[:max(self.size, 1)].copy(),
            'counters': np.asarray([self.size, self.offered, self.draws], np.int64)}

  def load_state(self, state: dict[str, np.ndarray]) -> None:
    size, offered, draws = (int(x) for x in state['counters'])
    if size > self.capacity or state['windows'].shape[1] != self.width:
      raise ConfigError('online.replay_size', f'the snapshot holds {size} examples of width '
                        f'{state["windows"].shape[1]}; this buffer has capacity {self.capacity} and '
                        f'width {self.width}')
    self.windows[:size] = state['windows'][:size]
    self.size, self.offered, self.draws = size, offered, draws
