"""Unbiased evaluation: on randomly exposed ratings (Coat), or against known true preferences
(the synthetic generator's :class:`~llm4rec_jax.data.synthetic.GroundTruth`).

Observed test interactions inherit the exposure bias of training data, so they reward models that
learned the bias. Ratings of randomly chosen items (Coat's test set) and the generator's true
preferences do not.
"""

from __future__ import annotations

import numpy as np


def rating_metrics(users: np.ndarray, ratings: np.ndarray, predictions: np.ndarray, *, k: int = 5,
                   threshold: float = 4.0) -> dict[str, float]:
  """Metrics of predicted scores on held-out ratings of randomly exposed items.

  Relevant = ``rating >= threshold``. Per user, the user's test items are ranked by prediction:
  NDCG@k (binary gains, ideal = the user's relevant items first) and Recall@k (relevant items in the
  top k / relevant items), averaged over users with at least one relevant item; ties in the
  predictions are broken against the relevant items. AUC: probability that a random relevant pair
  scores above a random irrelevant one (ties count half), over all test pairs. MSE / MAE of the
  predictions against the ratings (meaningful when predictions are ratings).
  """
  users, ratings = np.asarray(users), np.asarray(ratings, np.float64)
  predictions = np.asarray(predictions, np.float64)
  rel = ratings >= threshold
  ndcgs, recalls = [], []
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  for u in np.unique(users):
    sel = users == u
    r, p = rel[sel], predictions[sel]
    if not r.any():
      continue
    order = np.lexsort((r, -p))  # by score descending, irrelevant first among ties
    top = r[order][:k]
    dcg = float(np.sum(top * discounts[:len(top)]))
    idcg = float(np.sum(discounts[:min(int(r.sum()), k)]))
    ndcgs.append(dcg / idcg)
    recalls.append(float(top.sum() / r.sum()))
  return {f'ndcg@{k}': float(np.mean(ndcgs)), f'recall@{k}': float(np.mean(recalls)),
          'auc': auc(rel, predictions), 'mse': float(np.mean((predictions - ratings) ** 2)),
          'mae': float(np.mean(np.abs(predictions - ratings))), 'num_users': len(ndcgs)}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney with average ranks for ties)."""
  labels = np.asarray(labels, bool)
  scores = np.asarray(scores, np.float64)
  pos, neg = labels.sum(), (~labels).sum()
  if pos == 0 or neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='stable')
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average 1-based rank over each block of tied scores.
  starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
  ends = np.r_[starts[1:], len(scores)]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2.0
  return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def true_gains(ground_truth, users: np.ndarray, inputs: np.ndarray, seen: np.ndarray) -> np.ndarray:
  """float64 [n, num_items + 1]: the probability of each item being the next choice if every item
  were exposed (the generator's unconfounded next-item distribution after the history ``inputs``),
  renormalised over the items not yet seen; column 0 and seen items are 0."""
  logits = ground_truth.next_item_logits(users, inputs, exposed=False).astype(np.float64)
  rows = np.arange(len(users))[:, None]
  logits[rows, seen] = -np.inf  # seen 0 = padding, already -inf
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits)
  return p / p.sum(axis=1, keepdims=True)


def truth_ndcg(tops: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
  """Mean NDCG@k of ranked lists ``tops`` [n, >= k] with graded gains [n, num_items + 1]
  (DCG of the list over the DCG of the k highest gains)."""
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  rows = np.arange(len(tops))[:, None]
  dcg = (gains[rows, np.asarray(tops)[:, :k]] * discounts).sum(axis=1)
  ideal = (-np.sort(-gains, axis=1)[:, :k] * discounts).sum(axis=1)
  return float(np.mean(dcg / np.maximum(ideal, 1e-300)))
