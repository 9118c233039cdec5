"""``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``: the whole job.

One jitted, donated step ``(state, batch) -> (state, metrics)`` with explicit in/out shardings; RNG by
``fold_in(rng, step)``; no host sync except on log and evaluation steps. Checkpoints (model,
optimizer, RNG, data iterator) let ``train`` on an existing workdir resume exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from llm4rec_jax import beyond_accuracy, config_base, evaluation, partitioning
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import pipeline, records
from llm4rec_jax.data.prepare import source as records_source
from llm4rec_jax.errors import ConfigError, NonFiniteLossError
from llm4rec_jax.train import hooks as hooks_lib
from llm4rec_jax.train import memory, optimizer as optimizer_lib, preemption, refit, text_finetune
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train.checkpointing import abstract_with_shardings, new_progress
from llm4rec_jax.train.experiment import (Experiment, auto_max_targets, build_experiment,
                                          restore_params, run_memory, write_catalog)
from llm4rec_jax.train.logger import MetricLogger
from llm4rec_jax.train.objective import make_loss_fn


def make_train_step(exp: Experiment, tx: optax.GradientTransformation, schedule, shardings,
                    max_targets: int, *, steps_per_call: int = 1):
  """The one jitted train step; with ``steps_per_call=k > 1``, the same step run ``k`` times in one
  jitted call (``lax.scan`` over ``[k, batch, ...]`` stacked batches; the metrics come back stacked
  ``[k]``), so one dispatch and one host round trip cover ``k`` steps."""
  step_fn = train_step_fn(exp, tx, schedule, max_targets)
  batch_sharding = batch_shardings(exp)
  content_sharding = jax.tree.map(lambda x: x.sharding, exp.content)
  if steps_per_call > 1:
    def steps_fn(state, batches, content):
      return jax.lax.scan(lambda s, b: step_fn(s, b, content), state, batches,
                          length=steps_per_call)
    stacked = batch_shardings(exp, leading=1)
    return jax.jit(steps_fn, in_shardings=(shardings, stacked, content_sharding),
                   out_shardings=(shardings, exp.spec.replicated), donate_argnums=(0,))
  return jax.jit(step_fn, in_shardings=(shardings, batch_sharding, content_sharding),
                 out_shardings=(shardings, exp.spec.replicated), donate_argnums=(0,))


def batch_shardings(exp: Experiment, *, leading: int = 0) -> dict[str, Any]:
  """The shardings of a training batch's arrays; ``leading=1``: of ``[k, batch, ...]`` stacks."""
  ndims = {'inputs': 2, 'targets': 2, 'users': 1}
  if exp.debias is not None and exp.debias.sequence_weights is not None:
    ndims['target_weights'] = 2
  if exp.config.retrieval.rag:
    ndims['context'] = 3
  return {k: partitioning.batch_sharding(exp.mesh, exp.rules, n + leading, leading=leading)
          for k, n in ndims.items()}


