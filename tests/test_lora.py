"""LoRA on a tiny Hugging Face backbone (written here in the HF layout, as test_hf_import does):
config checks, optimizer state of the trainable parameters only, B = 0 is the base model, frozen
weights bit for bit, exact resume, merged weights reproduce the adapted model, and the merged
export loads back through the existing loader with the same logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from conftest import read_log, tiny_config
from test_hf_import import write_checkpoint
from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import lora
from llm4rec_jax.train import experiment, export, optimizer as optimizer_lib, restore
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import trainer

TARGETS = 'q,k,v,o,gate,up,down'
ITEMS = np.array([[0, 0, 3, 11, 1, 7, 42, 5], [9, 8, 7, 6, 5, 4, 3, 2]], np.int32)


def _config(backbone, **overrides):
  return tiny_config(**{'model.backbone': str(backbone), 'model.lora_rank': 4,
                        'model.lora_targets': TARGETS, 'mesh.shape': (2, 2, 2),
                        'train.num_epochs': 2, 'train.eval_every': 4,
                        'optimizer.learning_rate': 1e-2, **overrides})


def _logits(graphdef, params, items=ITEMS):
  model = nnx.merge(graphdef, params)
  return np.asarray(model.logits(model(jnp.asarray(items))))


def _fresh_state(config, workdir, lora_on=True):
  exp = experiment.build_experiment(config, workdir)
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10, lora=lora_on)
  abstract, shardings = state_lib.state_shardings(exp.spec, tx)
  state = state_lib.init_train_state(exp.spec, tx, config.seed, shardings,
                                     backbone=config.model.backbone)
  return exp, abstract, state


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny llama checkpoint and an uninterrupted LoRA run on it."""
  root = tmp_path_factory.mktemp('lora')
  write_checkpoint(root / 'llm', 'llama')
  result = trainer.train_and_evaluate(_config(root / 'llm'), root / 'full')
  return root, result


@pytest.mark.parametrize('change,field', [
    ({'model.lora_rank': -1}, 'model.lora_rank'),
    ({'model.lora_targets': 'q,query'}, 'model.lora_targets'),
    ({'model.lora_targets': ' , '}, 'model.lora_targets'),
    ({'model.lora_alpha': 0.0}, 'model.lora_alpha'),
    ({'model.frozen_dtype': 'int8'}, 'model.frozen_dtype'),
])
def test_bad_lora_settings_name_the_field(change, field):
  config = tiny_config(**{'model.lora_rank': 4, **change})
  with pytest.raises(ConfigError, match=f'config.{field}:'):
    config_base.validate(config)


def test_optimizer_state_holds_moments_of_trainable_params_only(tmp_path):
  config = tiny_config(**{'model.lora_rank': 4, 'model.lora_targets': TARGETS,
                          'mesh.shape': (2, 2, 2)})
  exp = experiment.build_experiment(config, tmp_path)
  params = exp.spec.abstract_params
  frozen = optimizer_lib.frozen_mask(params, lora=True)
  flat = list(zip(jax.tree.leaves(frozen), jax.tree.leaves(params)))
  frozen_leaves = [p for f, p in flat if f]
  trainable = sum(p.size for f, p in flat if not f)
  # Every block's seven projections are frozen and stored in bf16; their adapters are trained.
  assert len(frozen_leaves) == 7 * config.model.num_layers
  assert {p.dtype for p in frozen_leaves} == {jnp.dtype(jnp.bfloat16)}
  assert 'lora_q' in params['blocks'][0]['attn'] and 'lora_down' in params['blocks'][0]['mlp']
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10, lora=True)
  opt = jax.eval_shape(tx.init, params)
  moments = sum(x.size for x in jax.tree.leaves(opt) if x.ndim > 0)
  assert moments == 2 * trainable  # AdamW's mu and nu, nothing for frozen leaves
  full_tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10)
  full = sum(x.size for x in jax.tree.leaves(jax.eval_shape(full_tx.init, params)) if x.ndim > 0)
  assert full == 2 * sum(p.size for p in jax.tree.leaves(params)) > moments
  # The adapters' moments are sharded like the adapters, which follow their base weights' axes.
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  mu = shardings['opt_state'][1].inner_states['train'].inner_state[0].mu
  assert mu['blocks'][0]['attn']['lora_q']['a'].spec == P('fsdp', None)
  assert mu['blocks'][0]['attn']['lora_q']['b'].spec == P(None, 'tensor', None)
  assert isinstance(mu['blocks'][0]['attn']['wq'], optax.MaskedNode)


