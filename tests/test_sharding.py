"""Parameter shardings from logical axis names + rules, on the 8 fake CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from llm4rec_jax import config_base, partitioning
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.decoder import DecoderConfig
from llm4rec_jax.train import optimizer as optimizer_lib
from llm4rec_jax.train import state as state_lib


def _spec_on_2x4(tie=True):
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (1, 2, 4)})
  cfg = DecoderConfig(vocab_size=1024, num_items=1000, d_model=64, num_layers=2, num_heads=4,
                      num_kv_heads=4, mlp_dim=256, tie_embeddings=tie)
  return state_lib.build_model_spec(cfg, mesh, config_base.DEFAULT_RULES)


def test_parameter_shardings_on_2x4_mesh():
  spec = _spec_on_2x4(tie=False)
  params = state_lib.init_params(spec, seed=0)
  expected = {
      'item_embed': P(('tensor', 'fsdp'), None),  # catalog split 8 ways
      'output_embed': P(('tensor', 'fsdp'), None),
      'final_norm/scale': P(None),
  }
  block = {
      'attn/wq': P('fsdp', 'tensor', None), 'attn/wk': P('fsdp', 'tensor', None),
      'attn/wv': P('fsdp', 'tensor', None), 'attn/wo': P('tensor', None, 'fsdp'),
      'mlp/w_gate': P('fsdp', 'tensor'), 'mlp/w_up': P('fsdp', 'tensor'),
      'mlp/w_down': P('tensor', 'fsdp'), 'attn_norm/scale': P(None), 'mlp_norm/scale': P(None),
  }
  for i in range(2):
    expected.update({f'blocks/{i}/{k}': v for k, v in block.items()})
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert set(flat) == set(expected)
  for name, want in expected.items():
    assert flat[name].sharding.spec == want, name
  emb = flat['item_embed']
  assert {s.data.shape for s in emb.addressable_shards} == {(1024 // 8, 64)}
  assert len(emb.sharding.device_set) == 8
  w_up = flat['blocks/0/mlp/w_up']
  assert {s.data.shape for s in w_up.addressable_shards} == {(32, 64)}


def test_optimizer_state_follows_parameter_shardings():
  spec = _spec_on_2x4()
  tx, _ = optimizer_lib.make_optimizer(config_base.base_config().optimizer, 10)
  _, shardings = state_lib.state_shardings(spec, tx)
  state = state_lib.init_train_state(spec, tx, 0, shardings)
  adam = state['opt_state'][1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  assert adam.mu['item_embed'].sharding.spec == P(('tensor', 'fsdp'), None)
  assert adam.nu['blocks'][0]['mlp']['w_down'].sharding.spec == P('tensor', 'fsdp')
  assert state['step'].sharding.spec == P()


def test_logical_rules_drop_reused_and_indivisible_axes():
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (2, 2, 2)})
  rules = config_base.DEFAULT_RULES
  # 'fsdp' is taken by vocab, so embed is replicated in the same spec.
  assert partitioning.logical_to_mesh(('vocab', 'embed'), rules, mesh) == P(('tensor', 'fsdp'),
                                                                            None)
  # 3 heads do not divide over tensor=2: that dimension is replicated.
  assert partitioning.logical_to_mesh(('embed', 'heads', None), rules, mesh,
                                      shape=(64, 3, 8)) == P('fsdp', None, None)
  assert partitioning.batch_sharding(mesh, rules).spec == P(('data', 'fsdp'), None)


def test_large_replicated_parameter_is_reported():
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (1, 2, 4)})
  abstract = {'big': jax.ShapeDtypeStruct((2048, 1024), np.float32)}
  replicated = partitioning.tree_shardings({'big': P(None, None)}, abstract,
                                           config_base.DEFAULT_RULES, mesh)
  assert partitioning.check_sharded(replicated, abstract) == ["['big']"]
  sharded = partitioning.tree_shardings({'big': P('vocab', 'embed')}, abstract,
                                        config_base.DEFAULT_RULES, mesh)
  assert partitioning.check_sharded(sharded, abstract) == []


@pytest.mark.parametrize('shape,message', [
    ((3, 1, 1), 'needs 3 devices but 8 are available'),
    ((-1, 3, 1), 'does not divide the 8 devices'),
    ((-1, -1, 1), 'at most one axis may be -1'),
    ((8, 1), 'has 2 entries'),
])
def test_mesh_that_does_not_fit_the_devices_is_a_config_error(shape, message):
  with pytest.raises(ConfigError, match=message) as e:
    config_base.validate(tiny_config(**{'mesh.shape': shape}), jax.device_count())
  assert 'config.mesh.shape' in str(e.value)


def test_batch_not_divisible_by_data_parallelism_is_a_config_error():
  config = tiny_config(**{'train.batch_size': 12, 'mesh.shape': (8, 1, 1)})
  with pytest.raises(ConfigError, match=r'config.train.batch_size: 12 is not divisible by the 8'):
    config_base.validate(config, jax.device_count())


def test_minus_one_fills_remaining_devices():
  mesh = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (-1, 2, 1)})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
