"""Debiasing: propensities, IPS/SNIPS/PDA objectives, fairness terms, unbiased evaluation, Coat."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llm4rec_jax.debias import estimators, fairness, mf, objectives, propensity, unbiased_eval
from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model.adversary import AdversaryHead
from llm4rec_jax.train import losses


def test_popularity_propensity_clip_and_ips_weights_by_hand():
  counts = np.array([0.0, 4.0, 1.0, 0.0])  # ids 1..3; id 0 is padding
  p = propensity.popularity_propensity(counts, power=1.0, smoothing=1.0)
  np.testing.assert_allclose(p, [1.0, 5 / 5, 2 / 5, 1 / 5])
  np.testing.assert_allclose(propensity.popularity_propensity(counts, power=0.5, smoothing=1.0),
                             np.sqrt([1.0, 1.0, 0.4, 0.2]))
  np.testing.assert_allclose(propensity.clip(p, 0.25), [1.0, 1.0, 0.4, 0.25])
  w = propensity.inverse_weights(p, clip_min=0.25, self_normalize=False)
  np.testing.assert_allclose(w, [1.0, 1.0, 2.5, 4.0])
  # Self-normalised: mean weight over the 5 observed interactions (4 x item 1, 1 x item 2) = 1.3.
  wn = propensity.inverse_weights(p, clip_min=0.25, self_normalize=True, counts=counts)
  np.testing.assert_allclose(wn, np.array([1.0, 1.0, 2.5, 4.0]) / 1.3)
  np.testing.assert_allclose(propensity.popularity(counts, smoothing=1.0)[1:], [5 / 8, 2 / 8, 1 / 8])
  with pytest.raises(ConfigError, match='debias.clip'):
    propensity.clip(p, 0.0)
  with pytest.raises(ConfigError, match='debias.smoothing'):
    propensity.popularity_propensity(counts, smoothing=0.0)


def test_windowed_propensity_by_hand():
  items = np.array([1, 1, 2, 2, 2, 1])
  times = np.array([1, 2, 3, 4, 5, 6])
  wp = propensity.windowed_popularity_propensity(items, times, 2, num_windows=2, power=1.0,
                                                 smoothing=1.0)
  np.testing.assert_array_equal(wp.edges, [1, 4, 7])
  # Window 0 (t < 4): item 1 twice, item 2 once; window 1: item 1 once, item 2 twice.
  np.testing.assert_allclose(wp.propensity, [[1.0, 3 / 3, 2 / 3], [1.0, 2 / 3, 3 / 3]])
  np.testing.assert_allclose(wp.lookup(np.array([2, 2]), np.array([2, 5])), [2 / 3, 1.0])


def test_ips_target_weights_scale_and_biased_loss_by_hand():
  item_w = jnp.array([0.0, 1.0, 2.5, 4.0])
  targets = jnp.array([[0, 1, 2], [3, 0, 0]])
  w = objectives.ips_target_weights(targets, item_w)
  np.testing.assert_allclose(w, [[0, 1, 2.5], [4, 0, 0]])
  assert float(objectives.ips_scale(targets, w)) == pytest.approx(7.5 / 3)
  # The weighted loss with a logit bias equals the hand-computed SNIPS cross-entropy.
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(2, 3, 4)).astype(np.float32)
  table = rng.normal(size=(4, 4)).astype(np.float32)
  bias = np.array([0.0, 0.3, -0.2, 0.5], np.float32)
  catalog = jnp.array([False, True, True, True])
  loss, _ = losses.full_softmax_loss(jnp.asarray(hidden), jnp.asarray(table), targets,
                                     catalog=catalog, weights=w, logit_bias=jnp.asarray(bias))
  nll, ws = [], []
  for b, s in [(0, 1), (0, 2), (1, 0)]:
    logits = hidden[b, s] @ table.T + bias
    logits = logits[1:]
    t = int(targets[b, s])
    nll.append(np.log(np.exp(logits).sum()) - logits[t - 1])
    ws.append(float(w[b, s]))
  expected = np.dot(nll, ws) / np.sum(ws)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_logistic_propensity_learns_feature_effect():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, size=(4000, 1)).astype(np.float32)
  observed = rng.random(4000) < np.where(x[:, 0] > 0, 0.6, 0.1)
  model = propensity.LogisticPropensity.fit(x, observed, l2=0.0, steps=400, learning_rate=0.1)
  p = model.predict(np.array([[0.0], [1.0]]))
  assert p[0] == pytest.approx(observed[x[:, 0] == 0].mean(), abs=0.02)
  assert p[1] == pytest.approx(observed[x[:, 0] == 1].mean(), abs=0.02)


def test_gradient_reversal():
  g = jax.grad(lambda x: jnp.sum(fairness.reverse_gradient(x, 2.0) * 3.0))(jnp.ones(3))
  np.testing.assert_allclose(g, [-6.0, -6.0, -6.0])
  g = jax.grad(lambda x: jnp.sum(fairness.adversary_input(x, False) * 3.0))(jnp.ones(3))
  np.testing.assert_allclose(g, [3.0, 3.0, 3.0])
  g = jax.grad(lambda x: jnp.sum(fairness.adversary_input(x, True, 0.5) * 3.0))(jnp.ones(3))
  np.testing.assert_allclose(g, [-1.5, -1.5, -1.5])
  assert float(fairness.reverse_gradient(jnp.float32(1.5), 1.0)) == 1.5


def _train_encoder_with_adversary(reverse: bool, steps: int = 1000) -> float:
  """A linear encoder of [attribute signal, task features] trained on a regression task that does
  not need the attribute, with an adversary on its output (AdamW, weight decay 1); returns the
  adversary's accuracy over the last 100 steps."""
  rng = np.random.default_rng(0)
  n = 512
  attr = rng.integers(0, 2, n)
  z = rng.normal(size=(n, 4))
  x = np.concatenate([(2 * attr - 1)[:, None] + 0.3 * rng.normal(size=(n, 1)), z], 1)
  y = z @ np.array([1.0, -1.0, 0.5, 2.0])
  x, y, attr = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(attr)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Linear(5, 8, rngs=rngs)
      self.task = nnx.Linear(8, 1, rngs=rngs)
      self.adversary = AdversaryHead(8, 2, rngs=rngs)

  model = Model(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(1e-2, weight_decay=1.0)

  def loss_fn(p):
    m = nnx.merge(graphdef, p)
    h = m.enc(x)
    task = jnp.mean((m.task(h)[:, 0] - y) ** 2)
    adv, aux = fairness.adversarial_loss(m.adversary, h, attr, reverse=reverse)
    return task + adv, aux['adv_accuracy']

  @jax.jit
  def train(p):
    def step(carry, _):
      p, s = carry
      (_, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), acc
    (p, _), accs = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p, accs

  _, accs = train(params)
  return float(jnp.mean(accs[-100:]))


def test_adversary_learns_attribute_without_reversal_and_fails_with_it():
  acc_off = _train_encoder_with_adversary(reverse=False)
  acc_on = _train_encoder_with_adversary(reverse=True)
  assert acc_off > 0.95  # the attribute is plainly in the representation
  assert acc_on < 0.7  # near the 50% majority rate: the encoder defeats the adversary


def test_parity_penalty_by_hand():
  probs = np.array([[0.0, 0.8, 0.2], [0.0, 0.4, 0.6], [0.0, 0.1, 0.9]])
  with np.errstate(divide='ignore'):
    logits = jnp.asarray(np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -1e30))
  # Users 0 and 1 in groups 0 and 1 (user 2 unknown, ignored): overall mean [0, .6, .4], each
  # group's distribution is 0.2 away in total variation.
  pen = fairness.parity_penalty(logits, jnp.array([0, 1, -1]), 2)
  assert float(pen) == pytest.approx(0.2, abs=1e-5)
  assert float(fairness.parity_penalty(logits, jnp.array([0, 0, -1]), 2)) == pytest.approx(0.0,
                                                                                        abs=1e-6)


