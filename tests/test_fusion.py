"""Item content arrays, multimodal fusion masks, gated cross-attention, shardings, end to end."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import popularity_ndcg, tiny_config
from flax import nnx

from llm4rec_jax import partitioning
from llm4rec_jax.data import content as content_lib
from llm4rec_jax.data import registry
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import decoder as decoder_lib
from llm4rec_jax.model.fusion import CrossModalFusion, GatedCrossAttention
from llm4rec_jax.train import state as state_lib

CONTENT_ALL = {'content.categorical': 'all', 'content.numeric': 'all', 'content.dense': 'all'}


@pytest.fixture(scope='module')
def synthetic_items():
  c = tiny_config()
  return registry.load(c.data).items


def _content(table, vocab=128, **cfg):
  cc = ml_collections.ConfigDict(dict(categorical='all', numeric='all', dense='all', text='',
                                      max_values=16))
  cc.update(cfg)
  return content_lib.build_item_content(table, vocab, cc)


def test_content_arrays_masks_and_normalisation(synthetic_items):
  table = synthetic_items
  table.numeric['price'][5] = np.nan  # a missing value must be masked, not read as 0
  table.dense['embedding'][7] = np.nan
  content, spec = _content(table)
  assert spec.token_names == ('categorical:category', 'categorical:tags', 'numeric',
                              'dense:embedding')
  assert content.numeric.shape == (128, 1) and content.categorical[0].shape[0] == 128
  assert not content.numeric_mask[5, 0] and content.numeric_mask[6, 0]
  assert not content.dense_mask[0][7] and content.dense_mask[0][8]
  present = content.numeric_mask[:, 0]
  np.testing.assert_allclose(content.numeric[present, 0].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(content.numeric[present, 0].std(), 1.0, atol=1e-4)
  # Padding row and rows past the catalog carry nothing.
  mask = np.asarray(content.token_mask())
  assert not mask[0].any() and not mask[table.num_rows:].any()
  # Truncation of multi-valued fields to max_values.
  short, spec2 = _content(table, max_values=1)
  assert all(w == 1 for _, _, w in spec2.categorical)
  with pytest.raises(ConfigError, match='content.categorical'):
    _content(table, categorical='no_such_field')


def _fusion_inputs(synthetic_items):
  content, spec = _content(synthetic_items)
  fusion = CrossModalFusion(spec, 32, num_layers=1, num_heads=2, rngs=nnx.Rngs(0))
  # Give the adaptive scores non-zero weights so they depend on the input.
  fusion.score_out[...] = jax.random.normal(jax.random.key(1), fusion.score_out.shape)
  return content, spec, fusion


def test_missing_modality_is_masked_not_zero_filled(synthetic_items):
  content, _, fusion = _fusion_inputs(synthetic_items)
  item = 9
  dense_mask = np.array(content.dense_mask[0])
  dense_mask[item] = False
  hidden = dataclasses.replace(content, dense_mask=(dense_mask,))
  emb_a, _, mask_a, _ = fusion(hidden)
  # With the modality masked, its values do not matter at all...
  dense = np.array(content.dense[0])
  dense[item] = 1e3
  emb_b, _, _, _ = fusion(dataclasses.replace(hidden, dense=(dense,)))
  np.testing.assert_allclose(emb_a[item], emb_b[item], rtol=1e-5, atol=1e-6)
  assert not mask_a[item, 3] and mask_a[item, :3].all()
  # ...while a present modality does (and masking differs from feeding zeros).
  zeros = np.array(content.dense[0])
  zeros[item] = 0.0
  emb_c, _, _, _ = fusion(dataclasses.replace(content, dense=(zeros,)))
  assert not np.allclose(emb_a[item], emb_c[item], atol=1e-4)


def test_adaptive_weights_are_input_dependent_and_skip_missing(synthetic_items):
  content, _, fusion = _fusion_inputs(synthetic_items)
  x0, mask = fusion.tokenizer(content)
  x = fusion.norm(fusion.layers[0](x0, mask))
  score = jax.nn.silu(x @ fusion.score_hidden[...]) @ fusion.score_out[...]
  w = jax.nn.softmax(jnp.where(mask, score, -1e30), axis=-1) * mask
  rows = np.asarray(mask).any(-1)
  np.testing.assert_allclose(np.asarray(w.sum(-1))[rows], 1.0, rtol=1e-5)
  assert float(jnp.std(w[1:50, 0])) > 1e-3  # differs from item to item
  _, _, _, has = fusion(content)
  assert not bool(has[0]) and bool(has[1:synthetic_items.num_rows].all())


def _token_attention_reference(attn, x, mask):
  """Self-attention among an item's tokens written directly over [items, M, ...] arrays."""
  q, k, v = jnp.einsum('bmd,tdhk->tbmhk', x, attn.wqkv[...])
  logits = jnp.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(q.shape[-1])
  visible = (mask[:, None, :] | jnp.eye(x.shape[1], dtype=bool)[None])[:, None]
  p = jax.nn.softmax(jnp.where(visible, logits, -1e30), axis=-1)
  return jnp.einsum('bhqs,bshk,hkd->bqd', p, v, attn.wo[...])


