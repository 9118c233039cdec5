"""Refit before test: more training steps on everything known when the test cases are ranked.

Under leave-one-out the model is chosen on validation, so it never learns from the validation
interactions, yet at test time they are known (each test history ends with one). With
``eval.refit_epochs=E > 0`` the final evaluation ranks validation with the chosen checkpoint, then
trains it ``E`` more epochs on :func:`llm4rec_jax.data.splits.known_sequences` of the test cases
(the training sequences plus the validation targets, never a test target) and ranks test with the
result. The steps are the run's own jitted train step (same loss, dropout and batch size) with a
fresh AdamW at a constant rate: the schedule's last one (``learning_rate * min_lr_ratio``); at
most ``train.max_steps`` of them when that is set. Nothing in it is chosen on test; validation
cannot score it (at validation nothing more is known). A validation target whose item training
never had (a content model holds such items out of its training catalog, e.g. held-out cold items)
has no probability to learn and gets weight 0; the record counts them
(``targets_outside_training_catalog``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm4rec_jax.data import pipeline, splits
from llm4rec_jax.train import optimizer as optimizer_lib
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train.experiment import auto_max_targets


def refit_epochs(config: ml_collections.ConfigDict) -> int:
  return int(config.eval.get('refit_epochs', 0))


def refit_known(exp: Any, params: Any, make_train_step) -> tuple[Any, dict]:
  """(parameters after ``eval.refit_epochs`` epochs on what is known at test, a record of the
  refit). ``make_train_step`` is the trainer's (passed in: the trainer imports this module)."""
  c = exp.config
  epochs = refit_epochs(c)
  t0 = time.perf_counter()
  seqs = splits.known_sequences(exp.split.train, exp.split.test)
  windows, users = pipeline.make_windows(seqs, c.data.max_len, all_windows=c.data.all_windows)
  steps = epochs * (len(windows) // c.train.batch_size)
  if c.train.max_steps > 0:  # train.max_steps bounds every training of the run (e.g. quick runs)
    steps = min(steps, c.train.max_steps)
  rate = float(c.optimizer.learning_rate * c.optimizer.min_lr_ratio)
  opt_cfg = ml_collections.ConfigDict(c.optimizer.to_dict())
  opt_cfg.update(dict(schedule='constant', learning_rate=rate, warmup_steps=1, ema_decay=0.0))
  tx, schedule = optimizer_lib.make_optimizer(opt_cfg, max(steps, 2),
                                              lora=exp.spec.cfg.lora_rank > 0)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  state = {'step': jax.device_put(jnp.zeros((), jnp.int32), exp.spec.replicated),
           'params': jax.tree.map(jnp.copy, params),  # the step donates its state
           'opt_state': jax.jit(tx.init, out_shardings=shardings['opt_state'])(params),
           'rng': jax.device_put(jax.random.key_data(jax.random.fold_in(
               jax.random.key(c.seed), 3)), exp.spec.replicated)}
  max_targets = c.loss.max_targets_per_batch or auto_max_targets(windows, c.train.batch_size)
  step_fn = make_train_step(exp, tx, schedule, shardings, max_targets)
  data = iter(pipeline.train_dataset(
      windows, users, global_batch_size=c.train.batch_size, seed=c.seed + 1, num_epochs=epochs,
      process_index=jax.process_index(), process_count=jax.process_count()).to_iter_dataset())
  losses = []
  for i in range(steps):
    state, metrics = step_fn(state, exp.put(next(data)), exp.content)
    losses.append(metrics['loss'])
    if i >= c.train.max_inflight_steps:  # bound the dispatch queue, as the training loop does
      jax.block_until_ready(losses[i - c.train.max_inflight_steps])
  params = jax.block_until_ready(state['params'])
  record = {'epochs': epochs, 'steps': steps, 'learning_rate': rate,
            'windows': len(windows), 'seconds': round(time.perf_counter() - t0, 1),
            'final_loss': float(losses[-1]) if losses else None}
  known = None if exp.content is None else exp.content.id_known
  if known is not None:  # validation targets training never had: no softmax mass, weight 0
    targets = windows[:, 1:][windows[:, 1:] > 0]
    record['targets_outside_training_catalog'] = int(np.sum(~np.asarray(known)[targets]))
  return params, record
