"""Ranking metrics computed from the 0-based rank of each held-out target in the full catalog.

``rank`` = number of catalog items scored above the target, counting ties against the target
(a model that scores everything equally gets the worst rank, not the best). Then for cut-off k:
HR@k = [rank < k], NDCG@k = [rank < k] / log2(rank + 2) (one relevant item, so IDCG = 1),
MRR = 1 / (rank + 1) over the full ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """Mean HR@k, NDCG@k (for each k) and MRR over ``ranks`` (int [n], 0-based)."""
  ranks = np.asarray(ranks, np.float64)
  if ranks.size == 0:
    raise ValueError('no evaluation cases')
  out: dict[str, float] = {}
  for k in ks:
    hit = ranks < k
    out[f'hr@{k}'] = float(hit.mean())
    out[f'ndcg@{k}'] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
  out['mrr'] = float((1.0 / (ranks + 1.0)).mean())
  out['num_cases'] = int(ranks.size)
  return out
