"""Seeded synthetic sequential-recommendation dataset with known ground truth (no files needed).

This is the project's embedded default dataset. Everything is drawn from one
``numpy.random.default_rng(config.seed)`` in a fixed order, so the same config gives bit-identical
arrays.

Generative mechanism
--------------------
Latent space (dimension ``d = latent_dim``):
  * ``num_categories`` unit cluster directions ``c_k``. Each item gets a cluster ``k(i)`` and a factor
    ``v_i = sqrt(cluster_weight) * c_k(i) + sqrt(1 - cluster_weight) * n_i`` with ``n_i ~ N(0, I/d)``,
    so ``|v_i| ~ 1`` and items of one cluster are close.
  * Users get ``u ~ N(0, I/d)`` (``|u| ~ 1``).
Popularity and exposure (the confounder):
  * ``popularity[i] ∝ rank(i) ** -popularity_exponent`` over a random permutation of the items
    (Zipf-like, independent of the factors; sums to 1 over items).
  * ``propensity[i] = (popularity[i] / max popularity) ** exposure_strength`` is the probability that
    item ``i`` is exposed to the user (1 for the most popular item; all 1 when
    ``exposure_strength = 0``, i.e. no confounding).
Preference and choice:
  * True (long-term) preference ``score(u, i) = <u_u, v_i> / temperature``
    (``GroundTruth.true_preference``); it does not depend on popularity.
  * At each step the user is in a state that mixes the long-term factor with the recent items:
    ``s = (1 - sequential_strength) * u + sequential_strength * h`` where ``h`` is the
    ``recency_decay``-weighted mean factor of the last ``window`` items (``h = u`` before the first
    item). Because items are clustered, the next item tends to be near the last ones: a real next-item
    signal beyond popularity.
  * Choice: an item can be chosen only if exposed; the user takes the item from the preference softmax
    ``softmax(<s, v_i> / temperature)`` that is exposed (rejection: redraw if not exposed). Hence
    ``P(i) ∝ propensity[i] * exp(<s, v_i> / temperature)`` over the items not consumed yet (no repeats),
    so observed interactions over-represent popular items relative to the true preference.
    ``GroundTruth.next_item_logits`` gives exactly the logits used in generation.
Sequences and time:
  * Lengths: ``min_seq_len + lognormal`` with overall mean ~ ``mean_seq_len``, capped at
    ``max_seq_len``; longer sequences for more active users.
  * Timestamps: int64 seconds; each user starts uniformly within ``start_spread_days`` after
    ``start_time`` and then waits exponential gaps (>= 1 s) with a per-user mean, so times strictly
    increase within each user and users are interleaved globally (a global temporal split is
    meaningful). Interactions are returned in global time order.
Features (derived from the factors plus noise):
  * items: text ``title`` ('{CategoryWord} {adjective} {noun}', with a numeric suffix on the rare
    duplicates so titles are unique) and ``description``; categorical ``category`` ('cat_03': argmax
    of ``<v_i, c_k>`` over the cluster directions, in practice the item's cluster) and ``tags`` (1-3 tags,
    argmax of factor-tag-direction similarity plus noise); numeric ``price`` (log-normal, log price
    linear in ``v[:, 1]``, ~``price_missing`` NaN); dense ``embedding`` float32 ``[num_items+1,
    dense_dim] = v @ W + noise`` with row 0 (padding) all zeros.
  * users: categorical ``group`` ('group_a' / 'group_b', thresholding ``u[:, 0]`` plus noise;
    ``group_b`` is the ``group_b_fraction`` minority) and numeric ``activity`` (the user's mean
    interactions per day).
The ground truth is ``ds.extras['ground_truth']`` (a ``GroundTruth``); ``ds.extras['config']`` is the
``SyntheticConfig`` used. Ratings are NaN (implicit feedback); raw ids are 'u1'.. and 'i1'...
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llm4rec_jax.data.dataset import PAD_ID, FeatureTable, MultiValued, RecDataset
from llm4rec_jax.errors import ConfigError

_ADJECTIVES = (
    'amber', 'bold', 'brisk', 'calm', 'classic', 'cozy', 'crisp', 'daring', 'deep', 'elegant',
    'fresh', 'gentle', 'golden', 'grand', 'hearty', 'bright', 'lively', 'lucky', 'mellow', 'misty',
    'modern', 'noble', 'quiet', 'rapid', 'royal', 'rustic', 'silver', 'sleek', 'smooth', 'solid',
    'sunny', 'swift', 'tidy', 'vivid', 'warm', 'wild', 'witty', 'zesty', 'urban', 'velvet')
_NOUNS = (
    'lamp', 'kettle', 'jacket', 'novel', 'backpack', 'candle', 'blender', 'speaker', 'sneaker',
    'notebook', 'mug', 'scarf', 'puzzle', 'helmet', 'wallet', 'camera', 'pillow', 'bottle', 'guitar',
    'watch', 'blanket', 'chair', 'brush', 'compass', 'drone', 'easel', 'fan', 'glove', 'hammock',
    'journal', 'kite', 'ladle', 'mirror', 'napkin', 'oven', 'pan', 'quilt', 'radio', 'skillet', 'tent')
_CATEGORY_WORDS = (
    'Aurora', 'Basil', 'Cedar', 'Dune', 'Ember', 'Fjord', 'Grove', 'Harbor', 'Iris', 'Juniper',
    'Kestrel', 'Lagoon', 'Meadow', 'Nimbus', 'Orchid', 'Prairie', 'Quartz', 'Ridge', 'Sierra',
    'Tundra', 'Umber', 'Vale', 'Willow', 'Zephyr')
_TAGS = (
    'eco', 'vintage', 'handmade', 'premium', 'compact', 'portable', 'waterproof', 'wireless',
    'organic', 'minimalist', 'family', 'outdoor', 'kids', 'travel', 'gift', 'smart', 'durable',
    'lightweight', 'retro', 'deluxe', 'artisan', 'ergonomic', 'seasonal', 'limited')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of the generator; the defaults give ~73k interactions in about a second."""
  num_users: int = 3000
  num_items: int = 1000
  latent_dim: int = 16
  mean_seq_len: float = 25.0
  min_seq_len: int = 5
  max_seq_len: int = 200
  seq_len_sigma: float = 0.8  # lognormal shape of (length - min_seq_len)
  popularity_exponent: float = 1.0  # Zipf exponent of the latent popularity
  exposure_strength: float = 1.0  # propensity = (popularity / max) ** exposure_strength
  temperature: float = 0.12
  sequential_strength: float = 0.7  # weight of the recent items in the user state
  window: int = 3  # number of recent items in the user state
  recency_decay: float = 0.5  # weight of the j-th most recent item is decay ** j
  cluster_weight: float = 0.7  # share of an item factor's variance explained by its cluster
  num_categories: int = 20  # latent clusters = item categories
  dense_dim: int = 32
  dense_noise: float = 0.3
  title_vocab: int = 32  # adjectives and nouns used in titles (each <= 40)
  num_tags: int = 24  # <= 24
  price_missing: float = 0.05
  group_b_fraction: float = 0.3
  start_time: int = 1_600_000_000
  start_spread_days: float = 180.0
  mean_gap_hours: float = 24.0
  seed: int = 0

  def validate(self) -> SyntheticConfig:
    positive = ('num_users', 'num_items', 'latent_dim', 'min_seq_len', 'window', 'num_categories',
                'dense_dim', 'title_vocab', 'num_tags', 'temperature', 'mean_gap_hours')
    for name in positive:
      if not getattr(self, name) > 0:
        raise ConfigError(f'data.synthetic.{name}', f'must be > 0, got {getattr(self, name)!r}')
    if not self.min_seq_len <= self.max_seq_len <= self.num_items:
      raise ConfigError('data.synthetic.max_seq_len', f'need min_seq_len ({self.min_seq_len}) <= max_seq_len '
                        f'({self.max_seq_len}) <= num_items ({self.num_items})')
    if not self.mean_seq_len > self.min_seq_len:
      raise ConfigError('data.synthetic.mean_seq_len', f'must exceed min_seq_len={self.min_seq_len}')
    for name in ('sequential_strength', 'recency_decay', 'cluster_weight', 'price_missing',
                 'group_b_fraction'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f'data.synthetic.{name}', f'must lie in [0, 1], got {getattr(self, name)!r}')
    for name in ('popularity_exponent', 'exposure_strength', 'seq_len_sigma', 'dense_noise',
                 'start_spread_days'):
      if not getattr(self, name) >= 0:
        raise ConfigError(f'data.synthetic.{name}', f'must be >= 0, got {getattr(self, name)!r}')
    if self.title_vocab > min(len(_ADJECTIVES), len(_NOUNS)):
      raise ConfigError('data.synthetic.title_vocab', f'at most {min(len(_ADJECTIVES), len(_NOUNS))}')
    if self.num_tags > len(_TAGS):
      raise ConfigError('data.synthetic.num_tags', f'at most {len(_TAGS)}')
    return self