@pytest.mark.parametrize('tokens', [1, 3])
def test_fusion_layer_matches_reference(tokens):
  """The 2-D (flattened) fusion layer, and its one-token shortcut, equal the [items, M] formula."""
  from llm4rec_jax.model.fusion import FusionLayer
  layer = FusionLayer(16, 2, rngs=nnx.Rngs(3))
  x = jax.random.normal(jax.random.key(0), (40, tokens, 16))
  mask = jax.random.bernoulli(jax.random.key(1), 0.6, (40, tokens))
  attn_in = layer.attn_norm(x)
  ref_attn = _token_attention_reference(layer.attn, attn_in, mask)
  np.testing.assert_allclose(layer.attn(attn_in, mask), ref_attn, rtol=1e-5, atol=1e-5)
  h = x + ref_attn
  ref = h + layer.mlp(layer.mlp_norm(h))
  np.testing.assert_allclose(layer(x, mask), ref, rtol=1e-5, atol=1e-5)
  # Gradients agree too (the shortcut skips the query/key projections: theirs are zero).
  graphdef, state = nnx.split(layer.attn)
  def loss(state, fn):
    return jnp.sum(fn(nnx.merge(graphdef, state), attn_in) ** 2)
  g = jax.grad(loss)(state, lambda attn, a: attn(a, mask))
  g_ref = jax.grad(loss)(state, lambda attn, a: _token_attention_reference(attn, a, mask))
  g, g_ref = [np.concatenate([np.ravel(t) for t in jax.tree.leaves(x)]) for x in (g, g_ref)]
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def _model(cfg_overrides, synthetic_items, vocab=128):
  content, spec = _content(synthetic_items, vocab=vocab)
  base = dict(vocab_size=vocab, num_items=synthetic_items.num_rows - 1, max_len=12, d_model=32,
              num_layers=2, num_heads=4, dropout=0.0, content=spec)
  base.update(cfg_overrides)
  return decoder_lib.DecoderConfig(**base), content


