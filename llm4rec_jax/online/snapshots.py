"""Snapshots of an online learner: save and restore everything a resumed stream needs.

A snapshot (``WORKDIR/online/snapshots/<stream position>``, Orbax, see
:class:`~llm4rec_jax.train.checkpointing.SnapshotManager`) holds the device state (parameters,
optimizer moments, step, RNG) at the grown vocabulary size, the host state as JSON (stream position,
vocabulary size, raw ids of the items registered online, users) and host arrays (histories, replay
buffer, content rows). The config is not in it: a resumed learner reads the workdir's config and
takes the vocabulary size from the snapshot. ``serving/snapshot.py`` reads the same layout.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import jax
import numpy as np

from llm4rec_jax.online import registration
from llm4rec_jax.train.checkpointing import abstract_with_shardings

if TYPE_CHECKING:
  from llm4rec_jax.online.learner import OnlineLearner


def save(learner: OnlineLearner) -> None:
  """Saves the learner's state at its stream position (async; ``learner.snapshots.close()``
  waits); nothing when a snapshot of this position exists. The index first gets every item vector
  that changed since its last upsert."""
  if learner.snapshots.latest() == learner.position:
    learner.sync()
    return
  # Every sync upserts the items its steps touched; a step moves other item rows too (softmax, a
  # shared content tower), so a snapshot brings the index up to date: every row whose vector
  # changed since its last upsert, in one call.
  learner.sync(all_rows=True)
  histories = learner.histories
  users = sorted(histories)
  lengths = np.asarray([len(histories[u]) for u in users], np.int64)
  flat = [i for u in users for i in histories[u]]
  arrays = {'history_offsets': np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            'history_items': np.asarray(flat or [0], np.int32),
            **{f'replay_{k}': v for k, v in learner.replay.state().items()}}
  if learner.content_np is not None:
    arrays.update({f'content_{i}': np.asarray(x)
                   for i, x in enumerate(jax.tree.leaves(learner.content_np))})
  catalog = learner.catalog
  host = {'position': learner.position, 'vocab_size': catalog.vocab_size,
          'num_trained_items': catalog.num_trained,
          'new_items': catalog.raw_ids[catalog.num_trained + 1:],
          'users': users, 'trained_step': learner.trained_step, 'time': time.time()}
  learner.snapshots.save(learner.position, learner.state, host, arrays)
  learner.snapshot_position = learner.position


def restore(learner: OnlineLearner, position: int) -> None:
  """Restores snapshot ``position`` into ``learner`` (built from the same workdir): the grown
  catalog and its vocabulary size, the device state, histories, replay and content."""
  host, arrays = learner.snapshots.restore_host(position)
  catalog = learner.catalog
  catalog.raw_ids = catalog.raw_ids[:host['num_trained_items'] + 1] + list(host['new_items'])
  catalog.index = {r: i for i, r in enumerate(catalog.raw_ids) if i}
  catalog.vocab_size = int(host['vocab_size'])
  learner.use_vocab_size(catalog.vocab_size)
  p = learner.programs
  learner.state = learner.snapshots.restore_state(position,
                                                  abstract_with_shardings(p.abstract, p.shardings))
  offsets, flat = arrays['history_offsets'], arrays['history_items']
  learner.histories = {u: flat[offsets[i]:offsets[i + 1]].astype(np.int32).tolist()
                       for i, u in enumerate(host['users'])}
  learner.replay.load_state({'windows': arrays['replay_windows'],
                             'counters': arrays['replay_counters']})
  if learner.content_np is not None:
    treedef = jax.tree.structure(learner.content_np)
    learner.content_np = jax.tree.unflatten(treedef, [arrays[f'content_{i}']
                                                      for i in range(treedef.num_leaves)])
  learner.position = int(host['position'])
  registration.put_catalog(learner)
  logging.info('resumed online learning at stream position %d', learner.position)