def test_zero_b_is_the_base_model(tmp_path):
  """With frozen weights kept in float32, the fresh adapted model (B = 0) gives exactly the logits
  of the model without adapters loaded from the same checkpoint."""
  write_checkpoint(tmp_path / 'llm', 'qwen2')  # with q/k/v biases
  over = {'model.dropout': 0.0, 'model.frozen_dtype': 'float32'}
  exp, _, state = _fresh_state(_config(tmp_path / 'llm', **over), tmp_path / 'a')
  base_exp, _, base = _fresh_state(_config(tmp_path / 'llm', **over, **{'model.lora_rank': 0}),
                                   tmp_path / 'b', lora_on=False)
  b = state['params']['blocks'][1]['mlp']['lora_up']['b']
  assert not np.any(np.asarray(b))
  np.testing.assert_array_equal(_logits(exp.spec.graphdef, state['params']),
                                _logits(base_exp.spec.graphdef, base['params']))


def test_interrupted_and_resumed_lora_run_matches_and_keeps_base_weights(runs, tmp_path):
  root, full = runs
  stopped = trainer.train_and_evaluate(_config(root / 'llm'), tmp_path / 'resumed',
                                       stop_after_steps=6)
  assert stopped == {'stopped': 'stop_after_steps', 'step': 6}
  resumed = trainer.train_and_evaluate(_config(root / 'llm'), tmp_path / 'resumed')
  a, b = read_log(root / 'full'), read_log(tmp_path / 'resumed')
  assert sorted(a) == sorted(b) and len(a) > 6
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  assert resumed['test'] == pytest.approx(full['test'])
  # After training: base projections bit for bit as loaded, adapters, norms and items moved.
  _, _, fresh = _fresh_state(_config(root / 'llm'), tmp_path / 'fresh')
  init = _host(fresh['params'])
  trained = _host(restore.load_model(root / 'full', 'latest').params)
  frozen = optimizer_lib.frozen_mask(init, lora=True)
  for f, x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(init), jax.tree.leaves(trained)):
    if f:
      assert x.dtype == y.dtype == jnp.bfloat16
      np.testing.assert_array_equal(x.view(np.uint16), y.view(np.uint16))
  blk, blk0 = trained['blocks'][0], init['blocks'][0]
  for moved in (blk['attn']['lora_q']['b'], blk['mlp']['lora_down']['b'], blk['attn']['lora_v']['a'],
                blk['attn_norm']['scale']):
    assert np.abs(moved).max() > 0
  assert not np.array_equal(blk['attn']['lora_q']['a'], blk0['attn']['lora_q']['a'])
  assert not np.array_equal(trained['item_embed'], init['item_embed'])


def test_merged_weights_and_the_exported_checkpoint_reproduce_the_lora_model(runs, tmp_path):
  root, _ = runs
  model = restore.load_model(root / 'full', 'best')
  cfg = model.spec.cfg
  adapted = _logits(model.spec.graphdef, model.params)
  real = np.arange(1, cfg.num_items + 1)
  # W + alpha / rank * A B in the model without adapters.
  merged = lora.merge_params(model.params, cfg.lora_scale)
  base_spec = state_lib.build_model_spec(
      dataclasses.replace(cfg, lora_rank=0), model.spec.mesh, model.spec.rules)
  assert jax.tree.structure(merged) == jax.tree.structure(base_spec.abstract_params)
  np.testing.assert_allclose(_logits(base_spec.graphdef, merged)[..., real], adapted[..., real],
                             rtol=1e-5, atol=1e-5)
  # Exported in the Hugging Face layout, read back by the loader as a plain (no LoRA) backbone.
  out = export.export_backbone(root / 'full', tmp_path / 'hf')
  assert (out / 'model.safetensors.index.json').is_file() and (out / 'config.json').is_file()
  exp, _, state = _fresh_state(_config(out, **{'model.lora_rank': 0}), tmp_path / 'wd',
                               lora_on=False)
  assert exp.spec.cfg.lora_rank == 0 and exp.spec.cfg.vocab_size == cfg.vocab_size
  np.testing.assert_allclose(_logits(exp.spec.graphdef, state['params'])[..., real],
                             adapted[..., real], rtol=1e-5, atol=1e-5)