def test_cross_attention_starts_as_plain_decoder_and_is_causal(synthetic_items):
  cfg, content = _model({'cross_attention_every': 1}, synthetic_items)
  plain_cfg = dataclasses.replace(cfg, cross_attention_every=0)
  model = decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(0))
  plain = decoder_lib.ItemDecoder(plain_cfg, rngs=nnx.Rngs(0))
  assert all(b.cross is not None for b in model.blocks)
  nnx.update(plain, nnx.state(model, nnx.Param).filter(
      lambda path, _: 'cross' not in path and 'fusion' not in path))
  items = jnp.asarray(np.random.default_rng(0).integers(0, 100, (3, 12)), jnp.int32)
  items = items.at[:, :4].set(0)  # left padding
  enc = model.encode_catalog(content)
  np.testing.assert_allclose(model(items, enc), plain(items), rtol=1e-5, atol=1e-5)
  # Open the gates: now content matters, but only of items at or before each position.
  for b in model.blocks:
    b.cross.gate[...] = jnp.ones((1,))
  enc = model.encode_catalog(content)
  h = model(items, enc)
  assert not np.allclose(h, plain(items), atol=1e-3)
  changed = dataclasses.replace(content, dense=(np.asarray(content.dense[0]) + 5.0,))
  # Change only the last item's content: earlier positions are unaffected.
  last = int(items[0, -1])
  dense = np.array(content.dense[0])
  dense[last] += 5.0
  assert last not in np.asarray(items[0, :-1])  # so only the last position sees the change
  h2 = model(items, model.encode_catalog(dataclasses.replace(content, dense=(dense,))))
  np.testing.assert_allclose(h2[0, :-1], h[0, :-1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(h2[0, -1], h[0, -1], atol=1e-4)
  assert model(items, model.encode_catalog(changed)).shape == (3, 12, 32)


def test_gated_cross_attention_shapes_and_sink():
  layer = GatedCrossAttention(16, 2, 8, dtype=jnp.float32, rngs=nnx.Rngs(0))
  layer.gate[...] = jnp.ones((1,))
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  mem = jax.random.normal(jax.random.key(1), (2, 5, 3, 16))
  mask = jnp.zeros((2, 5, 3), bool)  # nothing visible: the update is exactly zero, not NaN
  out = layer(x, mem, mask)
  assert out.shape == (2, 5, 16)
  np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize('repr_', ['content', 'both'])
def test_item_representation_modes(synthetic_items, repr_):
  cfg, content = _model({'item_repr': repr_}, synthetic_items)
  model = decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(0))
  assert hasattr(model, 'item_embed') == (repr_ == 'both')
  known = np.array(content.id_known)
  known[10] = False  # a cold item: represented by content alone in 'both'
  content = dataclasses.replace(content, id_known=known)
  emb, _, _, has = model.fusion(content)
  table = model.encode_catalog(content).table
  np.testing.assert_allclose(table[10], emb[10], rtol=1e-6)
  if repr_ == 'both':
    np.testing.assert_allclose(table[11], emb[11] + model.item_embed[...][11], rtol=1e-6)
  else:
    # An item with no content gets the explicit learned vector, not zeros.
    assert not bool(has[0])
    np.testing.assert_allclose(table[0], model.no_content[...], rtol=1e-6)


def test_content_needed_for_content_modes(synthetic_items):
  cfg, _ = _model({'item_repr': 'content', 'content': None}, synthetic_items)
  with pytest.raises(ConfigError, match='model.item_repr'):
    decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(0))


def test_fusion_and_cross_attention_shardings_on_2x4_mesh(synthetic_items):
  cfg, content = _model({'item_repr': 'both', 'cross_attention_every': 2, 'fusion_heads': 4},
                        synthetic_items, vocab=256)
  c = tiny_config()
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (2, 1, 4)})
  spec = state_lib.build_model_spec(cfg, mesh, c.mesh.rules)
  sh = spec.param_shardings
  cross = sh['blocks'][1]['cross']
  assert cross['wq'].spec == jax.sharding.PartitionSpec(None, 'tensor', None)
  assert cross['wo'].spec == jax.sharding.PartitionSpec('tensor', None, None)
  assert 'cross' not in sh['blocks'][0] or sh['blocks'][0].get('cross') is None
  fusion = sh['fusion']
  assert fusion['layers'][0]['attn']['wqkv'].spec == jax.sharding.PartitionSpec(
      None, None, 'tensor', None)
  assert sh['item_embed'].spec == jax.sharding.PartitionSpec('tensor', None)
  from llm4rec_jax.train.state import put_content  # pylint: disable=import-outside-toplevel
  dev = put_content(content, mesh, c.mesh.rules)
  assert dev.categorical[0].sharding.spec == jax.sharding.PartitionSpec('tensor', None)
  params = state_lib.init_params(spec, 0)
  model = nnx.merge(spec.graphdef, params)
  items = jnp.asarray(np.random.default_rng(0).integers(0, 100, (4, 12)), jnp.int32)
  hidden = jax.jit(lambda p, x, cont: nnx.merge(spec.graphdef, p)(
      x, nnx.merge(spec.graphdef, p).encode_catalog(cont)))(params, items, dev)
  ref = model(items, model.encode_catalog(content))
  np.testing.assert_allclose(hidden, ref, rtol=2e-5, atol=2e-5)


