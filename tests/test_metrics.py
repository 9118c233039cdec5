"""Ranking metrics, the on-device full-ranking function (1 device vs 8-device mesh) and the losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from llm4rec_jax import evaluation, metrics, partitioning
from llm4rec_jax.data import pipeline
from llm4rec_jax.config_base import DEFAULT_RULES
from llm4rec_jax.model.decoder import DecoderConfig, ItemDecoder
from llm4rec_jax.train import losses

# ----------------------------------------------------------------------------- ranking_metrics


def test_ranking_metrics_hand_computed():
  ranks = [0, 3, 9, 10, 100]
  m = metrics.ranking_metrics(np.array(ranks), ks=(1, 5, 10))
  assert m['num_cases'] == 5
  assert m['hr@1'] == pytest.approx(1 / 5)
  assert m['ndcg@1'] == pytest.approx(1 / 5)
  assert m['hr@5'] == pytest.approx(2 / 5)
  assert m['ndcg@5'] == pytest.approx((1 + 1 / math.log2(5)) / 5)
  assert m['hr@10'] == pytest.approx(3 / 5)
  assert m['ndcg@10'] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
  assert m['mrr'] == pytest.approx(np.mean([1 / (r + 1) for r in ranks]))
  assert set(m) == {'hr@1', 'ndcg@1', 'hr@5', 'ndcg@5', 'hr@10', 'ndcg@10', 'mrr', 'num_cases'}
  assert set(metrics.ranking_metrics([2])) >= {f'hr@{k}' for k in metrics.DEFAULT_KS}


def test_ranking_metrics_empty_raises():
  with pytest.raises(ValueError):
    metrics.ranking_metrics(np.zeros(0, np.int32))


# ------------------------------------------------------------------------------- make_rank_fn

CFG = DecoderConfig(vocab_size=128, num_items=100, d_model=16, num_layers=1, num_heads=2,
                    dropout=0.0)
B, L, W = 8, 6, 8


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  inputs = np.zeros((B, L), np.int32)
  seen = np.zeros((B, W), np.int32)
  for b in range(B):
    n = b % (L + 2) + 1  # history lengths 1..8 (longer than L for some rows)
    hist = rng.choice(np.arange(1, CFG.num_items + 1), n, replace=False).astype(np.int32)
    tail = hist[-L:]
    inputs[b, L - len(tail):] = tail
    seen[b, :n] = hist
  targets = rng.integers(1, CFG.num_items + 1, B).astype(np.int32)
  targets[2] = seen[2, 0]  # a target the user has already seen
  targets[5] = seen[5, 3]
  while targets[3] in seen[3]:
    targets[3] = rng.integers(1, CFG.num_items + 1)
  # An exact tie: item 77 gets the same embedding as row 3's target.
  tie_item = 77
  assert tie_item not in seen[3] and tie_item != targets[3]
  graphdef, state = nnx.split(nnx.eval_shape(lambda: ItemDecoder(CFG, rngs=nnx.Rngs(0))), nnx.Param)
  # Random parameters drawn in numpy (an XLA-compiled init would dominate the test time).
  params = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(np.float32),
                        nnx.to_pure_dict(state))
  params['item_embed'][tie_item] = params['item_embed'][targets[3]]

  @jax.jit
  def next_scores(params, x):
    m = nnx.merge(graphdef, params)
    return m.logits(m(x)[:, -1])

  scores = np.asarray(next_scores(params, jnp.asarray(inputs)))
  batch = {'inputs': inputs, 'seen': seen, 'targets': targets}
  return dict(graphdef=graphdef, params=params, state=state, scores=scores,
              batch=batch, tie=(3, tie_item))


def _expected_ranks(scores, seen, targets, exclude_seen):
  s = scores.astype(np.float32).copy()
  if exclude_seen:
    for b in range(len(s)):
      s[b, seen[b]] = -np.inf
  ranks = []
  for b, t in enumerate(targets):
    if not np.isfinite(s[b, t]):
      ranks.append(CFG.num_items)
    else:
      ranks.append(int(np.sum(s[b] > s[b, t]) + np.sum(s[b] == s[b, t]) - 1))
  return np.array(ranks), s


@pytest.mark.parametrize('seen_form', ['matrix', 'pairs'])
@pytest.mark.parametrize('exclude_seen', [True, False])
def test_rank_fn_matches_numpy(setup, exclude_seen, seen_form):
  b = setup['batch']
  scores = setup['scores']
  assert np.all(np.isneginf(scores[:, 0])) and np.all(np.isneginf(scores[:, CFG.num_items + 1:]))
  row, tie_item = setup['tie']
  assert scores[row, tie_item] == scores[row, b['targets'][row]]
  want, masked = _expected_ranks(scores, b['seen'], b['targets'], exclude_seen)
  if exclude_seen:
    assert want[2] == want[5] == CFG.num_items  # seen targets are misses
  else:
    assert want[2] < CFG.num_items and want[5] < CFG.num_items
  rank_fn = evaluation.make_rank_fn(setup['graphdef'], exclude_seen=exclude_seen, top_k=10)
  given = dict(b)
  if seen_form == 'pairs':  # the evaluation loop's form: (row, item) pairs of the CSR histories
    hists = [h[h > 0] for h in given.pop('seen')]
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in hists])])
    given['seen_rows'], given['seen_cols'] = pipeline.seen_pairs(offsets, np.concatenate(hists),
                                                                 bucket_min=8)
  ranks, top = rank_fn(setup['params'], {k: jnp.asarray(v) for k, v in given.items()})
  ranks, top = np.asarray(ranks), np.asarray(top)
  assert ranks.dtype == np.int32 and top.shape == (B, 10) and top.dtype == np.int32
  np.testing.assert_array_equal(ranks, want)
  np.testing.assert_array_equal(top, np.argsort(-masked, axis=1, kind='stable')[:, :10])
  assert np.all((top >= 1) & (top <= CFG.num_items))
  if exclude_seen:
    assert not any(set(top[i]) & set(b['seen'][i]) - {0} for i in range(B))
  # The tie counts against the target: the same case without the tied item ranks one better.
  s = masked[row].copy()
  s[tie_item] = -np.inf
  t = b['targets'][row]
  assert ranks[row] == np.sum(s > s[t]) + np.sum(s == s[t]) - 1 + 1


def test_rank_fn_all_equal_scores_gives_worst_rank(setup):
  params = jax.tree.map(jnp.zeros_like, setup['params'])  # every item scores 0
  params['final_norm']['scale'] = jnp.ones_like(params['final_norm']['scale'])
  rank_fn = evaluation.make_rank_fn(setup['graphdef'], exclude_seen=False, top_k=5)
  b = setup['batch']
  ranks, _ = rank_fn(params, {k: jnp.asarray(v) for k, v in b.items()})
  np.testing.assert_array_equal(np.asarray(ranks), CFG.num_items - 1)


@pytest.mark.parametrize('mesh_shape', [(8, 1, 1), (2, 1, 4)])
def test_rank_fn_mesh_matches_single_device(setup, mesh_shape):
  b = setup['batch']
  rank_fn = evaluation.make_rank_fn(setup['graphdef'], exclude_seen=True, top_k=10)
  one = jax.devices()[0]
  ref_ranks, ref_top = rank_fn(jax.device_put(setup['params'], one),
                               {k: jax.device_put(v, one) for k, v in b.items()})
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': mesh_shape})
  logical = nnx.to_pure_dict(nnx.get_partition_spec(setup['state']))
  shardings = partitioning.tree_shardings(logical, setup['params'], DEFAULT_RULES, mesh)
  params = jax.device_put(setup['params'], shardings)
  emb = params['item_embed']
  assert len(emb.sharding.device_set) == 8
  if mesh_shape[2] > 1:
    assert emb.sharding.spec[0] == 'tensor'  # catalog sharded
  batch = partitioning.to_global(b, mesh, DEFAULT_RULES)
  assert batch['inputs'].sharding.spec[0] in ('data', ('data',))
  ranks, top = rank_fn(params, batch)
  np.testing.assert_array_equal(np.asarray(ranks), np.asarray(ref_ranks))
  np.testing.assert_array_equal(np.asarray(top), np.asarray(ref_top))
  # Replicated params with a data-sharded batch agree too.
  rep = jax.device_put(setup['params'], NamedSharding(mesh, P()))
  ranks2, _ = rank_fn(rep, batch)
  np.testing.assert_array_equal(np.asarray(ranks2), np.asarray(ref_ranks))


# --------------------------------------------------------------------------------------- losses

NUM_ITEMS, VOCAB, D = 12, 16, 8
_full = jax.jit(losses.full_softmax_loss, static_argnames=('max_targets',))
_sampled = jax.jit(losses.sampled_softmax_loss,
                   static_argnames=('num_items', 'num_negatives', 'max_targets'))


def _loss_inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(3, 5, D)).astype(np.float32)
  table = rng.normal(size=(VOCAB, D)).astype(np.float32)
  targets = np.array([[0, 0, 3, 7, 1], [0, 0, 0, 4, 12], [5, 9, 2, 0, 11]], np.int32)
  catalog = (np.arange(VOCAB) >= 1) & (np.arange(VOCAB) <= NUM_ITEMS)
  return hidden, table, targets, catalog


def _lse(x):
  m = np.max(x)
  return m + np.log(np.sum(np.exp(x - m)))


def _full_ref(hidden, table, targets, catalog, max_targets=0, weights=None):
  h = hidden.reshape(-1, D).astype(np.float64)
  t = targets.reshape(-1)
  w = np.ones(len(t)) if weights is None else weights.reshape(-1)
  idx = np.nonzero(t > 0)[0]
  keep = idx[:max_targets] if max_targets else idx
  nll = []
  for i in keep:
    logits = h[i] @ table.T.astype(np.float64)
    nll.append(_lse(logits[catalog]) - logits[t[i]])
  nll = np.array(nll)
  return np.sum(nll * w[keep]) / np.sum(w[keep]), len(keep), len(idx) - len(keep)


@pytest.mark.parametrize('max_targets', [0, 5, 9, 15, 100])
def test_full_softmax_loss_matches_numpy(max_targets):
  hidden, table, targets, catalog = _loss_inputs()
  assert np.sum(targets > 0) == 9
  loss, m = _full(jnp.asarray(hidden), jnp.asarray(table), jnp.asarray(targets),
                                     catalog=jnp.asarray(catalog), max_targets=max_targets)
  want, n, dropped = _full_ref(hidden, table, targets, catalog, max_targets)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert int(m['num_targets']) == n and int(m['dropped_targets']) == dropped
  if max_targets == 5:
    assert dropped == 4
  if max_targets in (0, 9, 15, 100):
    assert dropped == 0 and n == 9


def test_full_softmax_loss_ignores_non_catalog_ids_and_uses_weights():
  hidden, table, targets, catalog = _loss_inputs(1)
  weights = np.random.default_rng(2).uniform(0.5, 2.0, targets.shape).astype(np.float32)
  kw = dict(catalog=jnp.asarray(catalog))
  loss, _ = _full(hidden, table, targets, weights=jnp.asarray(weights), **kw)
  want, _, _ = _full_ref(hidden, table, targets, catalog, weights=weights)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # Changing the embeddings of padding / out-of-catalog ids changes nothing.
  table2 = table.copy()
  table2[0] = 50.0
  table2[NUM_ITEMS + 1:] = -30.0
  loss2, _ = _full(hidden, table2, targets, weights=jnp.asarray(weights), **kw)
  assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize('max_targets', [0, 4])
def test_sampled_softmax_loss_matches_numpy(max_targets):
  hidden, table, targets, _ = _loss_inputs(3)
  rng = jax.random.key(42)
  num_neg = 20
  neg = np.asarray(jax.random.randint(rng, (num_neg,), 1, NUM_ITEMS + 1))
  valid_t = targets[targets > 0]
  kept_t = valid_t[:max_targets] if max_targets else valid_t
  assert np.isin(kept_t, neg).any()  # accidental hits are exercised
  loss, m = _sampled(jnp.asarray(hidden), jnp.asarray(table),
                                        jnp.asarray(targets), rng=rng, num_items=NUM_ITEMS,
                                        num_negatives=num_neg, max_targets=max_targets)
  h = hidden.reshape(-1, D).astype(np.float64)
  t = targets.reshape(-1)
  idx = np.nonzero(t > 0)[0]
  idx = idx[:max_targets] if max_targets else idx
  nll = []
  for i in idx:
    cand = np.concatenate([[t[i]], neg[neg != t[i]]])  # target + negatives that are not it
    logits = table[cand].astype(np.float64) @ h[i]
    nll.append(_lse(logits) - logits[0])
  assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)
  assert int(m['num_targets']) == len(idx)
  assert int(m['dropped_targets']) == len(valid_t) - len(idx)
  # With every catalog item as a "negative" exactly once it is the full softmax.
  full, _ = _full(hidden, table, targets, max_targets=max_targets,
                                     catalog=jnp.asarray((np.arange(VOCAB) >= 1)
                                                         & (np.arange(VOCAB) <= NUM_ITEMS)))
  assert float(full) == pytest.approx(np.mean([
      _lse(table[1:NUM_ITEMS + 1].astype(np.float64) @ h[i]) - table[t[i]] @ h[i] for i in idx]),
      rel=1e-5)
