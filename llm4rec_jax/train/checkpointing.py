"""Orbax behind one small module: training checkpoints (async periodic saves, keep the last N plus
the best) and online snapshots; parameters-only restores of either.

A checkpoint holds the train state (params, optimizer state, step, RNG) and the Grain data-iterator
state, so a resumed run continues with exactly the batches and random numbers it would have used.
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoints usable.

An online snapshot (:class:`SnapshotManager`) holds the adapted device state, the host state as JSON
(stream position, registered items, vocabulary size) and host arrays (user histories, replay buffer,
content rows). Its Orbax step *is* the stream position: the number of records applied, so a learner
restarted after a crash loses at most the records since the last snapshot and skips the ones it
already applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from llm4rec_jax.errors import CheckpointError
from llm4rec_jax.train import memory

BEST_METRIC = 'valid_ndcg@10'
# Host-array items a training loop hook may add to a checkpoint (``train.hooks``), by item name.
# 'rag': the item table the retrieval index was last built from and its step, so a resumed run
# retrieves exactly what the uninterrupted run would have.
EXTRA_ITEMS = ('rag',)


class Checkpointer:
  """Saves and restores ``{'state': train-state pytree, 'data_iter': grain iterator}``, and the
  loop hooks' host arrays under their names (:data:`EXTRA_ITEMS`).

  ``read_only``: for restoring only; nothing in ``directory`` is created, cleaned up or deleted
  (a reader of a workdir that a run is still writing, or of a read-only bucket)."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2, keep_best: bool = True,
               async_save: bool = True, best_metric: str = BEST_METRIC, read_only: bool = False):
    self.directory = _absolute(directory)
    self.best_metric = best_metric
    policies = [ocp.checkpoint_managers.LatestN(max_to_keep)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m.get(best_metric, float('-inf')), n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn also makes Orbax record each step's metrics on disk (used by best_step()).
        best_fn=(lambda m: m.get(best_metric, float('-inf'))) if keep_best else None,
        best_mode='max', enable_async_checkpointing=async_save and not read_only,
        read_only=read_only, save_interval_steps=0 if read_only else 1, create=not read_only,
        cleanup_tmp_directories=not read_only)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data_iter': grain.checkpoint.CheckpointHandler(),
                       **{name: ocp.StandardCheckpointHandler() for name in EXTRA_ITEMS}})

  def save(self, step: int, state: Any, data_iter: Any | None = None,
           metrics: dict[str, float] | None = None,
           extras: dict[str, dict[str, Any]] | None = None) -> None:
    """``extras``: host arrays saved alongside, by item name (one of :data:`EXTRA_ITEMS`)."""
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    for name, arrays in (extras or {}).items():
      items[_extra_item(name)] = ocp.args.StandardSave(arrays)
    with self._disk_errors(f'checkpoint step {step}'):
      self._mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  @contextlib.contextmanager
  def _disk_errors(self, what: str):
    """A full disk becomes a CheckpointError naming the folder and what to change (async saves
    surface it in :meth:`wait`); checkpoints written before are intact."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not memory.is_disk_full(e):
        raise
      free = memory.disk_free_gb(self.directory)
      raise CheckpointError(
          f'no space left on the device writing {what} to {self.directory}'
          f'{f" ({free:.2f} GB free)" if free is not None else ""}: free space, put --workdir on a '
          'larger disk, or keep fewer checkpoints (train.keep_checkpoints)') from None

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the highest ``best_metric``, else the latest step."""
    best, best_val = None, float('-inf')
    for step in self._mngr.all_steps():
      m = self._mngr.metrics(step) or {}
      if self.best_metric in m and m[self.best_metric] > best_val:
        best, best_val = step, m[self.best_metric]
    return best if best is not None else self.latest_step()

  def metrics(self, step: int) -> dict[str, float]:
    return dict(self._mngr.metrics(step) or {})

  def progress(self, step: int) -> dict[str, Any]:
    """Progress saved with ``step``: early stopping's (best score, its step, evals since) and the
    training seconds spent to reach it, over every run that led to it (0 when not recorded)."""
    m = self.metrics(step)
    return {'best': float(m.get('best', float('-inf'))), 'best_step': int(m.get('best_step', -1)),
            'evals_since_best': int(m.get('evals_since_best', 0)),
            'elapsed_s': float(m.get('elapsed_s', 0.0))}

  def restore_subtree(self, step: int | None, target: dict[str, Any]) -> dict[str, Any]:
    """Only the top-level state entries of ``target`` (e.g. ``{'params': ...}``, abstract arrays
    carrying their shardings) of checkpoint ``step``; the optimizer state is not read."""
    if step is None:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    return restore_partial(self.directory / str(step) / 'state', target,
                           f'checkpoint step {step} in {self.directory}')

  def restore(self, step: int | None, abstract_state: Any, data_iter: Any | None = None) -> Any:
    """Restores the state (placed per ``abstract_state``'s shardings) and, if given, the iterator."""
    if step is None:
      raise CheckpointError(f'no checkpoint found in {self.directory}')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except FileNotFoundError as e:
      raise CheckpointError(f'checkpoint step {step} in {self.directory} is incomplete: {e}') from e
    logging.info('restored checkpoint step %d from %s', step, self.directory)
    return restored['state']

  def restore_extra(self, step: int, name: str) -> dict[str, Any] | None:
    """The host arrays saved as item ``name`` with ``step``, or None if that checkpoint has none
    (e.g. one written before the item was kept)."""
    if not (self.directory / str(step) / _extra_item(name)).exists():
      return None
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore()}))
    return {k: np.asarray(v) for k, v in restored[name].items()}

  def wait(self) -> None:
    with self._disk_errors('a checkpoint'):
      self._mngr.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._mngr.close()


