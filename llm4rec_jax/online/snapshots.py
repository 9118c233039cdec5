"""Orbax snapshots of the adapted state, numbered by stream position.

A snapshot holds the device state (params, optimizer moments, step, RNG; restored straight into its
shardings), the host state as JSON (stream position, registered items, vocabulary size) and host
arrays (user histories, replay buffer, content rows). The Orbax step *is* the stream position: the
number of records applied, so a learner restarted after a crash loses at most the records since the
last snapshot and skips the ones it already applied.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from llm4rec_jax.errors import CheckpointError


class SnapshotManager:
  """``save(position, state, host, arrays)`` / ``restore(position, abstract_state)``; keeps the last
  ``max_to_keep``."""

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
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
