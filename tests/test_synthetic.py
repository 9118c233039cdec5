"""Tests of the synthetic generator: determinism, conventions, and the ground-truth properties."""

import dataclasses

import numpy as np
import pytest

from llm4rec_jax.data.synthetic import GroundTruth, SyntheticConfig, generate
from llm4rec_jax.errors import ConfigError

SMALL = dict(num_users=300, num_items=200, mean_seq_len=12.0, max_seq_len=60)


@pytest.fixture(scope='module')
def ds():
  return generate()


def top_decile_share(counts: np.ndarray) -> float:
  counts = np.sort(np.asarray(counts, np.float64))[::-1]
  return float(counts[:max(1, len(counts) // 10)].sum() / counts.sum())


def _arrays(ds):
  gt = ds.extras['ground_truth']
  out = dict(user=ds.user, item=ds.item, timestamp=ds.timestamp,
             emb=ds.items.dense['embedding'], price=ds.items.numeric['price'],
             tags=ds.items.categorical['tags'].values, cat=ds.items.categorical['category'].values,
             group=ds.users.categorical['group'].values, activity=ds.users.numeric['activity'],
             uf=gt.user_factors, vf=gt.item_factors, prop=gt.propensity)
  return out, ds.items.text['title'], ds.items.text['description']


def test_deterministic_per_seed():
  a, a_titles, a_desc = _arrays(generate(**SMALL, seed=7))
  b, b_titles, b_desc = _arrays(generate(SyntheticConfig(**SMALL, seed=7)))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert a_titles == b_titles and a_desc == b_desc
  c, _, _ = _arrays(generate(**SMALL, seed=8))
  assert not np.array_equal(a['item'], c['item'])
  assert not np.array_equal(a['uf'], c['uf'])


def test_shapes_and_id_conventions(ds):
  cfg = ds.extras['config']
  assert isinstance(cfg, SyntheticConfig) and cfg == SyntheticConfig()
  assert ds.name == 'synthetic' and ds.has_timestamps
  assert ds.num_users == cfg.num_users and ds.num_items == cfg.num_items
  ds.validate()
  assert ds.user.dtype == np.int32 and ds.item.dtype == np.int32 and ds.timestamp.dtype == np.int64
  assert np.isnan(ds.rating).all()
  lengths = np.bincount(ds.user, minlength=ds.num_users + 1)
  assert lengths[0] == 0 and lengths[1:].min() >= cfg.min_seq_len
  assert lengths.max() <= cfg.max_seq_len
  assert 20 <= lengths[1:].mean() <= 30
  for seq in ds.sequences()[1:]:
    assert len(np.unique(seq)) == len(seq)  # no repeated items within a user
  assert ds.items.raw_ids[0] == '' and ds.items.raw_ids[1] == 'i1' and ds.users.raw_ids[5] == 'u5'
  for table, n in ((ds.items, ds.num_items), (ds.users, ds.num_users)):
    assert table.num_rows == n + 1
    for col in list(table.text.values()) + list(table.numeric.values()) + list(table.dense.values()):
      assert len(col) == n + 1
    for field in table.categorical.values():
      assert field.num_rows == n + 1 and len(field.row(0)) == 0
      assert field.values.min() >= 1 and field.values.max() < len(field.vocab)
  emb = ds.items.dense['embedding']
  assert emb.shape == (ds.num_items + 1, cfg.dense_dim) and emb.dtype == np.float32
  assert (emb[0] == 0).all() and np.isfinite(emb).all()
  titles = ds.items.text['title']
  assert titles[0] == '' and len(set(titles[1:])) == ds.num_items
  assert all(d for d in ds.items.text['description'][1:])
  tags = ds.items.categorical['tags']
  assert all(1 <= len(tags.row(i)) <= 3 for i in range(1, ds.num_items + 1))
  assert ds.items.categorical['category'].labels(1)[0].startswith('cat_')
  price = ds.items.numeric['price'][1:]
  assert 0.02 < np.isnan(price).mean() < 0.09 and (price[~np.isnan(price)] > 0).all()
  assert set(ds.users.categorical['group'].vocab[1:]) == {'group_a', 'group_b'}
  assert (ds.users.numeric['activity'][1:] > 0).all()


def test_overrides_and_config_errors():
  small = generate(**SMALL, num_categories=5, dense_dim=8)
  assert small.num_users == 300 and small.items.dense['embedding'].shape == (201, 8)
  assert len(small.items.categorical['category'].vocab) <= 6
  with pytest.raises(ConfigError, match='num_userz'):
    generate(num_userz=3)
  with pytest.raises(ConfigError, match='max_seq_len'):
    generate(num_items=50, max_seq_len=100)
  with pytest.raises(ConfigError, match='temperature'):
    generate(temperature=0.0)


def test_popularity_is_power_law(ds):
  counts = np.bincount(ds.item, minlength=ds.num_items + 1)[1:]
  assert top_decile_share(counts) > 0.4
  # log-count vs log-rank is roughly linear with a negative slope over the head.
  ranked = np.sort(counts)[::-1][:300].astype(np.float64)
  slope = np.polyfit(np.log(np.arange(1, 301)), np.log(ranked), 1)[0]
  assert slope < -0.5


def test_exposure_confounds_popularity(ds):
  gt: GroundTruth = ds.extras['ground_truth']
  users = np.arange(1, ds.num_users + 1)
  lengths = np.bincount(ds.user, minlength=ds.num_users + 1)[1:]
  observed = np.bincount(ds.item, minlength=ds.num_items + 1)[1:]
  # What users would pick from true preference alone (no exposure), with the same activity.
  by_preference = (gt.choice_probabilities(users, exposed=False) * lengths[:, None]).sum(0)[1:]
  assert top_decile_share(observed) > top_decile_share(by_preference) + 0.2
  # Observed counts track the exposure propensity far more than the preference-only counts do.
  rank = lambda x: np.argsort(np.argsort(x))
  corr_observed = np.corrcoef(rank(observed), rank(gt.propensity[1:]))[0, 1]
  corr_preference = np.corrcoef(rank(by_preference), rank(gt.propensity[1:]))[0, 1]
  assert corr_observed > 0.6 and abs(corr_preference) < 0.2
  # Without confounding the observed distribution is much flatter.
  flat = generate(exposure_strength=0.0, num_users=1000)
  assert top_decile_share(np.bincount(flat.item, minlength=flat.num_items + 1)[1:]) < 0.3
  assert (flat.extras['ground_truth'].propensity[1:] == 1).all()


def test_sequential_signal_beats_popularity(ds):
  seqs = ds.sequences()[1:]
  n = ds.num_items + 1
  order = np.random.default_rng(0).permutation(len(seqs))
  test, train = order[:1000], order[1000:]
  train_seqs = [seqs[j] for j in train]
  transitions = np.zeros((n, n))
  for s in train_seqs:
    np.add.at(transitions, (s[:-1], s[1:]), 1)
  pop = np.bincount(np.concatenate(train_seqs), minlength=n).astype(np.float64)

  def hit_rate(score, k=10):
    hits = 0
    for j in test:
      history, target = seqs[j][:-1], seqs[j][-1]
      s = score(history).astype(np.float64)
      s[0] = -np.inf
      s[history] = -np.inf
      hits += target in np.argpartition(-s, k)[:k]
    return hits / len(test)

  hr_pop = hit_rate(lambda h: pop)
  hr_markov = hit_rate(lambda h: transitions[h[-1]] + 1e-6 * pop)
  assert hr_markov > hr_pop + 0.1, (hr_markov, hr_pop)
  # Consecutive items share their latent cluster far more often than chance.
  cluster = ds.extras['ground_truth'].item_cluster
  same = np.mean(np.concatenate([cluster[s[1:]] == cluster[s[:-1]] for s in seqs]))
  assert same > 0.3


def test_timestamps_increase_and_interleave(ds):
  for ts in ds.timestamp_sequences()[1:]:
    assert (np.diff(ts) > 0).all()
  assert (np.diff(ds.timestamp) >= 0).all()  # returned in global time order
  cut = np.quantile(ds.timestamp, 0.8)
  before = np.zeros(ds.num_users + 1, bool)
  after = np.zeros(ds.num_users + 1, bool)
  before[ds.user[ds.timestamp <= cut]] = True
  after[ds.user[ds.timestamp > cut]] = True
  assert (before & after).sum() > 0.05 * ds.num_users  # users span a global cut
  assert (~before[1:]).sum() > 0.05 * ds.num_users  # and some start after it


def test_features_follow_factors(ds):
  gt = ds.extras['ground_truth']
  v = gt.item_factors[1:].astype(np.float64)
  emb = ds.items.dense['embedding'][1:].astype(np.float64)
  x = np.hstack([emb, np.ones((len(emb), 1))])
  coef = np.linalg.lstsq(x, v, rcond=None)[0]
  r2 = 1 - ((x @ coef - v) ** 2).sum() / ((v - v.mean(0)) ** 2).sum()
  assert r2 > 0.5
  category = ds.items.categorical['category'].values - 1
  assert np.mean(category == gt.item_cluster[1:]) > 0.8
  price = ds.items.numeric['price'][1:]
  ok = ~np.isnan(price)
  assert np.corrcoef(np.log(price[ok]), v[ok, 1])[0, 1] > 0.5
  group = ds.users.categorical['group'].values - 1
  np.testing.assert_array_equal(group, gt.user_group[1:])
  assert np.corrcoef(group, gt.user_factors[1:, 0])[0, 1] > 0.4
  assert 0.25 < group.mean() < 0.35


def test_ground_truth_api(ds):
  gt = ds.extras['ground_truth']
  matrix = gt.preference_matrix()
  assert matrix.shape == (ds.num_users + 1, ds.num_items + 1)
  assert np.isneginf(matrix[0]).all() and np.isneginf(matrix[:, 0]).all()
  users, items = np.array([1, 2, 3]), np.array([10, 20, 0])
  np.testing.assert_allclose(gt.true_preference(users, items)[:2], matrix[users[:2], items[:2]])
  assert np.isneginf(gt.true_preference(users, items)[2])
  for exposed in (True, False):
    p = gt.choice_probabilities(users, exposed=exposed)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
    assert (p[:, 0] == 0).all()
  # Without recent items the state is the long-term factor; with them it moves toward them.
  state0 = gt.user_state(users, np.zeros((3, 2), np.int64))
  np.testing.assert_allclose(state0, gt.user_factors[users], rtol=1e-6)
  logits = gt.next_item_logits(users, np.array([[5], [6], [7]]), exposed=False)
  assert logits.shape == (3, ds.num_items + 1) and np.isneginf(logits[:, 0]).all()
  assert (gt.popularity[1:] > 0).all() and abs(gt.popularity.sum() - 1) < 1e-9
  assert gt.propensity[1:].max() == 1.0 and (gt.propensity[1:] > 0).all()
  assert dataclasses.is_dataclass(gt)