def _extra_item(name: str) -> str:
  if name not in EXTRA_ITEMS:
    raise ValueError(f'checkpoint item {name!r} is not one of checkpointing.EXTRA_ITEMS '
                     f'{EXTRA_ITEMS}: a hook saving it must be registered there')
  return name


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, as Orbax's restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _absolute(directory: str | os.PathLike) -> epath.Path:
  """``directory`` as an absolute ``epath.Path`` (Orbax wants one; ``gs://`` paths already are)."""
  d = epath.Path(directory)
  return d if '://' in os.fspath(d) else d.absolute()


def restore_partial(item_dir: epath.Path, target: dict[str, Any], what: str) -> dict[str, Any]:
  """The entries of ``target`` from a state item saved by ``StandardSave`` (the rest of the saved
  tree is skipped), placed per the shardings of ``target``'s ShapeDtypeStructs."""
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  try:
    return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  except FileNotFoundError as e:
    raise CheckpointError(f'{what} is incomplete: {e}') from e
  finally:
    checkpointer.close()


def new_progress() -> dict[str, Any]:
  """The progress of a run that starts from scratch (see :meth:`Checkpointer.progress`)."""
  return {'best': float('-inf'), 'best_step': -1, 'evals_since_best': 0, 'elapsed_s': 0.0}


def save_tree(item_dir: epath.Path, tree: Any) -> None:
  """Writes ``tree`` (arrays, any sharding) as a ``StandardSave`` item at ``item_dir``, replacing
  what is there; every process calls it. :func:`restore_partial` reads it back."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(_absolute(item_dir), tree, force=True)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()


class SnapshotManager:
  """Online snapshots: ``save(position, state, host, arrays)``, restores of the host part, of the
  state, or of its parameters only; keeps the last ``max_to_keep`` (``read_only``: see
  :class:`Checkpointer`)."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2,
               async_save: bool = True, read_only: bool = False):
    self.directory = _absolute(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, read_only=read_only,
        save_interval_steps=0 if read_only else 1, create=not read_only, enable_async_checkpointing=async_save and not read_only,
        cleanup_tmp_directories=not read_only)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=('state', 'host', 'arrays'))

  def latest(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    """The stream positions of the snapshots on disk."""
    return list(self._mngr.all_steps())

  def save(self, position: int, state: Any, host: dict[str, Any],
           arrays: dict[str, np.ndarray]) -> None:
    self._mngr.save(position, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host),
        arrays=ocp.args.StandardSave(arrays)), force=True)

  def restore_host(self, position: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON and host arrays of a snapshot (read first: they size the device state)."""
    r = self._restore(position, host=ocp.args.JsonRestore(), arrays=ocp.args.StandardRestore())
    return r['host'], {k: np.asarray(v) for k, v in r['arrays'].items()}

  def restore_state(self, position: int, abstract_state: Any) -> Any:
    """The device state, placed per the ShapeDtypeStructs' shardings in ``abstract_state``."""
    return self._restore(position, state=ocp.args.StandardRestore(abstract_state))['state']

  def restore_subtree(self, position: int, target: dict[str, Any]) -> dict[str, Any]:
    """Only the top-level state entries of ``target`` (see :meth:`Checkpointer.restore_subtree`)."""
    return restore_partial(self.directory / str(position) / 'state', target,
                           f'snapshot {position} in {self.directory}')

  def _restore(self, position: int, **items) -> Any:
    try:
      return self._mngr.restore(position, args=ocp.args.Composite(**items))
    except FileNotFoundError as e:
      raise CheckpointError(f'snapshot {position} in {self.directory} is incomplete: {e}') from e

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
