"""Deletion test of attribution faithfulness: remove the top-k attributed history items and measure
how much the explained item's score and rank fall, against removing k random history items.

A faithful attribution names the items the model actually relied on, so deleting them should hurt
the item far more than deleting random ones. Deleting an item removes it from the sequence (the
remaining items shift left, as if it had never been consumed). The rank is the item's position among
all catalog items not in the *original* history (0 = top), so deletions never make seen items
candidates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.lru_cache(maxsize=8)
def make_score_rank_fn(graphdef: nnx.GraphDef) -> Callable:
  """Jitted ``(params, inputs [b, s], items [b], seen [b, h], content) -> (score [b], rank [b])``:
  the item's logit after each history and its 0-based rank among the unseen catalog items."""

  @jax.jit
  def fn(params, inputs, items, seen, content=None):
    model = nnx.merge(graphdef, params)
    catalog = model.encode_catalog(content)
    hidden = model(inputs, catalog)[:, -1]  # [b, d]
    scores = model.logits(hidden, catalog)  # [b, vocab]
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, seen].set(-jnp.inf)
    target = jnp.sum(hidden * jnp.take(model.output_table(catalog), items, axis=0), axis=-1)
    rank = jnp.sum(scores > target[:, None], axis=1)
    return target, rank.astype(jnp.int32)

  return fn


def delete_positions(history: np.ndarray, drop: Sequence[int], max_len: int) -> np.ndarray:
  """``history`` (unpadded, oldest first) without the positions ``drop``, left-padded to max_len."""
  keep = np.delete(history, np.asarray(list(drop), np.int64))[-max_len:]
  row = np.zeros(max_len, np.int32)
  if len(keep):
    row[-len(keep):] = keep
  return row


@dataclasses.dataclass
class DeletionCurve:
  """Mean drops of the explained item after deleting k history items, per k."""
  ks: list[int]
  num_cases: list[int]  # cases with more than k history items (the others are skipped)
  score_drop_top: list[float]
  score_drop_random: list[float]
  rank_increase_top: list[float]
  rank_increase_random: list[float]
  # Deleting the k most recent items: a strong model-free baseline for sequential recommenders.
  score_drop_recent: list[float] = dataclasses.field(default_factory=list)
  rank_increase_recent: list[float] = dataclasses.field(default_factory=list)

  def ratio(self, k: int, what: str = 'score') -> float:
    """mean drop after deleting the top-k attributed items / after deleting k random ones."""
    i = self.ks.index(k)
    top, rnd = ((self.score_drop_top[i], self.score_drop_random[i]) if what == 'score' else
                (self.rank_increase_top[i], self.rank_increase_random[i]))
    return float(top / rnd) if rnd > 0 else float('inf') if top > 0 else float('nan')

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['score_ratio'] = [round(self.ratio(k, 'score'), 3) for k in self.ks]
    d['rank_ratio'] = [round(self.ratio(k, 'rank'), 3) for k in self.ks]
    d['score_ratio_vs_recent'] = [round(t / r, 3) if r > 0 else None for t, r in
                                  zip(self.score_drop_top, self.score_drop_recent)]
    return d


def deletion_curve(score_rank: Callable[[np.ndarray, np.ndarray, np.ndarray],
                                        tuple[np.ndarray, np.ndarray]],
                   histories: Sequence[np.ndarray], items: np.ndarray,
                   attributions: Sequence[np.ndarray], *, max_len: int,
                   ks: Sequence[int] = (1, 2, 3, 5), num_random: int = 5, seed: int = 0,
                   batch_size: int = 256) -> DeletionCurve:
  """The deletion curve of ``attributions`` (one score per history item, aligned with
  ``histories[i]``, oldest first) for the explained ``items``.

  ``score_rank(inputs [n, max_len], items [n], seen [n, h]) -> (score [n], rank [n])`` scores the
  item after each (left-padded) history with ``seen`` excluded from the ranking; it is called on
  every original and deleted history in batches of ``batch_size`` (padded to a static shape).
  """
  rng = np.random.default_rng(seed)
  h = max(len(x) for x in histories)
  seen = np.zeros((len(histories), h), np.int32)
  for i, x in enumerate(histories):
    seen[i, :len(x)] = x
  rows, case, kind, k_of = [], [], [], []  # kind: 0 original, 1 top-k, 2 random, 3 most recent
  for i, (x, a) in enumerate(zip(histories, attributions)):
    x, a = np.asarray(x), np.asarray(a)
    rows.append(delete_positions(x, [], max_len)); case.append(i); kind.append(0); k_of.append(0)
    order = np.argsort(-a, kind='stable')
    for k in ks:
      if len(x) <= k:
        continue
      rows.append(delete_positions(x, order[:k], max_len)); case.append(i); kind.append(1)
      k_of.append(k)
      for _ in range(num_random):
        rows.append(delete_positions(x, rng.choice(len(x), k, replace=False), max_len))
        case.append(i); kind.append(2); k_of.append(k)
      rows.append(delete_positions(x, np.arange(len(x) - k, len(x)), max_len)); case.append(i)
      kind.append(3); k_of.append(k)
  inputs = np.stack(rows)
  case, kind, k_of = np.asarray(case), np.asarray(kind), np.asarray(k_of)
  scores, ranks = [], []
  for start in range(0, len(inputs), batch_size):
    idx = np.arange(start, min(start + batch_size, len(inputs)))
    pad = batch_size - len(idx)
    full = np.concatenate([idx, np.full(pad, idx[-1])])
    s, r = score_rank(inputs[full], np.asarray(items)[case[full]], seen[case[full]])
    scores.append(np.asarray(s)[:len(idx)]); ranks.append(np.asarray(r)[:len(idx)])
  scores, ranks = np.concatenate(scores), np.concatenate(ranks).astype(np.float64)
  base_score = np.zeros(len(histories)); base_rank = np.zeros(len(histories))
  base_score[case[kind == 0]] = scores[kind == 0]
  base_rank[case[kind == 0]] = ranks[kind == 0]
  out = DeletionCurve(list(ks), [], [], [], [], [])
  for k in ks:
    top, rnd = (kind == 1) & (k_of == k), (kind == 2) & (k_of == k)
    out.num_cases.append(int(top.sum()))
    if not top.any():
      for lst in (out.score_drop_top, out.score_drop_random, out.rank_increase_top,
                  out.rank_increase_random, out.score_drop_recent, out.rank_increase_recent):
        lst.append(float('nan'))
      continue
    out.score_drop_top.append(float(np.mean(base_score[case[top]] - scores[top])))
    out.score_drop_random.append(float(np.mean(base_score[case[rnd]] - scores[rnd])))
    out.rank_increase_top.append(float(np.mean(ranks[top] - base_rank[case[top]])))
    out.rank_increase_random.append(float(np.mean(ranks[rnd] - base_rank[case[rnd]])))
    rec = (kind == 3) & (k_of == k)
    out.score_drop_recent.append(float(np.mean(base_score[case[rec]] - scores[rec])))
    out.rank_increase_recent.append(float(np.mean(ranks[rec] - base_rank[case[rec]])))
  return out
