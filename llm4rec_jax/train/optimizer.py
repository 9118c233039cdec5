"""AdamW with linear warmup, cosine decay and global-norm gradient clipping.

Parameters are labelled (:func:`param_labels`): ``'model'``, ``'text_encoder'`` (its own learning
rate) or ``'frozen'`` (the text encoder's lowest layers with ``text_finetune.freeze_layers``, and
with LoRA the decoder blocks' base projections, ``model.lora.is_frozen``). With LoRA the frozen
parameters get no optimizer state at all (``optax.multi_transform`` with ``set_to_zero``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import lora as lora_lib

# The text encoder's embedding parameters (frozen with its lowest layers by freeze_layers > 0).
_EMBEDDINGS = ('word_embed', 'pos_embed', 'type_embed', 'embed_norm')


def learning_rate_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
  warmup = max(1, min(int(opt_cfg.warmup_steps), total_steps - 1))
  if opt_cfg.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, opt_cfg.learning_rate, warmup),
         optax.constant_schedule(opt_cfg.learning_rate)], [warmup])
  if opt_cfg.schedule != 'cosine':
    raise ConfigError('optimizer.schedule', f"unknown schedule {opt_cfg.schedule!r} (cosine | constant)")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=opt_cfg.learning_rate * opt_cfg.min_lr_ratio)


def make_optimizer(opt_cfg: Any, total_steps: int, text_finetune: Any = None, *,
                   lora: bool = False) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule). Weight decay applies to matrices only (not norms/biases).

  With ``text_finetune.enabled`` (``config.text_finetune``) the text encoder's updates are scaled to
  its own peak rate (``text_finetune.learning_rate``, same warmup/decay shape; exact for AdamW,
  whose step is linear in the rate) and those of its frozen lower layers set to zero. Clipping stays
  global.

  With ``lora`` (``model.lora_rank > 0``) AdamW runs on the trainable parameters only: every
  ``'frozen'`` parameter's update is zero and it has no moments in the optimizer state (the train
  step also stops its gradient and keeps it bit for bit, ``frozen_mask``).
  """
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                      weight_decay=opt_cfg.weight_decay, mask=decay_mask)
  freeze_layers = 0
  if text_finetune is not None and text_finetune.get('enabled', False):
    freeze_layers = text_finetune.freeze_layers
  if lora:
    labels_of = param_labels(freeze_layers, lora=True)
    adamw = optax.multi_transform(
        {'train': adamw, 'frozen': optax.set_to_zero()},
        lambda params: jax.tree.map(lambda label: 'frozen' if label == 'frozen' else 'train',
                                    labels_of(params)))
  parts = [
      optax.clip_by_global_norm(opt_cfg.grad_clip) if opt_cfg.grad_clip > 0 else optax.identity(),
      adamw,
  ]
  if text_finetune is not None and text_finetune.get('enabled', False):
    ratio = (text_finetune.learning_rate / opt_cfg.learning_rate
             if text_finetune.learning_rate else 1.0)
    parts.append(scale_by_part(text_finetune.freeze_layers, ratio))
  return optax.chain(*parts), schedule


def frozen_mask(params: Any, *, lora: bool) -> Any:
  """params -> the same tree of bools: True where LoRA freezes the parameter (its gradient is
  stopped and the train step keeps it unchanged). All False without LoRA."""
  return jax.tree.map(lambda label: label == 'frozen' and lora,
                      param_labels(0, lora=lora)(params))


def param_labels(freeze_layers: int, *, lora: bool = False) -> Callable[[Any], Any]:
  """params -> the same tree of labels: 'model', 'text_encoder' or 'frozen' (the encoder's
  embeddings and lowest ``freeze_layers`` layers, when ``freeze_layers`` > 0; with ``lora`` the
  decoder blocks' base projections and q/k/v biases, ``lora.is_frozen``)."""

  def text_label(path) -> str:
    keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
    if freeze_layers > 0 and (keys[0] in _EMBEDDINGS
                              or (keys[0] == 'layers' and int(keys[1]) < freeze_layers)):
      return 'frozen'
    return 'text_encoder'

  def label(path) -> str:
    keys = [getattr(k, 'key', getattr(k, 'idx', None)) for k in path]
    if keys and keys[0] == 'text_encoder':
      return text_label(path[1:])
    return 'frozen' if lora and lora_lib.is_frozen(path) else 'model'

  # Any tree, not only dicts: optax.tree_map_params initialises the optimizer on a placeholder.
  labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: label(p), params)
  return labels


def scale_by_part(freeze_layers: int, ratio: float) -> optax.GradientTransformation:
  """Stateless: the text encoder's updates x ``ratio`` (its own learning rate), its frozen
  parameters' updates x 0. Stateless so optimizer-state shardings can still be derived from the
  parameters' (``optax.tree_map_params``). Frozen parameters also get no gradient (the encoder
  stops it below them), so their AdamW moments stay zero."""
  labels_of = param_labels(freeze_layers)
  factor = {'model': 1.0, 'text_encoder': ratio, 'frozen': 0.0}

  def update(updates, state, params=None):
    del params
    scaled = jax.tree.map(lambda u, label: u * factor[label], updates, labels_of(updates))
    return scaled, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