def test_train_with_content_end_to_end(tmp_path):
  from llm4rec_jax import serving  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config(**CONTENT_ALL, **{'model.item_repr': 'both', 'model.cross_attention_every': 1,
                                    'data.cold_item_fraction': 0.1, 'train.num_epochs': 10,
                                    'optimizer.learning_rate': 1e-2})
  r = trainer.train_and_evaluate(c, tmp_path)
  assert r['test']['num_cases'] == 240 and 0 < r['test_cold']['num_cases'] < 240
  # It learned: well above ranking by training popularity on the same cases.
  assert r['test']['ndcg@10'] > 1.3 * popularity_ndcg(c, tmp_path)
  rec = serving.recommend(tmp_path, ['i3', 'i5'], top_k=3)
  assert len(rec['recommendations']) == 3
  again = trainer.evaluate(c, tmp_path)
  np.testing.assert_allclose(again['test']['ndcg@10'], r['test']['ndcg@10'], rtol=1e-6)


def test_refit_skips_validation_targets_training_never_had(tmp_path):
  """Held-out items are validation targets of the refit on what is known at test: outside the
  training catalog they get weight 0 (they added ~1e30 each to the refit's loss before)."""
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config(**CONTENT_ALL, **{'model.item_repr': 'both', 'data.cold_item_fraction': 0.2,
                                    'train.num_epochs': 1, 'eval.refit_epochs': 2})
  record = trainer.train_and_evaluate(c, tmp_path)['refit']
  assert 0 < record['final_loss'] < 20  # ln(120 items) = 4.8
  assert record['targets_outside_training_catalog'] > 0


def test_cold_items_are_not_training_negatives_and_id_dropout(tmp_path):
  """Held-out items get no gradient at all (absent from training inputs and from the training
  softmax), so their id vectors stay at initialisation; id dropout only acts in training."""
  from llm4rec_jax import serving  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config(**CONTENT_ALL, **{'model.item_repr': 'both', 'model.id_dropout': 0.3,
                                    'data.cold_item_fraction': 0.2, 'train.num_epochs': 1})
  trainer.train_and_evaluate(c, tmp_path)
  rec = serving.Recommender(tmp_path)
  init = state_lib.init_params(rec.spec, c.seed)
  cold = np.asarray(rec.content.id_known) == 0
  cold[0] = False
  cold[rec.spec.cfg.num_items + 1:] = False
  trained, start = np.asarray(rec.params['item_embed']), np.asarray(init['item_embed'])
  assert cold.sum() == 24
  np.testing.assert_array_equal(trained[cold], start[cold])
  warm = np.asarray(rec.content.id_known).astype(bool)
  assert not np.allclose(trained[warm], start[warm])
  model = nnx.merge(rec.spec.graphdef, rec.params)
  a = model.encode_catalog(rec.content).table
  b = model.encode_catalog(rec.content).table  # no rngs: deterministic, nothing dropped
  np.testing.assert_array_equal(a, b)
  dropped = model.encode_catalog(rec.content, rngs=nnx.Rngs(dropout=0)).table
  differs = np.any(np.asarray(dropped) != np.asarray(a), axis=1)[warm]
  assert 0.1 < differs.mean() < 0.5


def test_attention_kernel_choice():
  """'auto' is XLA's kernel off GPUs and in float32, cuDNN's on GPUs in bf16; outputs are XLA's here."""
  from llm4rec_jax.model import layers  # pylint: disable=import-outside-toplevel
  on_gpu = jax.default_backend() == 'gpu'
  assert layers.attention_impl('auto', jnp.float32) == 'xla'
  assert layers.attention_impl('auto', jnp.bfloat16) == ('cudnn' if on_gpu else 'xla')
  with pytest.raises(ValueError, match='flash'):
    layers.attention_impl('flash', jnp.float32)
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 6, 4, 8)) for i in range(3))
  valid = jnp.arange(6)[None] >= jnp.array([0, 3])[:, None]  # the second row is left-padded
  mask = ((jnp.tril(jnp.ones((6, 6), bool))[None] & valid[:, None, :]) | jnp.eye(6, dtype=bool))
  out = layers.dot_product_attention(q, k, v, mask[:, None], 'auto')
  # The reference: softmax over the visible keys, in numpy.
  s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(8)
  s = np.where(np.asarray(mask)[:, None], s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  ref = np.einsum('bhqk,bkhd->bqhd', w / w.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