def test_activity_terciles_and_user_groups(tmp_path):
  seqs = [np.array([])] + [np.arange(n) for n in (1, 2, 3, 4, 5, 6)]
  groups = fairness.activity_terciles(seqs)
  np.testing.assert_array_equal(groups, [-1, 0, 0, 1, 1, 2, 2])
  from llm4rec_jax.data.dataset import FeatureTable, MultiValued
  users = FeatureTable(np.array(['', 'a', 'b', 'c'], object),
                       categorical={'gender': MultiValued.from_lists([[], ['F'], ['M'], []])})
  labels, names = fairness.user_groups(users, seqs[:4], 'gender')
  assert names == ['F', 'M'] and list(labels) == [-1, 0, 1, -1]
  with pytest.raises(ConfigError, match='debias.group_attribute'):
    fairness.user_groups(users, seqs[:4], 'age')


def test_rating_metrics_and_auc_by_hand():
  users = np.array([1, 1, 1, 2, 2])
  ratings = np.array([5.0, 1.0, 4.0, 2.0, 5.0])
  preds = np.array([0.9, 0.8, 0.1, 0.5, 0.4])
  m = unbiased_eval.rating_metrics(users, ratings, preds, k=2, threshold=4.0)
  # User 1: ranked rel, irrel, rel -> DCG 1, IDCG 1 + 1/log2(3); user 2: irrel, rel -> 1/log2(3).
  idcg = 1 + 1 / math.log2(3)
  assert m['ndcg@2'] == pytest.approx((1 / idcg + 1 / math.log2(3)) / 2)
  assert m['recall@2'] == pytest.approx((0.5 + 1.0) / 2)
  assert m['auc'] == pytest.approx(2 / 6)  # positives .9, .1, .4 vs negatives .8, .5
  assert m['mse'] == pytest.approx(55.47 / 5)
  assert m['mae'] == pytest.approx(14.3 / 5)
  assert unbiased_eval.auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5


