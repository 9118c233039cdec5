"""Device mesh and shardings, all from config: logical axis names + one rules table -> mesh axes.

``config.mesh.axes`` names the mesh axes (default ``('data', 'fsdp', 'tensor')``), ``config.mesh.shape``
their sizes, one of which may be ``-1`` (fill with the remaining devices). ``config.mesh.rules`` maps
each logical axis (``batch``, ``vocab``, ``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``,
``norm``) to a mesh axis, a tuple of mesh axes, or None (replicated). Changing the parallelism is a
config change; model code only names logical axes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm4rec_jax.errors import ConfigError

Rules = Sequence[tuple[str, Any]]


def mesh_shape(axes: Sequence[str], shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves a ``-1`` entry and checks that the mesh uses exactly ``num_devices`` devices."""
  if len(axes) != len(shape):
    raise ConfigError('mesh.shape', f'{tuple(shape)} has {len(shape)} entries for axes {tuple(axes)}')
  shape = [int(s) for s in shape]
  if shape.count(-1) > 1:
    raise ConfigError('mesh.shape', f'at most one axis may be -1, got {tuple(shape)}')
  if any(s == 0 or s < -1 for s in shape):
    raise ConfigError('mesh.shape', f'sizes must be positive or -1, got {tuple(shape)}')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError('mesh.shape', f'{tuple(shape)} does not divide the {num_devices} devices')
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError('mesh.shape', f'{tuple(shape)} needs {math.prod(shape)} devices but '
                      f'{num_devices} are available ({jax.default_backend()})')
  return tuple(shape)


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh from ``config.mesh`` over ``devices`` (default: the first
  ``mesh.num_devices`` devices, or all)."""
  if devices is None:
    devices = jax.devices()
    if mesh_cfg.get('num_devices', 0):
      devices = devices[:mesh_cfg['num_devices']]
  devices = list(devices)
  axes = tuple(mesh_cfg['axes'])
  shape = mesh_shape(axes, mesh_cfg['shape'], len(devices))
  # Auto axes: shardings of intermediates are propagated by the compiler (GSPMD).
  axis_types = (jax.sharding.AxisType.Auto,) * len(axes)
  if devices == list(jax.devices()):
    try:
      return jax.make_mesh(shape, axes, axis_types=axis_types, devices=devices)
    except (ValueError, NotImplementedError):  # topology-aware layout unavailable
      pass
  return Mesh(np.asarray(devices).reshape(shape), axes, axis_types=axis_types)


def _rule_table(rules: Rules) -> dict[str, tuple[str, ...]]:
  table = {}
  for logical, mesh_axes in rules:
    if mesh_axes is None:
      table[logical] = ()
    elif isinstance(mesh_axes, str):
      table[logical] = (mesh_axes,)
    else:
      table[logical] = tuple(mesh_axes)
  return table


def rule_axes(rules: Rules, logical: str) -> tuple[str, ...]:
  """The mesh axes a logical axis maps to."""
  return _rule_table(rules).get(logical, ())


def logical_to_mesh(logical: Sequence[str | None], rules: Rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> P:
  """PartitionSpec for logical axis names.

  A mesh axis is used at most once per spec; mesh axes of size 1 are dropped; with ``shape`` given,
  a dimension that the mesh axes do not divide falls back to replication (logged).
  """
  table = _rule_table(rules)
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical):
    axes = [a for a in table.get(name, ()) if a in mesh.shape and a not in used
            and mesh.shape[a] > 1] if name else []
    if shape is not None and axes and shape[dim] % math.prod(mesh.shape[a] for a in axes):
      logging.warning('dimension %d (%s, size %d) is not divisible by mesh axes %s; replicating it',
                      dim, name, shape[dim], axes)
      axes = []
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*spec)


def tree_shardings(logical_tree: Any, abstract_tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """NamedShardings for a tree of logical-axis PartitionSpecs (e.g. ``nnx.get_partition_spec``)."""
  def one(spec, leaf):
    names = tuple(spec) if isinstance(spec, P) else ()
    names = names + (None,) * (len(leaf.shape) - len(names))
    return NamedSharding(mesh, logical_to_mesh(names, rules, mesh, leaf.shape))
  return jax.tree.map(one, logical_tree, abstract_tree,
                      is_leaf=lambda x: isinstance(x, P) or x is None)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2, *, leading: int = 0) -> NamedSharding:
  """Sharding of a ``[batch, ...]`` array: batch over the mesh axes of the ``batch`` rule; with
  ``leading=1`` of a ``[k, batch, ...]`` stack of batches (the first axis not sharded)."""
  return NamedSharding(mesh, logical_to_mesh(
      (None,) * leading + ('batch',) + (None,) * (ndim - leading - 1), rules, mesh))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  return math.prod(mesh.shape[a] for a in _rule_table(rules).get('batch', ()) if a in mesh.shape)


def check_sharded(shardings: Any, abstract_tree: Any, min_size: int = 2 ** 20) -> list[str]:
  """Names of parameters with >= ``min_size`` elements left fully replicated on a multi-device mesh.

  On a pure data-parallel mesh nothing can be sharded, so nothing is reported there.
  """
  problems = []
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  for (path, leaf), sharding in zip(leaves, jax.tree.leaves(shardings)):
    mesh = sharding.mesh
    model_axes = [a for a in mesh.axis_names if a != 'data' and mesh.shape[a] > 1]
    if model_axes and math.prod(leaf.shape) >= min_size and all(s is None for s in sharding.spec):
      problems.append(jax.tree_util.keystr(path))
  return problems


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules, *,
              whole: bool = False, leading: int = 0) -> dict[str, jax.Array]:
  """Global arrays sharded over the batch axes.

  By default each process passes its own block of rows (training: a per-process pipeline) and the
  global batch is the processes' blocks in process order. With ``whole=True`` every process passes
  the same, whole batch (evaluation arrays) and each keeps only the rows its devices hold.
  ``leading=1``: ``[k, batch, ...]`` stacks of batches.
  """
  return {k: jax.make_array_from_process_local_data(
      batch_sharding(mesh, rules, np.ndim(v), leading=leading), v, np.shape(v) if whole else None)
          for k, v in batch.items()}


def fetch(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-process) array on every process, as numpy."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
