"""Propensities: how likely an item (or a user-item pair) was to be observed at all.

Observed interactions over-represent what users were shown, and popular items are shown more. The
inverse of an observation propensity re-weights each observed interaction to what a uniformly exposed
sample would contain (inverse propensity scoring, Schnabel et al., ICML 2016).

Estimators here:
  * popularity: ``p_i = ((c_i + smoothing) / (max_j c_j + smoothing)) ** power`` from interaction
    counts (Yang et al., RecSys 2018 use ``power = 0.5``), optionally per time window;
  * learned: a logistic model of P(observed | user features, item features) fitted to which pairs
    were observed (:class:`LogisticPropensity`);
  * naive Bayes by rating value: ``P(o | r) = P(r | o) P(o) / P(r)`` with ``P(r)`` from a small
    sample of ratings of randomly exposed items (Schnabel et al., ICML 2016, Sec. 5.2).
Then :func:`clip` bounds propensities away from 0 (bounded weights, lower variance) and
:func:`inverse_weights` turns them into weights, optionally self-normalised to mean 1 over the
observed interactions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm4rec_jax.errors import ConfigError


def item_counts(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
  """float64 [num_items + 1]: interactions per item id in ``sequences`` (column 0 = padding = 0)."""
  counts = np.zeros(num_items + 1, np.float64)
  for seq in sequences:
    if len(seq):
      np.add.at(counts, np.asarray(seq, np.int64), 1.0)
  counts[0] = 0.0
  return counts


def popularity_propensity(counts: np.ndarray, *, power: float = 0.5,
                          smoothing: float = 1.0) -> np.ndarray:
  """Item propensities [n] in (0, 1] from counts [n] (index 0, the padding id, is returned as 1).

  ``smoothing`` (additive, > 0) keeps unseen items at a finite propensity; the most popular item
  gets 1. ``power`` 0 gives uniform propensities (no re-weighting).
  """
  if smoothing <= 0:
    raise ConfigError('debias.smoothing', f'must be > 0 so unseen items stay finite, got {smoothing}')
  if power < 0:
    raise ConfigError('debias.power', f'must be >= 0, got {power}')
  counts = np.asarray(counts, np.float64)
  p = ((counts + smoothing) / (counts[1:].max(initial=0.0) + smoothing)) ** power
  p[0] = 1.0
  return p


def popularity(counts: np.ndarray, *, smoothing: float = 1.0) -> np.ndarray:
  """Smoothed popularity distribution [n] (sums to 1 over ids >= 1; index 0 gets 1 so its log is 0)."""
  counts = np.asarray(counts, np.float64)
  p = (counts + smoothing) / (counts[1:].sum() + smoothing * (len(counts) - 1))
  p[0] = 1.0
  return p


@dataclasses.dataclass
class WindowedPropensity:
  """Per-time-window item propensities.

  Attributes:
    propensity: float64 [num_windows, num_items + 1], each row from that window's counts.
    edges: int64 [num_windows + 1] timestamp boundaries (window w holds ``edges[w] <= t <
      edges[w + 1]``; the last edge is one past the latest timestamp).
  """
  propensity: np.ndarray
  edges: np.ndarray

  def window_of(self, timestamps: np.ndarray) -> np.ndarray:
    """int [n]: the window index of each timestamp (clamped to the first / last window)."""
    w = np.searchsorted(self.edges, np.asarray(timestamps), side='right') - 1
    return np.clip(w, 0, len(self.propensity) - 1)

  def lookup(self, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """The propensity of each (item, time) interaction."""
    return self.propensity[self.window_of(timestamps), np.asarray(items)]


def naive_bayes_propensity(observed_ratings: np.ndarray, random_ratings: np.ndarray, *,
                           observed_fraction: float, levels: int = 5,
                           smoothing: float = 1.0) -> np.ndarray:
  """float64 [levels + 1]: ``P(observed | rating = v)`` for v = 0..levels (index 0 unused, 1.0).

  ``P(r | o)`` from the observed (self-selected) ratings, ``P(r)`` from ratings of randomly exposed
  items, ``P(o) = observed_fraction``; both histograms get ``smoothing`` added to every level.
  """
  if not 0.0 < observed_fraction <= 1.0:
    raise ConfigError('debias.observed_fraction', f'must lie in (0, 1], got {observed_fraction}')
  def hist(r):
    h = np.bincount(np.asarray(r, np.int64), minlength=levels + 1)[1:levels + 1] + smoothing
    return h / h.sum()
  p = hist(observed_ratings) * observed_fraction / hist(random_ratings)
  return np.concatenate([[1.0], np.minimum(p, 1.0)])


def windowed_popularity_propensity(items: np.ndarray, timestamps: np.ndarray, num_items: int, *,
                                   num_windows: int, power: float = 0.5,
                                   smoothing: float = 1.0) -> WindowedPropensity:
  """Popularity propensities computed separately in ``num_windows`` equal-count time windows.

  Popularity drifts; an item's exposure at time t is better estimated from its popularity around t
  (the 'local popularity' of PDA, Zhang et al., SIGIR 2021) than from the whole log.
  """
  if num_windows < 1:
    raise ConfigError('debias.num_windows', f'must be >= 1, got {num_windows}')
  items, timestamps = np.asarray(items, np.int64), np.asarray(timestamps, np.int64)
  order = np.sort(timestamps)
  cuts = [order[int(len(order) * w / num_windows)] for w in range(1, num_windows)]
  edges = np.asarray([order[0], *cuts, order[-1] + 1], np.int64)
  result = WindowedPropensity(np.zeros((num_windows, num_items + 1)), edges)
  window = result.window_of(timestamps)
  for w in range(num_windows):
    counts = np.bincount(items[window == w], minlength=num_items + 1).astype(np.float64)
    counts[0] = 0.0
    result.propensity[w] = popularity_propensity(counts, power=power, smoothing=smoothing)
  return result


def clip(propensity: np.ndarray, minimum: float) -> np.ndarray:
  """Propensities bounded to ``[minimum, 1]`` (so inverse weights are at most ``1 / minimum``)."""
  if not 0.0 < minimum <= 1.0:
    raise ConfigError('debias.clip', f'must lie in (0, 1], got {minimum}')
  return np.clip(np.asarray(propensity, np.float64), minimum, 1.0)


def inverse_weights(propensity: np.ndarray, *, clip_min: float, self_normalize: bool,
                    counts: np.ndarray | None = None) -> np.ndarray:
  """``1 / clip(p)``; with ``self_normalize`` divided by their mean over the observed interactions.

  Args:
    propensity: any shape (per item, or per user-item pair).
    counts: how often each entry was observed (same shape), for the mean of the self-normalisation;
      default: every entry once.
  """
  w = 1.0 / clip(propensity, clip_min)
  if self_normalize:
    c = np.ones_like(w) if counts is None else np.asarray(counts, np.float64)
    if c.sum() <= 0:
      raise ValueError('self-normalisation needs at least one observed interaction')
    w = w * (c.sum() / np.sum(c * w))
  return w


def pair_features(user_features: np.ndarray, item_features: np.ndarray, users: np.ndarray,
                  items: np.ndarray) -> np.ndarray:
  """float32 [n, fu + fi + fu * fi]: user and item features of each pair and their products."""
  fu, fi = user_features[users], item_features[items]  # [n, fu], [n, fi]
  cross = (fu[:, :, None] * fi[:, None, :]).reshape(len(users), -1)
  return np.concatenate([fu, fi, cross], axis=1).astype(np.float32)


@dataclasses.dataclass
class LogisticPropensity:
  """P(observed | features) = sigmoid(x @ w + b), fitted by L2-regularised logistic regression."""
  w: np.ndarray
  b: float

  @classmethod
  def fit(cls, x: np.ndarray, observed: np.ndarray, *, l2: float = 1e-3, steps: int = 500,
          learning_rate: float = 0.05,
          sample_weight: np.ndarray | None = None) -> LogisticPropensity:
    """Full-batch Adam on the (sample-weighted) mean log-loss; ``x`` float [n, f], ``observed``
    bool [n], ``sample_weight`` float [n] (default all 1)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(observed, jnp.float32)
    sw = jnp.ones_like(y) if sample_weight is None else jnp.asarray(sample_weight, jnp.float32)
    sw = sw / jnp.sum(sw)
    rate = float(jnp.clip(jnp.sum(sw * y), 1e-6, 1 - 1e-6))
    params = {'w': jnp.zeros(x.shape[1]), 'b': jnp.asarray(float(np.log(rate / (1 - rate))))}
    tx = optax.adam(learning_rate)

    def loss(p):
      logits = x @ p['w'] + p['b']
      return (jnp.sum(sw * optax.sigmoid_binary_cross_entropy(logits, y))
              + l2 * jnp.sum(p['w'] ** 2))

    @jax.jit
    def run(p):
      def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None
      (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
      return p

    params = jax.device_get(run(params))
    return cls(np.asarray(params['w'], np.float64), float(params['b']))

  def predict(self, x: np.ndarray) -> np.ndarray:
    """float64 [n] observation probabilities."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(x, np.float64) @ self.w + self.b)))


def learned_item_propensity(item_features: np.ndarray, counts: np.ndarray, num_users: int, *,
                            l2: float = 1e-3, steps: int = 300) -> np.ndarray:
  """Item propensities [n] in (0, 1] from item features (index 0, the padding id, gets 1).

  The logistic model of P(a user interacted with item i | x_i) is fitted to every (user, item) pair
  without enumerating them: item i contributes ``counts[i]`` positives and ``num_users - counts[i]``
  negatives with features ``item_features[i]`` [n, f]. Items that share features share exposure,
  so rare items of a popular kind are not up-weighted as much as their own count would say. Scaled
  so the most exposed item gets 1, like :func:`popularity_propensity`.
  """
  x = np.asarray(item_features, np.float32)[1:]
  c = np.minimum(np.asarray(counts, np.float64)[1:], num_users)
  model = LogisticPropensity.fit(np.concatenate([x, x]), np.r_[np.ones(len(x)), np.zeros(len(x))],
                                 l2=l2, steps=steps,
                                 sample_weight=np.r_[c, num_users - c])
  p = model.predict(np.asarray(item_features, np.float64))
  p = p / p[1:].max()
  p[0] = 1.0
  return p


def interaction_timestamps(sequences: Sequence[np.ndarray], full_items: Sequence[np.ndarray],
                           full_times: Sequence[np.ndarray]) -> list[np.ndarray]:
  """The timestamp of every interaction of ``sequences`` (each a subsequence of the user's full,
  time-ordered ``full_items``, e.g. the training part of a split), matched in order."""
  out = []
  for seq, items, times in zip(sequences, full_items, full_times):
    seq = np.asarray(seq)
    if np.array_equal(items[:len(seq)], seq):  # a prefix: the usual case
      out.append(np.asarray(times[:len(seq)], np.int64))
      continue
    ts, j = np.zeros(len(seq), np.int64), 0
    for pos, item in enumerate(items):
      if j < len(seq) and item == seq[j]:
        ts[j], j = times[pos], j + 1
    if j != len(seq):
      raise ValueError('a training sequence is not a subsequence of its user\'s interactions')
    out.append(ts)
  return out
