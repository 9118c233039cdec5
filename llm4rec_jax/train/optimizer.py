"""AdamW with linear warmup, cosine decay and global-norm gradient clipping."""

from __future__ import annotations

from typing import Any

import jax
import optax

from llm4rec_jax.errors import ConfigError


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


def make_optimizer(opt_cfg: Any, total_steps: int, text_finetune: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, schedule). Weight decay applies to matrices only (not norms/biases).

  With ``text_finetune.enabled`` (``config.text_finetune``) the text encoder's updates are scaled to
  its own peak rate (``text_finetune.learning_rate``, same warmup/decay shape; exact for AdamW,
  whose step is linear in the rate) and those of its frozen lower layers set to zero. Clipping stays
  global.
  """
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = [
      optax.clip_by_global_norm(opt_cfg.grad_clip) if opt_cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay, mask=decay_mask),
  ]
  if text_finetune is not None and text_finetune.get('enabled', False):
    from llm4rec_jax.train import text_finetune as ft  # pylint: disable=import-outside-toplevel
    ratio = (text_finetune.learning_rate / opt_cfg.learning_rate
             if text_finetune.learning_rate else 1.0)
    parts.append(ft.scale_by_part(text_finetune.freeze_layers, ratio))
  return optax.chain(*parts), schedule