@dataclasses.dataclass
class GroundTruth:
  """The latent truth behind a synthetic dataset; arrays are indexed by internal id (row 0 = pad).

  Attributes:
    user_factors: float32 [num_users+1, d] long-term user factors (row 0 zeros).
    item_factors: float32 [num_items+1, d] (row 0 zeros).
    item_cluster: int32 [num_items+1] generative cluster 0..K-1 (-1 for the padding row).
    popularity: float64 [num_items+1] latent popularity, sums to 1 over items (row 0 = 0).
    propensity: float64 [num_items+1] exposure probability per item, in (0, 1] (row 0 = 0).
    user_group: int32 [num_users+1] 0 = 'group_a', 1 = 'group_b' (-1 for padding).
    temperature, sequential_strength, window, recency_decay, exposure_strength,
    popularity_exponent: the generation parameters.
  """
  user_factors: np.ndarray
  item_factors: np.ndarray
  item_cluster: np.ndarray
  popularity: np.ndarray
  propensity: np.ndarray
  user_group: np.ndarray
  temperature: float
  sequential_strength: float
  window: int
  recency_decay: float
  exposure_strength: float
  popularity_exponent: float

  def true_preference(self, user_ids: Any, item_ids: Any) -> np.ndarray:
    """Elementwise (broadcast) true preference ``<u, v_i> / temperature``; -inf where an id is 0."""
    user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    scores = np.sum(self.user_factors[user_ids].astype(np.float64) *
                    self.item_factors[item_ids], axis=-1) / self.temperature
    return np.where((user_ids == PAD_ID) | (item_ids == PAD_ID), -np.inf, scores)

  def preference_matrix(self, user_ids: Any = None) -> np.ndarray:
    """True preference scores [len(user_ids), num_items+1] (all users incl. the pad row by default).

    The padding column 0 and the rows of user 0 are -inf, so a row softmax ignores them.
    """
    users = np.arange(len(self.user_factors)) if user_ids is None else np.asarray(user_ids)
    scores = (self.user_factors[users].astype(np.float64) @ self.item_factors.T.astype(np.float64)
              ) / self.temperature
    scores[:, PAD_ID] = -np.inf
    scores[users == PAD_ID] = -np.inf
    return scores

  def choice_probabilities(self, user_ids: Any, *, exposed: bool = True) -> np.ndarray:
    """Long-term choice distribution [n, num_items+1] (column 0 = 0), ignoring the sequence state.

    ``exposed=False``: what the user would pick from true preference alone (softmax of the
    preference); ``exposed=True``: with popularity-confounded exposure (preference x propensity).
    """
    logits = self.preference_matrix(user_ids)
    if exposed:
      with np.errstate(divide='ignore'):
        logits = logits + np.log(self.propensity)
    return _softmax(logits)

  def user_state(self, user_ids: Any, recent_items: Any) -> np.ndarray:
    """The sequential state [n, d] of users given their recent items [n, w] (most recent last, 0 = pad).

    Only the last ``window`` columns are used; a user without recent items is in state ``u``.
    """
    user_ids = np.asarray(user_ids)
    recent = np.asarray(recent_items)[:, -self.window:]
    w = self.recency_decay ** np.arange(recent.shape[1] - 1, -1, -1, dtype=np.float32)
    w = np.where(recent != PAD_ID, w[None, :], 0.0).astype(np.float32)
    total = w.sum(1, keepdims=True)
    u = self.user_factors[user_ids]
    h = np.einsum('nw,nwd->nd', w, self.item_factors[recent]) / np.maximum(total, 1e-12)
    h = np.where(total > 0, h, u)
    g = np.float32(self.sequential_strength)
    return ((1 - g) * u + g * h).astype(np.float32)

  def next_item_logits(self, user_ids: Any, recent_items: Any, *, exposed: bool = True) -> np.ndarray:
    """Logits [n, num_items+1] of the next choice used in generation (column 0 = -inf).

    ``exposed=True`` adds ``log propensity`` (the observed-data process); ``False`` is the pure
    preference of the current state. Already-consumed items are not masked here (generation does).
    """
    state = self.user_state(user_ids, recent_items)
    logits = (state @ self.item_factors.T) / np.float32(self.temperature)
    if exposed:
      with np.errstate(divide='ignore'):
        logits = logits + np.log(self.propensity).astype(np.float32)
    logits[:, PAD_ID] = -np.inf
    return logits