def test_truth_ndcg_and_true_gains_by_hand():
  gains = np.array([[0.0, 0.5, 0.3, 0.2]])
  dcg = 0.3 + 0.5 / math.log2(3)
  ideal = 0.5 + 0.3 / math.log2(3)
  assert unbiased_eval.truth_ndcg(np.array([[2, 1]]), gains, k=2) == pytest.approx(dcg / ideal)
  assert unbiased_eval.truth_ndcg(np.array([[1, 2]]), gains, k=2) == pytest.approx(1.0)
  from llm4rec_jax.data import synthetic
  ds = synthetic.generate(num_users=20, num_items=30, mean_seq_len=8.0, max_seq_len=20)
  gt = ds.extras['ground_truth']
  inputs = np.array([[0, 3, 4], [5, 6, 7]])
  g = unbiased_eval.true_gains(gt, np.array([1, 2]), inputs, inputs)
  np.testing.assert_allclose(g.sum(1), 1.0)
  assert (g[0, [0, 3, 4]] == 0).all() and (g[1, [5, 6, 7]] == 0).all()
  logits = gt.next_item_logits(np.array([1]), inputs[:1], exposed=False)[0]
  assert g[0, 1] / g[0, 2] == pytest.approx(math.exp(logits[1] - logits[2]), rel=1e-4)


def test_mf_fits_low_rank_ratings_and_weights_matter():
  rng = np.random.default_rng(0)
  nu, ni = 30, 40
  u, i = np.meshgrid(np.arange(1, nu + 1), np.arange(1, ni + 1), indexing='ij')
  u, i = u.reshape(-1), i.reshape(-1)
  pu, qi = rng.normal(size=(nu + 1, 2)), rng.normal(size=(ni + 1, 2))
  r = 3.0 + np.sum(pu[u] * qi[i], 1)
  cfg = mf.MFConfig(dim=2, l2=1e-4, learning_rate=0.05, steps=600)
  model, info = mf.fit(u, i, r, np.ones(len(r)), num_users=nu, num_items=ni, cfg=cfg)
  assert info['valid_loss'] < 0.05 * np.var(r)
  # Zero weight on half the rows: they stop constraining the fit (their error grows).
  w = (u % 2).astype(np.float64)
  model_w, _ = mf.fit(u, i, r + 3.0 * (u % 2 == 0), w, num_users=nu, num_items=ni, cfg=cfg)
  err = np.asarray(model_w(u, i)) - r
  assert np.mean(err[w > 0] ** 2) < 0.05 * np.var(r)
  with pytest.raises(ConfigError, match='mf.normalization'):
    mf.fit(u, i, r, w, num_users=nu, num_items=ni, cfg=mf.MFConfig(normalization='x'))


def test_coat_reader(data_dir):
  from llm4rec_jax.data import readers
  ds = readers.load_dataset('coat')
  assert (ds.num_users, ds.num_items, ds.num_interactions) == (290, 300, 6960)
  test = ds.extras['random_test']
  assert len(test['rating']) == 4640 and set(np.unique(test['rating'])) <= {1, 2, 3, 4, 5}
  assert ds.extras['propensities'].shape == (291, 301)
  assert sorted(ds.users.categorical) == ['age', 'fashioninterest', 'gender', 'location']
  # Internal ids follow the raw 1-based row / column numbers; the first user is a woman aged 20-30.
  assert ds.users.raw_ids[1] == '1' and ds.items.raw_ids[300] == '300'
  assert ds.users.categorical['gender'].labels(1) == ['women']
  raw = np.loadtxt(data_dir / 'coat' / 'train.ascii')
  assert raw[0, 72] == ds.rating[(ds.user == 1) & (ds.item == 73)][0]


