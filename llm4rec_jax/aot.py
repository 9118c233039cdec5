"""Ahead-of-time compilation of the real train step for a device topology that need not be attached.

``compile_train_step(config, devices, num_items=...)`` builds the mesh of ``config.mesh`` over
``devices``, the model spec and train-state shardings exactly as training does, lowers the one jitted
train step (``trainer.make_train_step``) on abstract inputs and compiles it. The compiled program's
memory analysis is the per-device footprint (parameters, optimizer state, batch, temporaries), so a
preset or sharding that cannot fit is caught before anyone rents the hardware.

Devices come from :func:`topology_devices`: compile-only TPU devices of a named slice (``v5e-256``,
``v5p-128`` or libtpu's ``v5e:16x16`` form; needs libtpu's ``libtpu.so``, no TPU), or this machine's
own devices (``cpu:8``).

:func:`state_memory` needs neither libtpu nor a compiler: the train state's exact per-device bytes
(parameters and optimizer state, from the shardings training would use) on an abstract mesh of any
size, including GPU hosts (``gpu-h100x8``) that cannot be described without their hardware. It
leaves out what only the compiler knows (activations, gradients, temporaries, code).
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm4rec_jax import config_base, partitioning
from llm4rec_jax.errors import Llm4RecError
from llm4rec_jax.train import optimizer as optimizer_lib
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import experiment
from llm4rec_jax.train import trainer
from llm4rec_jax.train.checkpointing import abstract_with_shardings

# Cloud TPU slice names -> libtpu topology names. v5e counts chips; v5p counts TensorCores (two per
# chip, one JAX device per chip in megacore mode).
TOPOLOGY_ALIASES = {
    'v5e-4': 'v5e:2x2', 'v5e-8': 'v5e:2x4', 'v5e-16': 'v5e:4x4', 'v5e-64': 'v5e:8x8',
    'v5e-256': 'v5e:16x16', 'v5p-8': 'v5p:2x2x1', 'v5p-32': 'v5p:2x2x4', 'v5p-128': 'v5p:4x4x4',
    'v5p-256': 'v5p:4x4x8', 'v4-8': 'v4:2x2x1', 'v4-128': 'v4:4x4x4',
}
# High-bandwidth memory per device (bytes), by jax device_kind.
HBM_BYTES = {'TPU v4': 32 << 30, 'TPU v5 lite': 16 << 30, 'TPU v5': 95 << 30,
             'TPU v6 lite': 32 << 30, 'NVIDIA H100 80GB HBM3': 80 << 30,
             'NVIDIA H200': 141 << 30}
# Topologies state_memory describes without devices: (device kind, number of JAX devices).
STATE_TOPOLOGIES = {'v5e-256': ('TPU v5 lite', 256), 'v5e-64': ('TPU v5 lite', 64),
                    'v5p-128': ('TPU v5', 64), 'v5p-32': ('TPU v5', 16),
                    'gpu-h100x8': ('NVIDIA H100 80GB HBM3', 8), 'gpu-h200x8': ('NVIDIA H200', 8)}

LIBTPU_HELP = ('libtpu not found: set TPU_LIBRARY_PATH to a libtpu.so (no TPU needed), e.g. '
               '`pip download --no-deps "libtpu==0.0.42.*" -d /tmp/w && python -m zipfile -e '
               '/tmp/w/libtpu-*.whl /tmp/libtpu` then TPU_LIBRARY_PATH=/tmp/libtpu/libtpu/libtpu.so '
               '(the version jax[tpu] pins), or pass --libtpu=PATH')


def topology_devices(topology: str, libtpu: str | None = None) -> list[Any]:
  """Devices to compile for: ``'cpu'``/``'cpu:N'`` (this machine's first N devices) or a TPU slice.

  TPU slices are described by libtpu without TPU hardware (compile-only devices).
  """
  if topology == 'cpu' or topology.startswith('cpu:'):
    devices = jax.devices('cpu')
    n = int(topology.split(':')[1]) if ':' in topology else len(devices)
    if n > len(devices):
      raise Llm4RecError(f'{topology}: only {len(devices)} CPU devices (set XLA_FLAGS='
                        '--xla_force_host_platform_device_count=N before starting)')
    return devices[:n]
  name = TOPOLOGY_ALIASES.get(topology, topology)
  if ':' not in name:
    raise Llm4RecError(f'unknown topology {topology!r}; use one of '
                      f'{sorted(TOPOLOGY_ALIASES)}, a libtpu name like v5e:16x16, or cpu:N')
  if libtpu:
    os.environ['TPU_LIBRARY_PATH'] = str(libtpu)
  path = os.environ.get('TPU_LIBRARY_PATH')
  if path and not pathlib.Path(path).is_file():
    raise Llm4RecError(f'TPU_LIBRARY_PATH={path} is not a file. {LIBTPU_HELP}')
  # Compile-only: no metadata server to ask, and no chips to lock against other processes.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return list(topologies.get_topology_desc(name, 'tpu').devices)
  except RuntimeError as e:
    if 'not installed' in str(e):
      raise Llm4RecError(LIBTPU_HELP) from e
    raise


def make_mesh(mesh_cfg: Any, devices: list[Any]) -> jax.sharding.Mesh:
  """The config's mesh over ``devices``, laid out along the physical topology where possible."""
  axes = tuple(mesh_cfg['axes'])
  shape = partitioning.mesh_shape(axes, mesh_cfg['shape'], len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(grid, axes,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def compile_train_step(config: ml_collections.ConfigDict, devices: list[Any], *,
                       num_items: int) -> dict[str, Any]:
  """Compiles the train step of ``config`` for ``devices``; returns sizes and per-device memory.

  The loss budget is the worst case (every position of the batch a target), so the estimate bounds
  what training on any data of this shape needs.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config_base.validate(config, len(devices))
  mesh = make_mesh(config.mesh, devices)
  cfg = state_lib.model_config(config, num_items, mesh)
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 1000,
                                              lora=spec.cfg.lora_rank > 0)
  abstract, shardings = state_lib.state_shardings(spec, tx)
  exp = experiment.Experiment(config=config, workdir=pathlib.Path('.'), dataset=None, split=None,
                           mesh=mesh, spec=spec)
  batch_size, max_len = config.train.batch_size, config.data.max_len
  max_targets = config.loss.max_targets_per_batch or batch_size * max_len
  step = trainer.make_train_step(exp, tx, schedule, shardings, max_targets)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32,
                                   sharding=partitioning.batch_sharding(mesh, config.mesh.rules,
                                                                        len(shape)))
           for k, shape in (('inputs', (batch_size, max_len)), ('targets', (batch_size, max_len)),
                            ('users', (batch_size,)))}
  state_sizes = _state_sizes(spec, abstract, shardings)
  kind = devices[0].device_kind
  capacity = HBM_BYTES.get(kind)
  params = spec.num_params()
  common = {'device_kind': kind, 'num_devices': len(devices), 'mesh': dict(mesh.shape),
            'num_params': params, 'vocab_size': cfg.vocab_size, 'batch_size': batch_size,
            'max_len': max_len, 'dtype': cfg.dtype, 'scan_layers': cfg.scan_layers,
            'remat': cfg.remat, 'hbm_gib': round(capacity / 2 ** 30, 1) if capacity else None,
            # Parameters + Adam moments (float32), evenly sharded: the floor any sharding must pay.
            'state_floor_gib': round(3 * 4 * params / len(devices) / 2 ** 30, 3)}
  lowered = step.lower(abstract_with_shardings(abstract, shardings), batch, None)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # A step that cannot fit is an answer, not a crash: the compiler's message says by how much.
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    return {**common, 'fits': False, 'error': str(e).strip().splitlines()[0], **state_sizes}
  mem = compiled.memory_analysis()
  sizes = {k: int(getattr(mem, f'{k}_size_in_bytes', 0) or 0)
           for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  # Donated state is aliased to the output, so it is counted once.
  peak = sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp'] + sizes[
      'generated_code']
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      **common,
      'per_device_bytes': {**sizes, 'peak_estimate': peak},
      'per_device_gib': round(peak / 2 ** 30, 3),
      'fits': (peak <= capacity) if capacity else None,
      'flops_per_step_per_device': float((cost or {}).get('flops', math.nan)),
      **state_sizes,
  }


def _state_sizes(spec: state_lib.ModelSpec, abstract: dict[str, Any],
                 shardings: dict[str, Any]) -> dict[str, Any]:
  """Trainable parameter count, the optimizer state's bytes in all, and the per-device bytes of
  parameters and optimizer state under their shardings (the largest shard of each array)."""
  def per_device(tree, tree_shardings):
    leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(tree_shardings))
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in leaves)

  lora = spec.cfg.lora_rank > 0
  frozen = optimizer_lib.frozen_mask(spec.abstract_params, lora=lora)
  trainable = sum(p.size for f, p in zip(jax.tree.leaves(frozen),
                                         jax.tree.leaves(spec.abstract_params)) if not f)
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {
      'lora_rank': spec.cfg.lora_rank, 'trainable_params': trainable,
      'param_bytes': nbytes(abstract['params']), 'opt_state_bytes': nbytes(abstract['opt_state']),
      'per_device_state_bytes': {
          'params': per_device(abstract['params'], shardings['params']),
          'opt_state': per_device(abstract['opt_state'], shardings['opt_state'])},
  }


def state_memory(config: ml_collections.ConfigDict, topology: str, *,
                 num_items: int) -> dict[str, Any]:
  """The train state of ``config`` on ``topology`` (one of :data:`STATE_TOPOLOGIES`) without
  devices or compiling: an abstract mesh of the topology's size, the model spec, optimizer (with
  LoRA's frozen parameters, ``model.lora_rank``) and state shardings exactly as training builds
  them. Per-device bytes of parameters and optimizer state are exact for that sharding; the
  step's activations, gradients and temporaries are not included (:func:`compile_train_step`)."""
  if topology not in STATE_TOPOLOGIES:
    raise Llm4RecError(f'unknown topology {topology!r} for the state estimate; use one of '
                       f'{sorted(STATE_TOPOLOGIES)}')
  kind, n = STATE_TOPOLOGIES[topology]
  config = ml_collections.ConfigDict(config.to_dict())
  config_base.validate(config, n)
  axes = tuple(config.mesh.axes)
  mesh = jax.sharding.AbstractMesh(partitioning.mesh_shape(axes, config.mesh.shape, n), axes)
  cfg = state_lib.model_config(config, num_items, mesh)
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 1000, lora=cfg.lora_rank > 0)
  abstract, shardings = state_lib.state_shardings(spec, tx)
  sizes = _state_sizes(spec, abstract, shardings)
  state = sum(sizes['per_device_state_bytes'].values())
  capacity = HBM_BYTES[kind]
  return {'device_kind': kind, 'num_devices': n, 'mesh': dict(mesh.shape),
          'num_params': spec.num_params(), 'vocab_size': cfg.vocab_size, **sizes,
          'per_device_state_gib': round(state / 2 ** 30, 3),
          'hbm_gib': round(capacity / 2 ** 30, 1),
          'state_share_of_hbm': round(state / capacity, 4)}