def _single_valued(labels: np.ndarray, vocab: list[str]) -> MultiValued:
  """One label per row (``labels[r]`` indexes ``vocab``) with a leading empty padding row."""
  offsets = np.concatenate([[0], np.arange(len(labels) + 1)]).astype(np.int64)
  return MultiValued(offsets, np.asarray(labels, np.int32) + 1, ['<pad>', *vocab])


def _softmax(logits: np.ndarray) -> np.ndarray:
  m = np.max(logits, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.exp(logits - m)
  s = e.sum(-1, keepdims=True)
  return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def generate(config: SyntheticConfig | None = None, **overrides: Any) -> RecDataset:
  """Generates the synthetic dataset (see the module docstring); ``overrides`` replace config fields."""
  config = config or SyntheticConfig()
  fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
  for name in overrides:
    if name not in fields:
      raise ConfigError(f'data.synthetic.{name}', f'unknown synthetic config field (known: {", ".join(sorted(fields))})')
  cfg = dataclasses.replace(config, **overrides).validate()
  rng = np.random.default_rng(cfg.seed)
  nu, ni, d, k = cfg.num_users, cfg.num_items, cfg.latent_dim, cfg.num_categories

  # Latent factors.
  centers = rng.standard_normal((k, d))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  cluster = rng.integers(0, k, ni)
  noise = rng.standard_normal((ni, d)) / np.sqrt(d)
  v = np.sqrt(cfg.cluster_weight) * centers[cluster] + np.sqrt(1 - cfg.cluster_weight) * noise
  u = rng.standard_normal((nu, d)) / np.sqrt(d)
  item_factors = np.vstack([np.zeros((1, d)), v]).astype(np.float32)
  user_factors = np.vstack([np.zeros((1, d)), u]).astype(np.float32)

  # Popularity (Zipf over a random permutation) and exposure propensity.
  rank = np.empty(ni, np.int64)
  rank[rng.permutation(ni)] = np.arange(1, ni + 1)
  pop = rank.astype(np.float64) ** -cfg.popularity_exponent
  pop /= pop.sum()
  prop = (pop / pop.max()) ** cfg.exposure_strength

  # User groups (correlated with latent dim 0) and activity / sequence lengths.
  g_score = u[:, 0] * np.sqrt(d) + 0.5 * rng.standard_normal(nu)
  group = (g_score > np.quantile(g_score, 1 - cfg.group_b_fraction)).astype(np.int32)
  z = rng.standard_normal(nu)
  extra_mean = cfg.mean_seq_len - cfg.min_seq_len
  mu = np.log(extra_mean) - cfg.seq_len_sigma ** 2 / 2
  lengths = cfg.min_seq_len + np.floor(np.exp(mu + cfg.seq_len_sigma * z) + 0.5).astype(np.int64)
  lengths = np.clip(lengths, cfg.min_seq_len, cfg.max_seq_len)
  mean_gap = cfg.mean_gap_hours * 3600.0 * np.exp(-0.5 * z + 0.3 * rng.standard_normal(nu))

  gt = GroundTruth(
      user_factors=user_factors, item_factors=item_factors,
      item_cluster=np.concatenate([[-1], cluster]).astype(np.int32),
      popularity=np.concatenate([[0.0], pop]), propensity=np.concatenate([[0.0], prop]),
      user_group=np.concatenate([[-1], group]).astype(np.int32),
      temperature=cfg.temperature, sequential_strength=cfg.sequential_strength, window=cfg.window,
      recency_decay=cfg.recency_decay, exposure_strength=cfg.exposure_strength,
      popularity_exponent=cfg.popularity_exponent)

  # Sequences: one vectorized step over all still-active users at a time.
  max_len = int(lengths.max())
  seqs = np.zeros((nu, max_len), np.int32)
  consumed = np.zeros((nu, ni + 1), bool)
  consumed[:, PAD_ID] = True
  users_all = np.arange(1, nu + 1)
  for t in range(max_len):
    active = np.flatnonzero(lengths > t)
    recent = seqs[active, max(0, t - cfg.window):t]
    logits = gt.next_item_logits(users_all[active], recent)
    logits[consumed[active]] = -np.inf
    probs = _softmax(logits)
    cdf = np.cumsum(probs, axis=1)
    draw = rng.random(len(active)) * cdf[:, -1]
    choice = np.argmax(cdf > draw[:, None], axis=1).astype(np.int32)
    seqs[active, t] = choice
    consumed[active, choice] = True

  # Timestamps: per-user start plus exponential gaps (>= 1 s).
  starts = cfg.start_time + rng.uniform(0, cfg.start_spread_days * 86400.0, nu)
  gaps = np.maximum(1.0, rng.exponential(1.0, (nu, max_len)) * mean_gap[:, None])
  gaps[:, 0] = 0.0
  times = np.floor(starts[:, None] + np.cumsum(np.floor(gaps), axis=1)).astype(np.int64)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  user = np.broadcast_to(users_all[:, None], mask.shape)[mask].astype(np.int32)
  item, timestamp = seqs[mask], times[mask]
  order = np.lexsort((user, timestamp))
  user, item, timestamp = user[order], item[order], timestamp[order]

  items = _item_features(cfg, rng, v, centers)
  users = FeatureTable(
      raw_ids=np.asarray([''] + [f'u{i}' for i in range(1, nu + 1)], dtype=object),
      categorical={'group': _single_valued(group, ['group_a', 'group_b'])},
      numeric={'activity': np.concatenate([[np.nan], 86400.0 / mean_gap]).astype(np.float32)})
  return RecDataset(
      name='synthetic', user=user, item=item, timestamp=timestamp,
      rating=np.full(len(user), np.nan, np.float32), items=items, users=users,
      has_timestamps=True, extras={'ground_truth': gt, 'config': cfg}).validate()


def _item_features(cfg: SyntheticConfig, rng: np.random.Generator, v: np.ndarray,
                   centers: np.ndarray) -> FeatureTable:
  ni, d = v.shape
  vs = v * np.sqrt(d)  # roughly unit-variance coordinates
  category = np.argmax(v @ centers.T, axis=1)
  cat_words = [_CATEGORY_WORDS[c % len(_CATEGORY_WORDS)] +
               ('' if c < len(_CATEGORY_WORDS) else str(c // len(_CATEGORY_WORDS) + 1))
               for c in range(cfg.num_categories)]

  def pick(n: int, noise: float) -> np.ndarray:
    directions = rng.standard_normal((n, d))
    return np.argmax(vs @ directions.T / np.sqrt(d) + noise * rng.gumbel(size=(ni, n)), axis=1)

  adj = pick(cfg.title_vocab, 0.5)
  noun = pick(cfg.title_vocab, 0.5)
  adj2 = pick(cfg.title_vocab, 1.0)

  tag_dirs = rng.standard_normal((cfg.num_tags, d))
  tag_scores = vs @ tag_dirs.T / np.sqrt(d) + 0.5 * rng.gumbel(size=(ni, cfg.num_tags))
  n_tags = rng.integers(1, min(3, cfg.num_tags) + 1, ni)
  top_tags = np.argsort(-tag_scores, axis=1)

  log_price = 3.0 + 0.6 * vs[:, 1] + 0.3 * rng.standard_normal(ni)
  price = np.exp(log_price)
  price_missing = rng.random(ni) < cfg.price_missing
  tiers = np.quantile(price, [1 / 3, 2 / 3])

  w = rng.standard_normal((d, cfg.dense_dim)) / np.sqrt(d)
  emb = vs @ w + cfg.dense_noise * rng.standard_normal((ni, cfg.dense_dim))

  tag_offsets = np.concatenate([[0, 0], np.cumsum(n_tags)]).astype(np.int64)
  tag_values = np.concatenate([top_tags[i, :n_tags[i]] for i in range(ni)]).astype(np.int32) + 1
  titles, descriptions, seen = [''], [''], {}
  for i in range(ni):
    base = f'{cat_words[category[i]]} {_ADJECTIVES[adj[i]]} {_NOUNS[noun[i]]}'
    seen[base] = seen.get(base, 0) + 1
    titles.append(base if seen[base] == 1 else f'{base} {seen[base]}')
    row_tags = [_TAGS[t] for t in top_tags[i, :n_tags[i]]]
    tier = ('low' if price[i] < tiers[0] else 'medium' if price[i] < tiers[1] else 'high')
    tag_text = ', '.join(row_tags[:-1]) + (' and ' if len(row_tags) > 1 else '') + row_tags[-1]
    descriptions.append(
        f'A {_ADJECTIVES[adj2[i]]} {_NOUNS[noun[i]]} from the {cat_words[category[i]]} line; '
        f'{tag_text}' + ('.' if price_missing[i] else f'; {tier} price.'))
  return FeatureTable(
      raw_ids=np.asarray([''] + [f'i{i}' for i in range(1, ni + 1)], dtype=object),
      text={'title': titles, 'description': descriptions},
      categorical={'category': _single_valued(
                       category, [f'cat_{c:02d}' for c in range(cfg.num_categories)]),
                   'tags': MultiValued(tag_offsets, tag_values, ['<pad>', *_TAGS[:cfg.num_tags]])},
      numeric={'price': np.concatenate([[np.nan], np.where(price_missing, np.nan, price)]
                                       ).astype(np.float32)},
      dense={'embedding': np.vstack([np.zeros((1, cfg.dense_dim)), emb]).astype(np.float32)})