def test_coat_reader_errors_name_file_and_line(tmp_path):
  from llm4rec_jax.data import readers
  (tmp_path / 'train.ascii').write_text('0 1 2\n3 0\n')
  (tmp_path / 'test.ascii').write_text('0 1 2\n3 0 1\n')
  with pytest.raises(DataError, match=r'train\.ascii:2'):
    readers.load_dataset(f'coat:{tmp_path}')
  (tmp_path / 'train.ascii').write_text('0 1 2\n3 0 9\n')
  with pytest.raises(DataError, match=r'train\.ascii.*0\.\.5'):
    readers.load_dataset(str(tmp_path))  # format detected from the file names


def test_learned_item_propensity_by_hand():
  # Items 1, 2 of kind A (counts 8, 2), items 3, 4 of kind B (1, 1); 10 users. The logistic model
  # of exposure from the kind alone: P(A) = 10 / 20, P(B) = 2 / 20, scaled so the largest is 1.
  features = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
  p = propensity.learned_item_propensity(features, np.array([0, 8, 2, 1, 1.0]), 10, l2=0.0,
                                         steps=1500)
  np.testing.assert_allclose(p, [1.0, 1.0, 1.0, 0.2, 0.2], atol=0.01)


def test_naive_bayes_propensity_by_hand():
  observed = np.array([5, 5, 5, 4, 1])  # self-selected: mostly high ratings
  random = np.array([1, 1, 2, 4, 5, 3])
  p = propensity.naive_bayes_propensity(observed, random, observed_fraction=0.1, smoothing=1.0)
  obs_h = (np.array([1, 0, 0, 1, 3]) + 1) / 10  # levels 1..5
  rnd_h = (np.array([2, 1, 1, 1, 1]) + 1) / 11
  np.testing.assert_allclose(p, np.r_[1.0, np.minimum(obs_h * 0.1 / rnd_h, 1.0)])
  assert p[5] > p[1]  # high ratings were more likely to be observed


def test_device_ndcg_matches_rating_metrics():
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(1, 21), 7)
  ratings = rng.integers(1, 6, size=len(users)).astype(np.float32)
  preds = rng.normal(size=len(users)).astype(np.float32)
  preds[::5] = preds[1::5][:len(preds[::5])]  # some ties
  rr = estimators.RandomRatings.from_rows(users, np.arange(len(users)), ratings)
  pred_rows = np.zeros(rr.mask.shape, np.float32)
  pred_rows[rr.mask] = preds  # rows are grouped by user in order
  got = float(estimators.ndcg_at_k(jnp.asarray(pred_rows), jnp.asarray(rr.ratings >= 4),
                                   jnp.asarray(rr.mask), 5))
  want = unbiased_eval.rating_metrics(users, ratings, preds, k=5)['ndcg@5']
  assert got == pytest.approx(want, rel=1e-5)


def test_debiased_estimators_undo_missing_not_at_random_ratings():
  # Low-rank true ratings; high ratings are observed far more often (self-selection).
  rng = np.random.default_rng(1)
  nu, ni = 60, 60
  truth = np.clip(3.0 + rng.normal(size=(nu + 1, 2)) @ rng.normal(size=(2, ni + 1)), 1, 5)
  prop = np.where(truth >= 3.5, 0.6, 0.1)
  seen = rng.random(truth.shape) < prop
  seen[0], seen[:, 0] = False, False
  u, i = np.nonzero(seen)
  r = truth[u, i]
  w = 1.0 / prop[u, i]
  gu, gi = np.nonzero(np.ones((nu, ni)))
  valid = [estimators.RandomRatings.from_rows(gu + 1, gi + 1, truth[gu + 1, gi + 1])] * 2
  errors = {}
  for name in ('naive', 'snips', 'dr'):
    cfg = estimators.FitConfig(estimator=name, dim=2, learning_rate=0.05, steps=400, eval_every=50)
    graphdef, params, info = estimators.fit_many(u, i, r, np.stack([w, w]), np.array([0.1, 1.0]),
                                                 np.array([0, 1]), valid, num_users=nu,
                                                 num_items=ni, cfg=cfg)
    assert info['mse']['step'].shape == (2,) and (info['mse']['step'] > 0).all()
    pred = np.asarray(jax.vmap(lambda p, g=graphdef: estimators.dense_predictions(g, p))(
        params['mse']))
    assert pred.shape == (2, nu + 1, ni + 1)
    mse = [float(np.mean((pred[k][1:, 1:] - truth[1:, 1:]) ** 2)) for k in range(2)]
    np.testing.assert_allclose(mse, info['mse']['value'], rtol=1e-4)  # kept = best on validation
    errors[name] = min(mse)
  # The naive model learns that ratings are high; SNIPS with the true propensities is far closer
  # to the truth. (DR runs, but with these large weights its correction term overshoots.)
  assert errors['snips'] < 0.5 * errors['naive'], errors
  assert np.isfinite(errors['dr']), errors
  with pytest.raises(ConfigError, match='estimator'):
    estimators.fit_many(u, i, r, np.stack([w]), np.array([0.1]), np.array([0]), valid[:1],
                        num_users=nu, num_items=ni, cfg=estimators.FitConfig(estimator='ipw'))


