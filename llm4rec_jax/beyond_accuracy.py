"""Beyond-accuracy metrics of top-k recommendation lists, and accuracy gaps between user groups.

Every function takes ``tops`` int [n, >= k] (one ranked list per evaluation case, item ids >= 1) and
reads its first ``k`` columns. Item popularity is the training interaction count. Definitions:
  * coverage@k: distinct items recommended / catalog size.
  * gini@k: Gini coefficient of the exposure counts (times each catalog item appears in a top-k),
    over every catalog item (0 = every item equally exposed, -> 1 = all exposure on one item).
  * arp@k: average recommended popularity, mean over lists of the mean training count of its items.
  * head_share@k / tail_share@k: share of recommendation slots taken by the most popular
    ``head_fraction`` of the catalog (by training count) / by the rest (the long tail).
  * novelty@k: mean self-information ``-log2((count_i + 1) / (num_train_users + 1))`` of the items.
  * ild@k: intra-list diversity, mean cosine distance ``1 - cos(x_i, x_j)`` over the pairs of a list,
    averaged over lists; item vectors are content embeddings when the dataset has dense features,
    else multi-hot categories; pairs with a featureless item are skipped.
  * per-group NDCG@k / HR@k and the gap (max - min over groups) for user groups (a categorical user
    attribute such as gender, or training-activity terciles).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4rec_jax import metrics as metrics_lib
from llm4rec_jax.debias import fairness
from llm4rec_jax.debias.propensity import item_counts

# User attributes reported as groups when the dataset has them ('auto').
AUTO_GROUPS = ('gender', 'age_group', 'group')


def exposure_counts(tops: np.ndarray, num_items: int, k: int) -> np.ndarray:
  """float64 [num_items + 1]: how often each item id appears in the top-k lists."""
  return np.bincount(np.asarray(tops)[:, :k].reshape(-1), minlength=num_items + 1
                     ).astype(np.float64)[:num_items + 1]


def coverage(tops: np.ndarray, num_items: int, k: int) -> float:
  items = np.unique(np.asarray(tops)[:, :k])
  return float(np.sum((items >= 1) & (items <= num_items)) / num_items)


def gini(values: np.ndarray) -> float:
  """Gini coefficient of non-negative values: ``sum_i (2i - n - 1) x_(i) / (n sum x)``, x ascending."""
  x = np.sort(np.asarray(values, np.float64))
  n = len(x)
  if n == 0 or x.sum() == 0:
    return 0.0
  i = np.arange(1, n + 1)
  return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def gini_of_exposure(tops: np.ndarray, num_items: int, k: int) -> float:
  return gini(exposure_counts(tops, num_items, k)[1:])


def average_popularity(tops: np.ndarray, counts: np.ndarray, k: int) -> float:
  return float(np.mean(np.asarray(counts, np.float64)[np.asarray(tops)[:, :k]]))


def head_items(counts: np.ndarray, head_fraction: float) -> np.ndarray:
  """bool [num_items + 1]: the ``ceil(head_fraction * num_items)`` most popular items (ties by id)."""
  counts = np.asarray(counts, np.float64)
  num_items = len(counts) - 1
  order = np.argsort(-counts[1:], kind='stable') + 1
  head = np.zeros(len(counts), bool)
  head[order[:int(np.ceil(head_fraction * num_items))]] = True
  return head


def tail_share(tops: np.ndarray, is_tail: np.ndarray, k: int) -> float:
  return float(np.mean(np.asarray(is_tail)[np.asarray(tops)[:, :k]]))


def novelty(tops: np.ndarray, counts: np.ndarray, num_users: int, k: int) -> float:
  info = -np.log2((np.asarray(counts, np.float64) + 1.0) / (num_users + 1.0))
  return float(np.mean(info[np.asarray(tops)[:, :k]]))


def intra_list_diversity(tops: np.ndarray, vectors: np.ndarray, k: int,
                         chunk: int = 1024) -> float:
  """Mean pairwise cosine distance within each list (pairs with a zero/NaN vector skipped)."""
  v = np.nan_to_num(np.asarray(vectors, np.float32))
  norm = np.linalg.norm(v, axis=1)
  has = norm > 0
  unit = v / np.where(has, norm, 1.0)[:, None]
  lists = np.asarray(tops)[:, :k]  # [n, k]
  off_diag = ~np.eye(k, dtype=bool)[None]
  sums, counts = [], []
  for s in range(0, len(lists), chunk):  # bounded memory: [chunk, k, features]
    part = lists[s:s + chunk]
    x = unit[part]  # [c, k, f]
    dist = 1.0 - np.einsum('nkf,nlf->nkl', x, x).astype(np.float64)  # [c, k, k]
    ok = has[part][:, :, None] & has[part][:, None, :] & off_diag
    sums.append(np.where(ok, dist, 0.0).sum(axis=(1, 2)))
    counts.append(ok.sum(axis=(1, 2)))
  pairs, total = np.concatenate(counts), np.concatenate(sums)
  if not (pairs > 0).any():
    return float('nan')
  return float((total[pairs > 0] / pairs[pairs > 0]).mean())


def feature_vectors(items: Any) -> tuple[np.ndarray | None, str]:
  """(vectors [num_items + 1, f], source) for diversity: a dense content field, else multi-hot
  categories, else (None, 'none')."""
  if items.dense:
    name = sorted(items.dense)[0]
    return np.asarray(items.dense[name], np.float64), f'dense:{name}'
  if items.categorical:
    blocks = []
    for name in sorted(items.categorical):
      field = items.categorical[name]
      m = np.zeros((field.num_rows, len(field.vocab)), np.float32)
      for r in range(field.num_rows):
        m[r, field.row(r)] = 1.0
      blocks.append(m[:, 1:])
    return np.concatenate(blocks, axis=1), 'categories:' + ','.join(sorted(items.categorical))
  return None, 'none'


def group_metrics(ranks: np.ndarray, labels: np.ndarray, names: Sequence[str],
                  ks: Sequence[int]) -> dict[str, Any]:
  """Per-group NDCG@k / HR@k over the cases with a known label, and the max - min gap of each."""
  out: dict[str, Any] = {}
  for g, name in enumerate(names):
    sel = labels == g
    if sel.any():
      m = metrics_lib.ranking_metrics(ranks[sel], ks)
      out[name] = {**{f'{p}@{k}': m[f'{p}@{k}'] for k in ks for p in ('ndcg', 'hr')},
                   'num_cases': m['num_cases']}
  present = [out[n] for n in names if n in out]
  for k in ks:
    for p in ('ndcg', 'hr'):
      vals = [m[f'{p}@{k}'] for m in present]
      out[f'{p}@{k}_gap'] = float(max(vals) - min(vals)) if len(vals) > 1 else 0.0
  return out


@dataclasses.dataclass
class Context:
  """What the metrics need from the training data, computed once per experiment."""
  num_items: int
  num_train_users: int
  counts: np.ndarray  # float64 [num_items + 1] training interactions per item
  is_head: np.ndarray  # bool [num_items + 1]
  vectors: np.ndarray | None
  vector_source: str
  groups: dict[str, tuple[np.ndarray, list[str]]]  # attribute -> (label per user id, names)


def build_context(dataset: Any, train_sequences: Sequence[np.ndarray], *,
                  head_fraction: float = 0.2, group_attributes: str = 'auto') -> Context:
  """``group_attributes``: 'auto' (activity terciles plus gender / age_group / group where the
  dataset has them), '' (none) or a comma list of categorical user fields ('activity' = terciles)."""
  counts = item_counts(train_sequences, dataset.num_items)
  vectors, source = feature_vectors(dataset.items)
  if group_attributes == 'auto':
    names = ['activity'] + [a for a in AUTO_GROUPS if a in dataset.users.categorical]
  else:
    names = [a.strip() for a in group_attributes.split(',') if a.strip()]
  groups = {a: fairness.user_groups(dataset.users, train_sequences,
                                    '' if a == 'activity' else a) for a in names}
  return Context(dataset.num_items, sum(1 for s in train_sequences if len(s)), counts,
                 head_items(counts, head_fraction), vectors, source, groups)


def summarize(ctx: Context, tops: np.ndarray, ranks: np.ndarray, users: np.ndarray,
              ks: Sequence[int] = (10,)) -> tuple[dict[str, float], dict[str, Any]]:
  """(flat metrics, per-group details): every beyond-accuracy metric at each k and the NDCG/HR gap
  of each user grouping (``'{attribute}_ndcg@k_gap'``) as floats; the groups' own metrics nested."""
  out: dict[str, Any] = {}
  for k in ks:
    share = tail_share(tops, ~ctx.is_head, k)
    out.update({f'coverage@{k}': coverage(tops, ctx.num_items, k),
                f'gini@{k}': gini_of_exposure(tops, ctx.num_items, k),
                f'arp@{k}': average_popularity(tops, ctx.counts, k),
                f'tail_share@{k}': share, f'head_share@{k}': 1.0 - share,
                f'novelty@{k}': novelty(tops, ctx.counts, ctx.num_train_users, k)})
    if ctx.vectors is not None:
      out[f'ild@{k}'] = intra_list_diversity(tops, ctx.vectors, k)
  groups = {a: group_metrics(ranks, labels[users], names, ks)
            for a, (labels, names) in ctx.groups.items()}
  for a, g in groups.items():
    out.update({f'{a}_{p}@{k}_gap': g[f'{p}@{k}_gap'] for k in ks for p in ('ndcg', 'hr')})
  return out, groups
