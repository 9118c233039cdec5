"""Serving an adapted model: the parameters and grown catalog of an online snapshot.

``llm4rec adapt`` writes Orbax snapshots to ``WORKDIR/online/snapshots/<stream position>``;
``workdir.snapshot_position`` picks one and :func:`load` restores what a recommender needs from it:
the adapted parameters at the snapshot's vocabulary size (parameters only: the online optimizer's
moments are not read), the raw ids of the items registered online and, for a content model, the
content rows of those items. Used by :class:`llm4rec_jax.serving.recommender.Recommender`
(``llm4rec recommend --snapshot``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.train import restore
from llm4rec_jax.train import state as state_lib


@dataclasses.dataclass
class Adapted:
  """What serving takes from a snapshot."""
  position: int
  trained_step: int
  vocab_size: int
  new_items: list[str]  # raw ids registered online, in row order after the trained items
  params: Any
  content: Any  # ItemContent with the snapshot's rows (content models), else None


def load(workdir: workdir_lib.PathLike, position: int, config: Any, cfg: Any, mesh: Any,
         content_template: Any = None) -> Adapted:
  """Restores snapshot ``position`` of ``workdir`` for a model ``cfg`` on ``mesh``.

  ``config`` is the workdir's config (its mesh rules place the parameters);
  ``content_template`` is the training ``ItemContent`` (its structure), for content models.
  """
  manager = workdir_lib.snapshots(workdir, read_only=True)
  try:
    host, arrays = manager.restore_host(position)
  finally:
    manager.close()
  cfg = dataclasses.replace(cfg, vocab_size=int(host['vocab_size']))
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  params = restore.restore_snapshot_params(workdir, position, spec)
  content = None
  if content_template is not None:
    treedef = jax.tree.structure(content_template)
    content = jax.tree.unflatten(treedef, [np.asarray(arrays[f'content_{i}'])
                                           for i in range(treedef.num_leaves)])
  return Adapted(position=position, trained_step=int(host['trained_step']),
                 vocab_size=int(host['vocab_size']), new_items=[str(r) for r in host['new_items']],
                 params=params, content=content)
