"""``model.scan_layers`` (blocks stacked on a 'layers' axis, run by one lax.scan) and
``model.remat`` (blocks recomputed in the backward pass) against the plain list of blocks: same
initial weights for a seed, same hidden states and gradients, whole training runs with the same
losses and metrics, the layer axis never sharded, and configs the scan cannot take refused by field.
The Hugging Face path (stacked load, per-layer export read by transformers) is in
test_hf_reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import read_log, tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import decoder
from llm4rec_jax.model.decoder import DecoderConfig, ItemDecoder
from llm4rec_jax.train import experiment, trainer

ITEMS = jnp.asarray([[0, 0, 3, 11, 1, 7, 12, 5], [9, 8, 7, 6, 5, 4, 3, 2]])


def _params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _loss_and_grads(cfg, seed=0, dropout_key=None):
  """Hidden states, and the gradient of a loss over them, with weights from ``seed``; gradients
  of a scanned model are returned per layer (unstacked) to compare with the list's."""
  model = ItemDecoder(cfg, rngs=nnx.Rngs(params=seed))
  graphdef, state = nnx.split(model, nnx.Param)

  def loss(state):
    m = nnx.merge(graphdef, state)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    h = m(ITEMS, deterministic=dropout_key is None, rngs=rngs)
    return jnp.sum(jnp.sin(h)), h

  (value, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
  grads = nnx.to_pure_dict(grads)
  if cfg.scan_layers:
    grads['blocks'] = decoder.unstack_layers(grads['blocks'])
  return float(value), np.asarray(hidden), grads


@pytest.mark.parametrize('extra,variants', [
    # LoRA (frozen float32 base) and sliding-window layers, every remat policy, scanned or not.
    ({'lora_rank': 2, 'frozen_dtype': 'float32', 'layer_types': ('sliding_attention',) * 3,
      'sliding_window': 3}, ((True, 'none'), (True, 'full'), (True, 'dots'), (False, 'full'))),
    # The causal filter beside grouped-query attention.
    ({'filter_mix': 0.5, 'num_kv_heads': 1}, ((True, 'full'),)),
])
def test_scanned_blocks_equal_the_list_of_blocks(extra, variants):
  base = dict(vocab_size=16, num_items=13, d_model=16, num_layers=3, num_heads=2, dropout=0.1,
              **extra)
  listed = DecoderConfig(**base)
  plain = _params(ItemDecoder(listed, rngs=nnx.Rngs(params=3)))
  scanned_params = _params(ItemDecoder(DecoderConfig(**base, scan_layers=True),
                                       rngs=nnx.Rngs(params=3)))
  # A seed gives the same weights, stacked on a leading layer axis.
  stacked = {**plain, 'blocks': decoder.stack_layers(plain['blocks'])}
  assert jax.tree.structure(stacked) == jax.tree.structure(scanned_params)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(scanned_params)):
    np.testing.assert_array_equal(a, b)
  ref_loss, ref_hidden, ref_grads = _loss_and_grads(listed, seed=3)
  for scan, remat in variants:
    cfg = DecoderConfig(**base, scan_layers=scan, remat=remat)
    value, hidden, grads = _loss_and_grads(cfg, seed=3)
    np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    assert value == pytest.approx(ref_loss, rel=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_scanned_dropout_applies_and_remat_replays_its_masks():
  """Training mode: the scanned blocks apply dropout (the outputs change with the key and differ
  from the deterministic ones), and remat replays the same masks in the backward pass
  (rematerialized and stored gradients agree). That each layer draws its own mask (the key is
  split per layer) is not observable here and is not checked."""
  base = dict(vocab_size=16, num_items=13, d_model=16, num_layers=3, num_heads=2, dropout=0.3,
              scan_layers=True)
  key = jax.random.key(5)
  _, h_det, _ = _loss_and_grads(DecoderConfig(**base))
  _, h1, g1 = _loss_and_grads(DecoderConfig(**base), dropout_key=key)
  _, h2, _ = _loss_and_grads(DecoderConfig(**base), dropout_key=jax.random.key(6))
  _, h1r, g1r = _loss_and_grads(DecoderConfig(**base, remat='full'), dropout_key=key)
  assert np.abs(h1 - h_det).max() > 1e-2 and np.abs(h1 - h2).max() > 1e-2
  np.testing.assert_allclose(h1r, h1, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1r), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _run(tmp_path, name, **overrides):
  config = tiny_config(**{'model.num_layers': 3, 'model.dropout': 0.0, 'mesh.shape': (2, 2, 2),
                          'train.num_epochs': 1, 'train.eval_every': 3, **overrides})
  return trainer.train_and_evaluate(config, tmp_path / name), tmp_path / name


def test_scanned_training_run_equals_the_unscanned_run(tmp_path):
  """A whole run (an epoch, 8 devices, FSDP x tensor) with scanned, rematerialized blocks logs the
  losses of the plain run and ends with its metrics; the layer axis is never sharded."""
  plain, plain_dir = _run(tmp_path, 'plain')
  scanned, scanned_dir = _run(tmp_path, 'scanned', **{'model.scan_layers': True,
                                                       'model.remat': 'full'})
  a, b = read_log(plain_dir), read_log(scanned_dir)
  assert sorted(a) == sorted(b) and len(a) > 5
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  for k, v in plain['test'].items():
    assert scanned['test'][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
  exp = experiment.build_experiment(tiny_config(**{'model.num_layers': 3, 'mesh.shape': (2, 2, 2),
                                                   'model.scan_layers': True}), tmp_path / 'spec')
  specs = jax.tree.leaves(jax.tree.map(lambda s: s.spec, exp.spec.param_shardings['blocks']))
  assert specs and all(len(s) == 0 or s[0] is None for s in specs)
  w_down = exp.spec.param_shardings['blocks']['mlp']['w_down'].spec
  assert exp.spec.abstract_params['blocks']['mlp']['w_down'].shape[0] == 3
  assert tuple(w_down)[1:] == ('tensor', 'fsdp')  # the per-layer axes shard as without the scan


def test_an_unknown_remat_policy_names_the_field():
  with pytest.raises(ConfigError, match='config.model.remat:'):
    config_base.validate(tiny_config(**{'model.remat': 'some'}))


@pytest.mark.parametrize('extra,match', [
    ({'cross_attention_every': 2}, 'cross-attention every 2'),
    ({'layer_types': ('sliding_attention', 'full_attention'), 'sliding_window': 2},
     'layer 1 attends differently'),
])
def test_blocks_that_differ_by_layer_cannot_be_scanned(extra, match):
  cfg = DecoderConfig(vocab_size=16, num_items=13, d_model=16, num_layers=2, num_heads=2,
                      scan_layers=True, **extra)
  with pytest.raises(ConfigError, match=f'config.model.scan_layers:.*{match}'):
    decoder.check_scannable(cfg)
