"""Serving an adapted model: the parameters and grown catalog of an online snapshot.

``llm4rec adapt`` writes Orbax snapshots to ``WORKDIR/online/snapshots/<stream position>``; this
module picks one (:func:`resolve`) and restores what a recommender needs from it (:func:`load`):
the adapted parameters at the snapshot's vocabulary size, the raw ids of the items registered
online and, for a content model, the content rows of those items. Used by
:class:`llm4rec_jax.serving.Recommender` (``llm4rec recommend --snapshot``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from llm4rec_jax.errors import CheckpointError
from llm4rec_jax.online.snapshots import SnapshotManager

CHOICES = "'auto', 'none', 'latest' or a stream position"


def directory(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / 'online' / 'snapshots'


def resolve(workdir: str | pathlib.Path, which: str | int | None) -> int | None:
  """The stream position of the snapshot ``which`` selects, or None for the training checkpoint.

  ``which``: 'none' (or None): the training checkpoint; 'auto': the latest snapshot when there is
  one, else the training checkpoint; 'latest': the latest snapshot (an error when there is none);
  a number: the snapshot at that stream position.
  """
  which = 'none' if which is None else str(which).strip().lower()
  if which == 'none':
    return None
  if which not in ('auto', 'latest') and not which.isdigit():
    raise CheckpointError(f'--snapshot={which!r}: expected {CHOICES}')
  d = directory(workdir)
  manager = SnapshotManager(d, async_save=False) if d.is_dir() else None
  try:
    positions = sorted(manager.all_steps()) if manager is not None else []
  finally:
    if manager is not None:
      manager.close()
  if which == 'auto':
    return positions[-1] if positions else None
  if not positions:
    raise CheckpointError(f'no online snapshot in {d} (run `llm4rec adapt` first, or use '
                          '--snapshot=none for the training checkpoint)')
  if which == 'latest':
    return positions[-1]
  if int(which) not in positions:
    raise CheckpointError(f'no online snapshot at stream position {which} in {d}; there are '
                          f'{positions}')
  return int(which)


@dataclasses.dataclass
class Adapted:
  """What serving takes from a snapshot."""
  position: int
  trained_step: int
  vocab_size: int
  new_items: list[str]  # raw ids registered online, in row order after the trained items
  params: Any
  content: Any  # ItemContent with the snapshot's rows (content models), else None


def load(workdir: str | pathlib.Path, position: int, config: Any, cfg: Any, mesh: Any,
         content_template: Any = None) -> Adapted:
  """Restores snapshot ``position`` of ``workdir`` for a model ``cfg`` on ``mesh``.

  ``config`` is the workdir's config (its ``online`` section sizes the optimizer state that the
  snapshot holds beside the parameters); ``content_template`` is the training ``ItemContent``
  (its structure), for content models.
  """
  from llm4rec_jax.online import learner as learner_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train.checkpointing import abstract_with_shardings  # pylint: disable=import-outside-toplevel
  manager = SnapshotManager(directory(workdir), async_save=False)
  try:
    host, arrays = manager.restore_host(position)
    cfg = dataclasses.replace(cfg, vocab_size=int(host['vocab_size']))
    spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
    # The optimizer state's structure does not depend on which parameters adapt (the mask only
    # zeroes updates), so the workdir's online config rebuilds it whatever --online overrides were.
    tx = learner_lib.make_online_optimizer(
        config.online, learner_lib.trainable_mask(spec.abstract_params, 'all'))
    abstract, shardings = state_lib.state_shardings(spec, tx)
    state = manager.restore_state(position, abstract_with_shardings(abstract, shardings))
  finally:
    manager.close()
  content = None
  if content_template is not None:
    treedef = jax.tree.structure(content_template)
    content = jax.tree.unflatten(treedef, [np.asarray(arrays[f'content_{i}'])
                                           for i in range(treedef.num_leaves)])
  return Adapted(position=position, trained_step=int(host['trained_step']),
                 vocab_size=int(host['vocab_size']), new_items=[str(r) for r in host['new_items']],
                 params=state['params'], content=content)