def test_mnar_likelihood_matches_a_direct_computation():
  rng = np.random.default_rng(3)
  pred = rng.normal(3.0, 1.0, size=(3, 4)).astype(np.float32)
  level_logits = np.array([-2.0, -1.5, -1.0], np.float32)  # 3 levels
  user, item = rng.normal(size=3).astype(np.float32), rng.normal(size=4).astype(np.float32)
  observed = np.array([[0, 2, 0, 0], [1, 0, 0, 3], [0, 0, 0, 0]])  # level, 0 = not rated
  real = np.ones((3, 4), bool)
  real[0, 0] = False  # a padding pair counts for nothing
  want = 0.0
  for u in range(3):
    for i in range(4):
      if not real[u, i]:
        continue
      p_r = np.exp(-(np.arange(1, 4) - pred[u, i]) ** 2 / (2 * 0.8 ** 2))
      p_r /= p_r.sum()
      p_rated = 1.0 / (1.0 + np.exp(-(level_logits + user[u] + item[i])))
      r = observed[u, i]
      want -= np.log(p_r[r - 1] * p_rated[r - 1]) if r else np.log(np.sum(p_r * (1 - p_rated)))
  got = estimators._mnar_nll(  # pylint: disable=protected-access
      jnp.asarray(pred), jnp.asarray(level_logits), {'user': jnp.asarray(user),
                                                     'item': jnp.asarray(item)}, 0.8,
      jnp.asarray(np.maximum(observed - 1, 0)), jnp.asarray(observed > 0),
      jnp.asarray((observed == 0) & real))
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_mnar_estimator_uses_the_unrated_pairs():
  # Integer ratings from a low-rank model; a pair is rated far more often when its rating is high.
  rng = np.random.default_rng(2)
  nu, ni = 80, 60
  latent = rng.normal(size=(nu + 1, 2)) @ rng.normal(size=(2, ni + 1))
  truth = np.clip(np.round(2.5 + 1.2 * latent), 1, 5)
  p_level = np.array([0.0, 0.03, 0.05, 0.1, 0.3, 0.5])  # P(rated | r), index = r
  seen = rng.random(truth.shape) < p_level[truth.astype(int)]
  seen[0], seen[:, 0] = False, False
  u, i = np.nonzero(seen)
  r = truth[u, i]
  gu, gi = np.nonzero(np.ones((nu, ni)))
  valid = [estimators.RandomRatings.from_rows(gu + 1, gi + 1, truth[gu + 1, gi + 1])] * 2
  w = np.ones((2, len(r)))
  results = {}
  for name in ('naive', 'mnar'):
    cfg = estimators.FitConfig(estimator=name, dim=2, learning_rate=0.05, steps=300, eval_every=50)
    graphdef, params, info = estimators.fit_many(
        u, i, r, w, np.array([0.3, 1.0]), np.array([0, 1]), valid, num_users=nu, num_items=ni,
        cfg=cfg, level_propensity=np.stack([p_level, p_level]) if name == 'mnar' else None)
    results[name] = (float(np.min(info['mse']['value'])), float(np.max(info['ndcg']['value'])))
    pred = np.asarray(estimators.dense_predictions(graphdef, jax.tree.map(lambda x: x[0],
                                                                           params['mse'])))
    assert np.isfinite(pred).all()
  # Naive learns from mostly high ratings; the joint likelihood knows that low ratings go unrated.
  assert results['mnar'][0] < 0.7 * results['naive'][0], results
  assert results['mnar'][1] > results['naive'][1], results  # and ranks better (NDCG@5)
  with pytest.raises(ValueError, match='level_propensity'):
    estimators.fit_many(u, i, r, w[:1], np.array([0.1]), np.array([0]), valid[:1], num_users=nu,
                        num_items=ni, cfg=estimators.FitConfig(estimator='mnar', steps=50))
  with pytest.raises(ValueError, match='integer ratings'):
    estimators.fit_many(u, i, r + 0.5, w[:1], np.array([0.1]), np.array([0]), valid[:1],
                        num_users=nu, num_items=ni, cfg=estimators.FitConfig(estimator='mnar'),
                        level_propensity=p_level[None])