def train_step_fn(exp: Experiment, tx: optax.GradientTransformation, schedule, max_targets: int):
  """The un-jitted step ``(state, batch, content) -> (state, metrics)`` of one run: what
  :func:`make_train_step` jits, and ``replicas.train_replicas`` vmaps over stacked runs.

  An optional fourth argument, a scalar ``scale``, multiplies the optimizer's updates and the
  logged learning rate: the step of the same run with its peak learning rate times ``scale``. The
  schedule is linear in its peak rate and AdamW's update in the rate (optax.adamw multiplies by the
  rate after adding the weight-decay term; clipping acts on the gradients before), so this equals
  that run up to float rounding; ``replicas`` sweeps the rate this way without putting it in the
  train state. Without it the step is the single run's, unchanged.
  """
  loss_fn = make_loss_fn(exp.spec.cfg, exp.spec.graphdef, exp.config.loss, max_targets,
                         debias=exp.debias)
  ft = exp.config.text_finetune if exp.spec.cfg.text_encoder is not None else None
  if ft is not None:
    budget = text_finetune.step_budget(exp.config, exp.config.train.batch_size,
                                       exp.config.data.max_len, exp.spec.cfg.vocab_size)
    rows_sharding = text_finetune.batch_rows_sharding(exp.mesh, exp.rules, budget,
                                                      exp.content.text_tokens.shape[1])

  def objective(params, batch, content, rng, text_table):
    if text_table is None:
      return loss_fn(params, batch, content, rng)
    # Fine-tuned text encoder: the batch items' text rows come from the live encoder.
    encoder = nnx.merge(exp.spec.graphdef, params).text_encoder
    content, extra = text_finetune.with_fresh_rows(
        encoder, content, text_table, batch, jax.random.fold_in(rng, 2), budget=budget,
        freeze_layers=ft.freeze_layers, batch_sharding=rows_sharding)
    loss, aux = loss_fn(params, batch, content, rng)
    return loss, {**aux, **extra}

  # LoRA: the frozen base weights get no gradient (no weight-gradient matmuls, no gradient
  # buffers) and are carried over bit for bit (adding a zero update could flip the sign of a -0.0).
  lora = exp.spec.cfg.lora_rank > 0
  frozen = optimizer_lib.frozen_mask(exp.spec.abstract_params, lora=True) if lora else None

  def step_fn(state, batch, content, scale=None):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    inputs = state['params']
    if frozen is not None:
      inputs = jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen, inputs)
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
        inputs, batch, content, rng, state.get('text_table'))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    if scale is not None:
      updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    params = optax.apply_updates(state['params'], updates)
    if frozen is not None:
      params = jax.tree.map(lambda f, old, new: old if f else new, frozen, state['params'], params)
    learning_rate = schedule(state['step'])
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
               'learning_rate': learning_rate if scale is None else learning_rate * scale, **aux}
    new_state = dict(state, step=state['step'] + 1, params=params, opt_state=opt_state)
    if state_lib.EMA_PARAMS in state:
      new_state[state_lib.EMA_PARAMS] = state_lib.ema_update(
          state[state_lib.EMA_PARAMS], params, state['step'], exp.config.optimizer.ema_decay)
    return new_state, metrics

  return step_fn


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: workdir_lib.PathLike,
                       *, stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints), then evaluates the best checkpoint.

  Args:
    stop_after_steps: stop (with a checkpoint) once this global step is reached, as a preemption
      would; used to test exact resumption.
  Returns:
    the final metrics (also written to ``workdir/metrics.json``), or a dict with ``'stopped'`` when
    the run was interrupted.
  """
  workdir = workdir_lib.root(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  exp = build_experiment(config, workdir)
  config = exp.config  # validated and frozen
  is_main = jax.process_index() == 0
  recorded = state_lib.recorded_config(
      config, exp.spec.cfg, exp.debias.num_groups if exp.debias is not None else 0)
  config_base.check_resume(workdir, recorded)  # every process: each one would resume
  if is_main:
    config_base.save(recorded, workdir)
    write_catalog(exp)
  tc = config.train

  train_ds, steps_per_epoch, max_targets = _train_input(exp)
  total_steps = steps_per_epoch * tc.num_epochs
  if tc.max_steps > 0:
    total_steps = min(total_steps, tc.max_steps)
  eval_every = tc.eval_every or steps_per_epoch
  memory.check(run_memory(exp, max_targets))

  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, total_steps,
                                              config.get('text_finetune'),
                                              lora=exp.spec.cfg.lora_rank > 0)
  abstract, shardings = state_lib.state_shardings(
      exp.spec, tx, ema=config.optimizer.get('ema_decay', 0.0) > 0)
  hooks = hooks_lib.training_hooks(exp, shardings, steps_per_epoch)
  data_iter = iter(train_ds.to_iter_dataset())
  ckpt = workdir_lib.checkpoints(workdir, max_to_keep=tc.keep_checkpoints,
                                 async_save=tc.async_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, abstract_with_shardings(abstract, shardings), data_iter)
    progress = ckpt.progress(start)
    logging.info('resuming from step %d', start)
    for hook in hooks:
      if hook.checkpoint_item is not None:
        payload = ckpt.restore_extra(start, hook.checkpoint_item)
        if payload is not None:  # None: a checkpoint written before the hook kept one
          hook.restore(payload)
  else:
    state = state_lib.init_train_state(exp.spec, tx, config.seed, shardings,
                                       backbone=config.model.get('backbone', ''))
    for hook in hooks:
      state = hook.init_state(state)
    progress = new_progress()
    start = 0
  train_step = make_train_step(exp, tx, schedule, shardings, max_targets)
  per_call = tc.get('steps_per_call', 1)
  if per_call > 1 and hooks:
    raise ConfigError('train.steps_per_call', f'{per_call} steps per call cannot run with '
                      f'{", ".join(type(h).__name__ for h in hooks)}: it acts between steps; use 1')
  train_steps = (make_train_step(exp, tx, schedule, shardings, max_targets,
                                 steps_per_call=per_call) if per_call > 1 else None)
  boundaries = [n for n in (eval_every, tc.log_every, tc.checkpoint_every) if n]
  rank_fn = exp.rank_fn()
  valid_arrays = exp.eval_arrays('valid')
  monitor_arrays = exp.eval_arrays('test') if config.eval.get('monitor_test') else None
  logger = MetricLogger(workdir, enabled=is_main)
  logger.info(dict(event='start', step=start, total_steps=total_steps,
                   steps_per_epoch=steps_per_epoch, num_params=exp.spec.num_params(),
                   max_targets_per_batch=max_targets, devices=jax.device_count(),
                   processes=jax.process_count(), **exp.timings,
                   mesh=dict(exp.mesh.shape), **exp.dataset.summary()))

  stop = preemption.StopFlag()
  last_valid: tuple[int, dict] | None = None  # (step, metrics) of the latest validation
  warm: tuple[int, float, float] | None = None  # (step, time, eval seconds) after the first log
  pending: list[tuple[int, dict]] = []
  t_start = time.perf_counter()
  t_last, n_last = t_start, start
  # Training seconds count on from the checkpoint resumed (time lost after it is not counted).
  before = progress['elapsed_s']

  def elapsed() -> float:
    return before + time.perf_counter() - t_start

  eval_seconds = 0.0
  # A run that already stopped early stays stopped when `train` is run again on its workdir.
  stopped_reason = ('early_stopping' if tc.patience and progress['evals_since_best'] >= tc.patience
                    else None)
  step = start
  saved_step = start
  bar = logger.progress(total_steps, start) if tc.progress_bar else None
  try:
    with stop.installed():
      while step < total_steps and stopped_reason is None:
        n = _steps_this_call(step, per_call, boundaries, total_steps, stop_after_steps)
        if n > 1:  # n steps in one call; no log, evaluation or save falls inside them
          batches = [next(data_iter) for _ in range(n)]
          batch = exp.put({k: np.stack([b[k] for b in batches]) for k in batches[0]}, stacked=True)
          state, metrics = train_steps(state, batch, exp.content)
        else:
          batch = next(data_iter)
          if hooks:
            content = hooks_lib.content_of(hooks, state, exp.content)
            for hook in hooks:
              batch = hook.train_batch(step, state, batch, content)
          batch = exp.put(batch)
          state, metrics = train_step(state, batch, exp.content)
        step += n
        pending.append((step, metrics, n))
        if len(pending) > tc.max_inflight_steps:
          # Bound the dispatch queue: wait for an older step, never the one just dispatched. Deep
          # queues of multi-device steps can deadlock XLA:CPU collectives.
          jax.block_until_ready(pending[-tc.max_inflight_steps - 1][1]['loss'])
        if bar is not None:
          bar.update(n)
        is_eval, signalled, periodic_save, flush = step_events(step, tc, eval_every, total_steps,
                                                                stop, stop_after_steps)
        # Every path below that saves a checkpoint passes through this flush first: it fetches the
        # pending step metrics and raises on a non-finite one, so a diverged state is never saved.
        if flush:
          now = time.perf_counter()
          _flush(pending, logger, step - n_last, now - t_last, tc.batch_size)
          t_last, n_last = now, step
          if warm is None:  # after the first interval (compilation): steady-state throughput
            warm = (step, now, eval_seconds)
        if is_eval:
          t_eval = time.perf_counter()
          for hook in hooks:
            state = hook.refresh_state(step, state)
          eval_content = hooks_lib.content_of(hooks, state, exp.content)
          for hook in hooks:
            hook.before_eval(step, state_lib.eval_params(state), eval_content)
          ranks_metrics, monitored = validate(
              exp, rank_fn, state_lib.eval_params(state), hooks_lib.eval_arrays(hooks, valid_arrays),
              None if monitor_arrays is None else hooks_lib.eval_arrays(hooks, monitor_arrays),
              eval_content,
              step=step, progress=progress, logger=logger)
          progress['elapsed_s'] = elapsed()
          ckpt.save(step, state, data_iter, {'valid_ndcg@10': ranks_metrics['ndcg@10'], **progress},
                    extras=hooks_lib.snapshots(hooks))
          saved_step = step
          t_last = time.perf_counter()  # evaluation time is not training throughput
          eval_seconds += t_last - t_eval
          last_valid = (step, ranks_metrics)
          logger.info(eval_event(step, steps_per_epoch, elapsed(), t_last - t_eval,
                                 ranks_metrics, monitored))
          if tc.patience and progress['evals_since_best'] >= tc.patience:
            stopped_reason = 'early_stopping'
            break
        elif periodic_save:
          progress['elapsed_s'] = elapsed()
          ckpt.save(step, state, data_iter, {**progress}, extras=hooks_lib.snapshots(hooks))
          saved_step = step
        if signalled or step == stop_after_steps:
          if saved_step != step:
            progress['elapsed_s'] = elapsed()
            ckpt.save(step, state, data_iter, {**progress}, extras=hooks_lib.snapshots(hooks))
          stopped_reason = f'signal {signalled}' if signalled else 'stop_after_steps'
          break
  finally:
    if bar is not None:
      bar.close()
    ckpt.wait()
  if stopped_reason and stopped_reason != 'early_stopping':
    logger.info(dict(event='stopped', step=step, reason=stopped_reason))
    logger.close()
    ckpt.close()
    return {'stopped': stopped_reason, 'step': step}

  logger.info(train_done_event(step, start, stopped_reason or 'max_steps', progress, warm,
                                t_start, time.perf_counter(), eval_seconds, tc.batch_size))
  best = ckpt.best_step()
  if best is not None and best != step:
    state = ckpt.restore(best, abstract_with_shardings(abstract, shardings))
  for hook in hooks:
    exp.content = hook.final_content(best or step, state, exp.content)
  known = {'valid': last_valid[1]} if last_valid and last_valid[0] == (best or step) else {}
  results = _final_metrics(exp, rank_fn, state_lib.eval_params(state), step=best or step,
                           known=known, hooks=hooks)
  logger.close()
  ckpt.close()
  return results


def _train_input(exp: Experiment) -> tuple[Any, int, int]:
  """This process's training ``MapDataset``, the steps per epoch and the per-batch target budget.

  From records the windows are cut on the fly from this process's shards
  (``prepare.source.train_dataset``): an epoch is ``(W // P) // (B / P)`` steps of the ``W``
  windows, the budget is computed from every user's length (the same on every process).
  """
  config, tc = exp.config, exp.config.train
  if exp.records is not None:
    count = int(records_source.window_counts(exp.records.lengths, config.data.max_len,
                                             all_windows=config.data.all_windows).sum())
    local = tc.batch_size // jax.process_count()
    steps_per_epoch = (count // jax.process_count()) // local
    max_targets = config.loss.max_targets_per_batch or records.auto_max_targets(
        exp.records.lengths, config.data.max_len, tc.batch_size,
        all_windows=config.data.all_windows)
    train_ds = records_source.train_dataset(
        exp.records, max_len=config.data.max_len, global_batch_size=tc.batch_size,
        seed=config.seed, num_epochs=tc.num_epochs, all_windows=config.data.all_windows,
        process_index=jax.process_index(), process_count=jax.process_count())
  else:
    windows, users = pipeline.make_windows(exp.split.train, config.data.max_len,
                                           all_windows=config.data.all_windows)
    count, steps_per_epoch = len(windows), len(windows) // tc.batch_size
    max_targets = config.loss.max_targets_per_batch or auto_max_targets(windows, tc.batch_size)
    weights = None
    if exp.debias is not None and exp.debias.sequence_weights is not None:  # windowed propensities
      weights = pipeline.window_weights(exp.debias.sequence_weights, config.data.max_len,
                                        all_windows=config.data.all_windows)
    train_ds = pipeline.train_dataset(windows, users, global_batch_size=tc.batch_size,
                                      seed=config.seed, num_epochs=tc.num_epochs,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(), weights=weights)
  if steps_per_epoch == 0:
    raise ConfigError('train.batch_size', f'{tc.batch_size} exceeds the {count} training '
                      'windows of this dataset')
  return train_ds, steps_per_epoch, max_targets


def step_events(step: int, tc, eval_every: int, total_steps: int, stop: preemption.StopFlag,
                stop_after_steps: int | None) -> tuple[bool, Any, bool, bool]:
  """What the loop does after ``step``: (evaluate, the agreed stop signal or None, periodic save,
  flush the pending metrics), the rule ``train_and_evaluate`` and the replicas loop share."""
  is_eval = step % eval_every == 0 or step == total_steps
  signalled = stop.agreed(step, tc.log_every)
  periodic_save = bool(tc.checkpoint_every) and step % tc.checkpoint_every == 0
  flush = (step % tc.log_every == 0 or is_eval or bool(signalled) or periodic_save
           or step == stop_after_steps)
  return is_eval, signalled, periodic_save, flush


def validate(exp: Experiment, rank_fn, params, valid_arrays, monitor_arrays, content, *,
             step: int, progress: dict[str, Any], logger: MetricLogger
             ) -> tuple[dict[str, float], dict[str, float]]:
  """One validation of ``params`` (the rule both training loops share): metrics on
  ``valid_arrays``, the early-stopping record ``progress`` (best, best_step, evals_since_best)
  updated from its NDCG@10, and, logged only, the metrics on ``monitor_arrays`` (None = none).
  Returns (validation metrics, monitored metrics), both written as scalars at ``step``."""
  metrics, _, _ = exp.evaluate_arrays(rank_fn, params, valid_arrays, content=content)
  score = metrics['ndcg@10']
  if score > progress['best']:
    progress.update(best=score, best_step=step, evals_since_best=0)
  else:
    progress['evals_since_best'] += 1
  logger.scalars(step, {f'valid/{k}': v for k, v in metrics.items()})
  monitored = {}
  if monitor_arrays is not None:  # logged only: nothing reads it
    monitored, _, _ = exp.evaluate_arrays(rank_fn, params, monitor_arrays, content=content)
    logger.scalars(step, {f'monitor_test/{k}': v for k, v in monitored.items()})
  return metrics, monitored


def eval_event(step: int, steps_per_epoch: int, elapsed: float, eval_seconds: float,
               metrics: dict[str, float], monitored: dict[str, float]) -> dict[str, Any]:
  """The ``eval`` line of events.jsonl."""
  return dict(event='eval', step=step, epoch=step / steps_per_epoch, elapsed_s=elapsed,
              eval_s=eval_seconds, **{f'valid_{k}': v for k, v in metrics.items()},
              **{f'monitor_test_{k}': v for k, v in monitored.items()})


def train_done_event(end: int, start: int, reason: str, progress: dict[str, Any],
                     warm: tuple[int, float, float] | None, t_start: float, t_done: float,
                     eval_seconds: float, batch_size: int, **extra) -> dict[str, Any]:
  """The ``train_done`` line of events.jsonl: steps run this call (``start`` to ``end``), the
  rates over training time (evaluation excluded) and the steady rate after the first flush
  (``warm`` = (its step, its ``time.perf_counter()``, evaluation seconds by then))."""
  train_seconds = t_done - t_start - eval_seconds
  steady = None
  if warm is not None and end > warm[0]:
    steady = (end - warm[0]) * batch_size / max(t_done - warm[1] - (eval_seconds - warm[2]), 1e-9)
  return dict(event='train_done', step=end, reason=reason, best_step=progress['best_step'],
              best_valid_ndcg10=progress['best'], steps_run=end - start,
              train_seconds=train_seconds, eval_seconds=eval_seconds,
              examples_per_sec=(end - start) * batch_size / max(train_seconds, 1e-9),
              steady_examples_per_sec=steady, **extra)


def _steps_this_call(step: int, per_call: int, every: list[int], total: int,
                     stop_after: int | None) -> int:
  """``per_call`` when no log, evaluation, save or end step falls strictly before ``step +
  per_call``, else 1 (single steps up to that boundary): the loop acts at the same steps either way."""
  if per_call <= 1:
    return 1
  end = step + per_call
  if end > total or (stop_after is not None and step < stop_after < end):
    return 1
  if any((step // e + 1) * e < end for e in every):
    return 1
  return per_call


def _flush(pending: list, logger: MetricLogger, steps: int, seconds: float, batch_size: int):
  """Fetches pending step metrics (the only host sync of the loop) and checks they are finite.

  ``pending``: ``(last step, metrics, n)``; ``n > 1``: the metrics of ``n`` steps run in one call,
  stacked ``[n]``."""
  fetched = []
  for (last, _, n), m in zip(pending, jax.device_get([m for _, m, _ in pending])):
    fetched += [(last - n + 1 + i, {k: v[i] for k, v in m.items()} if n > 1 else m)
                for i in range(n)]
  for step, m in fetched:
    m = {k: float(v) for k, v in m.items()}
    if not all(math.isfinite(v) for v in m.values()):
      raise NonFiniteLossError(
          f'non-finite training metrics at step {step}: {m}. Stopping; checkpoints written before '
          'this step are intact (lower optimizer.learning_rate or check the data).')
    logger.step(step, m)
  fetched = [m for _, m in fetched]
  last = {k: float(v) for k, v in fetched[-1].items()}
  tokens = sum(float(m['num_targets']) for m in fetched)
  rate = {'examples_per_sec': steps * batch_size / max(seconds, 1e-9),
          'targets_per_sec': tokens / max(seconds, 1e-9)}
  logger.scalars(pending[-1][0], {**{f'train/{k}': v for k, v in last.items()},
                                  **{f'train/{k}': v for k, v in rate.items()}})
  if last.get('dropped_targets', 0) > 0:
    logging.warning('%d targets exceeded loss.max_targets_per_batch at step %d',
                    int(last['dropped_targets']), pending[-1][0])
  pending.clear()


def _final_metrics(exp: Experiment, rank_fn, params, *, step: int,
                   known: dict[str, dict] | None = None,
                   hooks: list[hooks_lib.LoopHook] | None = None,
                   of_refit: bool = False, record: bool = True) -> dict[str, Any]:
  """Metrics of ``params`` on valid and test (and cold test cases); ``known`` holds metrics already
  computed for these parameters (the validation of the best step), reused when nothing more than
  the ranking metrics is asked of that split and no hook changes what evaluation sees. ``hooks``:
  the training loop's, else (None) those evaluating a saved checkpoint needs. ``of_refit``: the
  parameters are the saved refit (``checkpoint='refit'``), which is kept and not refit again.
  ``record``: write the workdir's metrics, blend and refit (False: change nothing there)."""
  writes = record and jax.process_index() == 0  # what process 0 alone writes
  if hooks is None:
    hooks = hooks_lib.evaluation_hooks(exp)
  c = exp.config
  protocol = exp.split.protocol if exp.split is not None else 'leave_one_out'  # records
  results: dict[str, Any] = {'step': int(step), 'dataset': exp.dataset.name,
                             'protocol': protocol, 'exclude_seen': c.eval.exclude_seen}
  cold = exp.split is not None and len(exp.split.cold_items)
  cases = ('valid', 'test') + (('test_cold',) if cold else ())
  for hook in hooks:
    hook.before_eval(step, params, exp.content)
  weights = tuple(float(w) for w in c.eval.get('transition_weights', ()))
  chosen = 0.0
  if weights:
    # The transition blend's weight, chosen on validation alone before test is ranked.
    arrays = hooks_lib.eval_arrays(hooks, exp.eval_arrays('valid'))
    by_weight = {w: exp.evaluate_arrays(exp.rank_fn(transition_weight=w, which='valid'), params,
                                        arrays, content=exp.content)[0]['ndcg@10']
                 for w in weights}
    chosen = max(weights, key=lambda w: (by_weight[w], -w))  # a tie keeps the smaller weight
    results['transition_blend'] = {'chosen_weight': chosen, 'by': 'valid_ndcg@10',
                                   'valid_ndcg@10': {str(w): v for w, v in by_weight.items()}}
    if chosen:  # each case's table is built when it is ranked (rank_fn below)
      known = None
  saved_blend = workdir_lib.path(exp.workdir, workdir_lib.TRANSITIONS)
  if not chosen and writes and saved_blend.exists():
    saved_blend.unlink()  # a blend saved by an earlier evaluation no longer applies
  reusable = (exp.beyond is None and not c.eval.save_rankings
              and not any(hook.changes_evaluation for hook in hooks))
  params_of = {w: params for w in cases}
  if not refit.refit_epochs(c) and not of_refit and writes:
    workdir_lib.remove_refit(exp.workdir)  # a refit of an earlier evaluation no longer applies
  for which in cases:
    if reusable and which in (known or {}):
      results[which] = known[which]
      continue
    if which != 'valid' and refit.refit_epochs(c) and not of_refit and 'refit' not in results:
      # Validation is ranked; test with the model refit on what is known at test (train/refit.py).
      refit_params, results['refit'] = refit.refit_known(exp, params, make_train_step)
      params_of.update({w: refit_params for w in cases if w != 'valid'})
      if record:  # saved for serving (its default, 'auto'); every process writes its shards
        workdir_lib.write_refit(exp.workdir, refit_params,
                                {**results['refit'], 'from_step': int(step)}
                                if jax.process_index() == 0 else None)
    t_eval = time.perf_counter()
    arrays = hooks_lib.eval_arrays(hooks, exp.eval_arrays(which))
    if not len(arrays.targets):
      continue
    fn = exp.rank_fn(transition_weight=chosen, which=which) if chosen else rank_fn
    m, ranks, tops = exp.evaluate_arrays(fn, params_of[which], arrays, content=exp.content)
    if chosen and which == 'valid' and exp.transition_source('valid') == 'valid':
      exp.release_transitions('valid')  # test's table counts more (transition_counts='known')
    results.setdefault('eval_seconds', {})[which] = time.perf_counter() - t_eval
    results[which] = m
    if exp.beyond is not None:
      flat, groups = beyond_accuracy.summarize(exp.beyond, tops, ranks, arrays.users[:len(ranks)],
                                               c.debias.beyond_ks)
      m.update(flat)
      results.setdefault('groups', {})[which] = groups
      results['ild_vectors'] = exp.beyond.vector_source
    if c.eval.save_rankings and writes:
      n = len(ranks)
      evaluation.write_rankings(workdir_lib.rankings(exp.workdir, which), arrays.users[:n],
                                arrays.targets[:n], ranks, tops, exp.dataset.users.raw_ids,
                                exp.dataset.items.raw_ids)
  if writes:
    if chosen:  # serving applies the chosen blend (``serving.Recommender``) with test's table: the
      # most that is known
      workdir_lib.write_transitions(exp.workdir, exp.transition_table('test'), chosen)
    workdir_lib.path(exp.workdir, workdir_lib.METRICS).write_text(json.dumps(results, indent=2))
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: workdir_lib.PathLike, *,
             checkpoint: str = 'best', save_rankings: bool | None = None,
             exclude_seen: bool | None = None, record: bool = True) -> dict[str, Any]:
  """Evaluates a checkpoint of ``workdir`` ('best', 'latest', 'refit', 'auto' or a step number)
  on valid and test. The refit (``eval.refit_epochs``) is ranked as saved, never refit again nor removed;
  its validation figures select nothing (it has trained on the validation targets). ``record``
  False leaves the workdir as it was (metrics.json, the saved blend and refit): a side
  evaluation, e.g. with seen items ranked."""
  workdir = workdir_lib.root(workdir)
  if save_rankings is not None or exclude_seen is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    if save_rankings is not None:
      config.eval.save_rankings = save_rankings
    if exclude_seen is not None:
      config.eval.exclude_seen = exclude_seen
  checkpoint = workdir_lib.resolve_checkpoint(workdir, checkpoint)
  exp = build_experiment(config, workdir)
  step, params = restore_params(exp, checkpoint)
  return _final_metrics(exp, exp.rank_fn(), params, step=step,
                        of_refit=str(checkpoint).strip().lower() == workdir_lib.REFIT,
                        record=record)
