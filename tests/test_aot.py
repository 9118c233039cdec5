"""Ahead-of-time compilation of the real train step and its per-device memory estimate.

The CPU tests compile for this process's 8 fake devices. The TPU test describes a v5e slice through
libtpu without TPU hardware; it runs where ``TPU_LIBRARY_PATH`` points at a libtpu.so (see
``llm4rec_jax.aot.LIBTPU_HELP``; ``.ci/run`` downloads the libtpu wheel jax pins and points
``TPU_LIBRARY_PATH`` at it, so CI runs it).
"""

import os

import pytest

from conftest import tiny_config
from llm4rec_jax import aot, config_base
from llm4rec_jax.errors import Llm4RecError


def _config(mesh_shape):
  c = tiny_config(**{'mesh.shape': mesh_shape, 'train.batch_size': 32})
  c.model.update(d_model=64, mlp_dim=256, num_heads=4, num_kv_heads=2)
  return c


@pytest.mark.slow
def test_sharding_the_state_shrinks_the_per_device_footprint():
  devices = aot.topology_devices('cpu:8')
  replicated = aot.compile_train_step(_config((8, 1, 1)), devices, num_items=4000)
  fsdp = aot.compile_train_step(_config((1, 8, 1)), devices, num_items=4000)
  params = replicated['num_params']
  assert fsdp['num_params'] == params and replicated['mesh'] == {'data': 8, 'fsdp': 1, 'tensor': 1}
  state = 3 * 4 * params  # float32 parameters + two Adam moments
  rep, sh = replicated['per_device_bytes'], fsdp['per_device_bytes']
  # Data parallel: every device holds the whole state; FSDP: about an eighth of it.
  assert rep['argument'] >= state
  assert sh['argument'] < state / 4
  # The donated state is aliased to the new state, so it is not counted twice.
  assert rep['alias'] >= state and rep['peak_estimate'] < rep['argument'] + rep['output'] + rep[
      'temp'] + 1
  assert sh['peak_estimate'] < rep['peak_estimate']
  assert replicated['flops_per_step_per_device'] > 0


def test_unknown_topologies_and_missing_libtpu_fail_clearly(monkeypatch):
  with pytest.raises(Llm4RecError, match='unknown topology'):
    aot.topology_devices('v9x-3')
  with pytest.raises(Llm4RecError, match='only 8 CPU devices'):
    aot.topology_devices('cpu:16')
  monkeypatch.setenv('TPU_LIBRARY_PATH', '/nonexistent/libtpu.so')
  with pytest.raises(Llm4RecError, match='not a file.*pip download'):
    aot.topology_devices('v5e-8')


@pytest.mark.skipif(not os.path.isfile(os.environ.get('TPU_LIBRARY_PATH', '')),
                    reason='TPU_LIBRARY_PATH does not point at a libtpu.so')
def test_compiles_for_a_tpu_slice_without_a_tpu():
  devices = aot.topology_devices('v5e-8')
  assert len(devices) == 8 and devices[0].device_kind == 'TPU v5 lite'
  report = aot.compile_train_step(_config((1, -1, 1)), devices, num_items=4000)
  assert report['hbm_gib'] == 16.0 and report['fits'] is True
  assert report['per_device_bytes']['peak_estimate'] > 0
  # Scanned blocks compile too; a step that cannot fit is reported with the compiler's reason.
  scanned = _config((1, -1, 1))
  scanned.model.update(scan_layers=True, remat='full', num_layers=3)
  report = aot.compile_train_step(scanned, devices, num_items=4000)
  assert report['fits'] is True and report['scan_layers'] is True
  big = config_base.apply_preset(_config((1, -1, 1)), '1b')
  big.model.scan_layers = True  # no remat: every layer's activations kept, far past 16 GiB
  big.train.batch_size, big.data.max_len = 256, 50
  report = aot.compile_train_step(big, devices, num_items=100_000)
  assert report['fits'] is False and 'RESOURCE_EXHAUSTED' in report['error']
  assert report['per_device_state_bytes']['params'] > 0 and 'per_device_bytes' not in report


def test_state_memory_counts_lora_moments_for_trainable_params_only():
  """The abstract-mesh state estimate (no compile, any topology size): with LoRA the optimizer
  state is AdamW's two float32 moments of the trainable parameters (plus step counts)."""
  config = _config((1, -1, 1))
  full = aot.state_memory(config, 'gpu-h100x8', num_items=4000)
  config.model.update(lora_rank=4, lora_targets='q,k,v,o,gate,up,down')
  lora = aot.state_memory(config, 'v5p-32', num_items=4000)
  assert full['num_devices'] == 8 and lora['mesh'] == {'data': 1, 'fsdp': 16, 'tensor': 1}
  assert full['trainable_params'] == full['num_params']
  # + two int32 step counts (Adam's and the learning-rate schedule's).
  assert full['opt_state_bytes'] == 2 * 4 * full['num_params'] + 8
  assert lora['trainable_params'] < lora['num_params']
  assert lora['opt_state_bytes'] == 2 * 4 * lora['trainable_params'] + 8
  assert 0 < lora['per_device_state_bytes']['opt_state'] < lora['opt_state_bytes']
  with pytest.raises(Llm4RecError, match='unknown topology'):
    aot.state_memory(config, 'v9x-3', num_items=4000)
