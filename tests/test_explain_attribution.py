"""Attributions on models whose answer is known by construction, completeness, deletion metric."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from llm4rec_jax.data import content as content_lib
from llm4rec_jax.data import registry
from llm4rec_jax.explain import attribution, faithfulness
from llm4rec_jax.model import decoder as decoder_lib

NUM_ITEMS = 12


def _decoder(**kw):
  cfg = decoder_lib.DecoderConfig(vocab_size=128, num_items=NUM_ITEMS, max_len=6, d_model=16,
                                  num_layers=1, num_heads=1, dropout=0.0, **kw)
  return decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(0))


def _split(model):
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def test_integrated_gradients_exact_on_quadratic():
  w = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 0.0, 1.0]])
  x = jnp.asarray([[1.0, 2.0, -1.0], [0.5, 4.0, 2.0]])
  f = lambda z: jnp.sum(w * z['a'] ** 2, axis=-1)  # noqa: E731
  ig = attribution.integrated_gradients(f, {'a': x}, {'a': jnp.zeros_like(x)}, steps=4)
  # The gradient is linear along the path, so the midpoint rule is exact: IG_i = w_i x_i^2.
  np.testing.assert_allclose(ig['a'], w * x ** 2, rtol=1e-6)
  gxi = attribution.integrated_gradients(f, {'a': x}, {'a': jnp.zeros_like(x)}, steps=0)
  np.testing.assert_allclose(gxi['a'], 2 * w * x ** 2, rtol=1e-6)


def test_only_last_item_matters_when_blocks_are_zero():
  """With every residual branch zeroed the hidden state is norm(x_last): earlier items get exactly
  zero attribution and the last one gets all of score - baseline."""
  model = _decoder()
  block = model.blocks[0]
  block.attn.wo.value = jnp.zeros_like(block.attn.wo.value)
  block.mlp.w_down.value = jnp.zeros_like(block.mlp.w_down.value)
  graphdef, params = _split(model)
  inputs = np.asarray([[0, 3, 5, 7, 2, 9], [0, 0, 0, 4, 4, 1]], np.int32)
  a = attribution.attribute_batch(graphdef, params, inputs, np.asarray([6, 8]), steps=64,
                                  batch_size=2)
  assert np.all(a.history[:, :-1] == 0.0)
  np.testing.assert_allclose(a.history[:, -1], a.score - a.baseline_score, rtol=1e-3, atol=1e-4)


def test_copied_item_gets_the_top_attribution():
  """Uniform attention (queries zero) copies the mean of the normalised history into the last
  state; with orthogonal item embeddings the score of item j is driven by where j occurs."""
  model = _decoder()
  d = model.cfg.d_model
  table = np.zeros((128, d), np.float32)
  table[1:NUM_ITEMS + 1, :NUM_ITEMS] = np.eye(NUM_ITEMS)  # item i -> basis vector i-1
  model.item_embed.value = jnp.asarray(table)
  block = model.blocks[0]
  block.attn.wq.value = jnp.zeros_like(block.attn.wq.value)
  block.attn.wv.value = jnp.eye(d)[:, None, :]
  block.attn.wo.value = jnp.eye(d)[None]
  block.mlp.w_down.value = jnp.zeros_like(block.mlp.w_down.value)
  graphdef, params = _split(model)
  inputs = np.asarray([[3, 5, 7, 2, 9, 11], [0, 4, 6, 8, 10, 1]], np.int32)
  items = np.asarray([7, 6])  # position 2 in row 0, position 2 in row 1
  a = attribution.attribute_batch(graphdef, params, inputs, items, steps=64, batch_size=2)
  assert list(np.argmax(a.history, axis=1)) == [2, 2]
  np.testing.assert_allclose(a.total(), a.score - a.baseline_score, rtol=2e-2, atol=2e-2)
  assert a.history[1, 0] == 0.0  # padding


@pytest.fixture(scope='module')
def content_model():
  c = tiny_config()
  items = registry.load(c.data).items
  cc = ml_collections.ConfigDict(dict(categorical='all', numeric='all', dense='all', text='',
                                      max_values=16))
  content, spec = content_lib.build_item_content(items, 128, cc)
  cfg = decoder_lib.DecoderConfig(vocab_size=128, num_items=items.num_rows - 1, max_len=8,
                                  d_model=16, num_layers=1, num_heads=2, dropout=0.0,
                                  item_repr='both', cross_attention_every=1, content=spec)
  model = decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(1))
  block = model.blocks[0]
  block.cross.gate.value = jnp.ones_like(block.cross.gate.value)  # open the cross-attention
  dense = spec.token_names.index('dense:embedding')
  tok = model.fusion.tokenizer
  tok.dense_proj[0].value = jnp.zeros_like(tok.dense_proj[0].value)  # dense carries nothing
  return model, jax.tree.map(jnp.asarray, content), spec, dense


def test_modalities_and_retrieved_context(content_model):
  model, content, spec, dense = content_model
  graphdef, params = _split(model)
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 40, size=(3, 8)).astype(np.int32)
  inputs[2, :3] = 0
  context = np.zeros((3, 8, 2), np.int32)
  context[:, -1] = rng.integers(1, 40, size=(3, 2))
  context[1, -1, 1] = 0  # an empty context slot
  items = np.asarray([41, 42, 43])
  # The memory the attribution differentiates is the decoder's own.
  catalog = model.encode_catalog(content)
  valid = jnp.asarray(inputs > 0)
  x = model.embed(jnp.asarray(inputs), catalog) * valid[..., None]
  mem, mask = attribution.history_memory(model, jnp.asarray(inputs), catalog, jnp.asarray(context))
  np.testing.assert_allclose(model.hidden_from_embeddings(x, valid, mem, mask),
                             model(jnp.asarray(inputs), catalog, context=jnp.asarray(context)),
                             rtol=1e-5, atol=1e-5)
  a = attribution.attribute_batch(graphdef, params, inputs, items, content, context, steps=64,
                                  batch_size=4)
  assert a.modalities.shape == (3, spec.num_tokens) and a.context.shape == (3, 8, 2)
  assert np.all(a.modalities[:, dense] == 0.0)  # its token equals its baseline by construction
  assert np.abs(a.modalities).sum() > 0 and np.abs(a.context[:, -1]).sum() > 0
  assert a.context[1, -1, 1] == 0.0 and np.all(a.context[:, :-1] == 0.0)
  assert np.all(a.history[2, :3] == 0.0)
  np.testing.assert_allclose(a.total(), a.score - a.baseline_score, rtol=2e-2, atol=2e-2)
  # The score explained is the model's logit of the item.
  logits = model.logits(model(jnp.asarray(inputs), catalog, context=jnp.asarray(context))[:, -1],
                        catalog)
  np.testing.assert_allclose(a.score, np.asarray(logits)[np.arange(3), items], rtol=1e-4)


def test_delete_positions():
  h = np.asarray([5, 6, 7, 8])
  np.testing.assert_array_equal(faithfulness.delete_positions(h, [1, 3], 4), [0, 0, 5, 7])
  np.testing.assert_array_equal(faithfulness.delete_positions(h, [], 3), [6, 7, 8])


def test_deletion_curve_on_an_additive_scorer():
  """Score = sum of per-item weights; the exact attribution of an item is its weight, so deleting
  the top-k removes the k largest weights, and random deletion removes k average ones."""
  weights = np.zeros(20)
  weights[1:11] = np.arange(1, 11)

  def score_rank(inputs, items, seen):
    s = weights[inputs].sum(axis=1)
    return s, (100 - s).astype(np.int32)

  histories = [np.asarray([1, 2, 10, 3]), np.asarray([4, 9, 5, 6, 7])]
  attrs = [weights[h] for h in histories]
  curve = faithfulness.deletion_curve(score_rank, histories, np.asarray([1, 1]), attrs, max_len=6,
                                      ks=(1, 3, 4), num_random=50, batch_size=7)
  assert curve.num_cases == [2, 2, 1]  # k=4 needs more than 4 history items
  np.testing.assert_allclose(curve.score_drop_top, [(10 + 9) / 2, (10 + 3 + 2 + 9 + 7 + 6) / 2,
                                                    9 + 7 + 6 + 5])
  np.testing.assert_allclose(curve.rank_increase_top, curve.score_drop_top)
  # Random deletion removes k items of average weight: about k * mean(history) on average.
  expect = [np.mean([k * np.mean(weights[h]) for h in histories if len(h) > k]) for k in (1, 3, 4)]
  np.testing.assert_allclose(curve.score_drop_random, expect, rtol=0.25)
  assert curve.ratio(1) > 1.5
  # The most recent k: [3] and [7]; [2, 10, 3] and [5, 6, 7]; [9, 5, 6, 7] (k=4: one case).
  np.testing.assert_allclose(curve.score_drop_recent, [(3 + 7) / 2, (15 + 18) / 2, 27])
  # Attributions in the wrong order make deletion weaker than random.
  bad = faithfulness.deletion_curve(score_rank, histories, np.asarray([1, 1]),
                                    [-a for a in attrs], max_len=6, ks=(1,), num_random=50)
  assert bad.ratio(1) < 1.0
