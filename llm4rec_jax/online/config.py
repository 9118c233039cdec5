"""The config of an online learner: the workdir's training config with ``config.online`` overrides,
validated once and then frozen.

The learner never writes into it: what changes as the stream runs (the vocabulary size as the
catalog grows) is learner state, and a snapshot records it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from llm4rec_jax import config_base
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.online import stream
from llm4rec_jax.online.catalog import GROW_MODES


def load(workdir: pathlib.Path, overrides: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
  """``workdir``'s config with the ``config.online`` fields of ``overrides`` (not yet validated:
  that needs the mesh, see :func:`validate`). Refuses a workdir this learner cannot adapt."""
  config = config_base.load(workdir)
  if workdir_lib.has_text_encoder(workdir):
    raise ConfigError('text_finetune.enabled', f'{workdir} was trained with text '
                      'fine-tuning (its model holds a text encoder); online adaptation does not '
                      'support that yet (the text of new items would need the fine-tuned '
                      'encoder, and its weights an online optimizer). Adapt a workdir trained '
                      'with text_finetune.enabled=False (frozen text embeddings) instead')
  if overrides:
    unknown = sorted(set(overrides) - set(config.online))
    if unknown:
      raise ConfigError(f'online.{unknown[0]}', f'unknown field; config.online has '
                        f'{sorted(config.online)}')
    config.online.update(dict(overrides))
  return config


def validate(config: ml_collections.ConfigDict, dp: int) -> None:
  """Checks ``config.online`` (and what online adaptation needs of the model)."""
  oc = config.online
  if config.model.get('head', 'softmax') != 'softmax':
    raise ConfigError('model.head', 'online adaptation supports the softmax head only (new items '
                      'would need semantic-ID codes)')
  if oc.learning_rate <= 0:
    raise ConfigError('online.learning_rate', f'must be positive, got {oc.learning_rate}')
  for key in ('batch_size',):
    if oc[key] <= 0:
      raise ConfigError(f'online.{key}', f'must be positive, got {oc[key]}')
  for key in ('replay_size', 'replay_batch', 'l2_pull', 'snapshot_every', 'snapshot_every_s',
              'max_wait_s',
              'window_s', 'grow_items', 'reserve_items', 'window'):
    if oc[key] < 0:
      raise ConfigError(f'online.{key}', f'must be >= 0, got {oc[key]}')
  if oc.sync_every < 1:
    raise ConfigError('online.sync_every', f'must be >= 1, got {oc.sync_every}')
  if oc.grow not in GROW_MODES:
    raise ConfigError('online.grow', f'{oc.grow!r} is not one of {GROW_MODES}')
  if oc.bad_events not in stream.BAD_EVENTS:
    raise ConfigError('online.bad_events', f'{oc.bad_events!r} is not one of {stream.BAD_EVENTS}')
  if oc.time_order not in stream.TIME_ORDERS:
    raise ConfigError('online.time_order', f'{oc.time_order!r} is not one of {stream.TIME_ORDERS}')
  if oc.new_item_learning_rate < 0:
    raise ConfigError('online.new_item_learning_rate',
                      f'must be >= 0 (0 = online.learning_rate), got {oc.new_item_learning_rate}')
  if oc.keep_snapshots < 1:
    raise ConfigError('online.keep_snapshots', 'must be >= 1')
  for key in ('batch_size', 'replay_batch'):
    if oc[key] % dp:
      raise ConfigError(f'online.{key}', f'{oc[key]} is not divisible by the {dp}-way batch '
                        'sharding of the mesh')


def imprint_target(cfg: Any, mode: str) -> str | None:
  """The parameter holding new items' scoring rows for ``online.new_item_init='imprint'``; None
  when new rows stay zero (also for a tied content model: it scores a new item by its content)."""
  if mode not in ('imprint', 'zero'):
    raise ConfigError('online.new_item_init', f"{mode!r} is not 'imprint' or 'zero'")
  if mode == 'zero':
    return None
  if not cfg.tie_embeddings:
    return 'output_embed'
  return 'item_embed' if cfg.item_repr == 'id' else None
