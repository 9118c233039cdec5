"""``train_replicas(config, workdirs, seeds)``: several seeds of one config trained at once.

A recommender of about a million parameters is dispatch-bound on an accelerator, so R seeds in one
jitted call cost little more than one. The replicas share the experiment (data, split, item
content, mesh); each has what a separate run of its seed has: its own initialisation, shuffled
training iterator and dropout RNG. Their train states are stacked on a leading replica axis and
one jitted ``jax.vmap`` of the trainer's step (:func:`trainer.train_step_fn`) advances them all.

``learning_rates`` sweeps the peak learning rate as well: replica ``r`` is the run of
``optimizer.learning_rate = learning_rates[r]``. The rate is not in the train state (a replica's
checkpoints stay those of its separate run): the step takes each replica's
``learning_rates[r] / config.optimizer.learning_rate`` as a vmapped scale of its optimizer updates,
exact up to float rounding since the schedule and AdamW's update are linear in the peak rate.

Each replica writes into its own workdir what ``train_and_evaluate`` of its seed writes (config,
catalog, checkpoints with its data-iterator state and early-stopping progress, logs, metrics), so
``evaluate``, serving and a resumed run read it unchanged. Every replica is evaluated, checkpointed
and early-stopped on its own; a stopped replica keeps its workdir as its stop left it (the vmapped
step still carries its state; nothing reads it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from llm4rec_jax import config_base
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import records
from llm4rec_jax.errors import ConfigError, NonFiniteLossError
from llm4rec_jax.train import memory, optimizer as optimizer_lib, preemption
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import trainer
from llm4rec_jax.train.checkpointing import abstract_with_shardings, new_progress
from llm4rec_jax.train.experiment import Experiment, build_experiment, run_memory, write_catalog
from llm4rec_jax.train.logger import MetricLogger


def check_supported(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field of what replicas cannot train."""
  if jax.process_count() > 1:
    raise ConfigError('distributed', f'replicas run in one process; this run has '
                      f'{jax.process_count()} processes: train the seeds one by one')
  refused = {
      'train.steps_per_call': (config.train.get('steps_per_call', 1) > 1,
                               'must be 1 with replicas (the replicas are the batching)'),
      'retrieval.rag': (config.retrieval.get('rag', False),
                        'retrieved context is a loop hook, which replicas do not run'),
      'text_finetune.enabled': ((config.get('text_finetune') or {}).get('enabled', False),
                                'text fine-tuning is a loop hook, which replicas do not run'),
      'model.lora_rank': (config.model.get('lora_rank', 0) > 0,
                          'LoRA runs are not trained as replicas'),
      'model.backbone': (bool(config.model.get('backbone')),
                         'backbone runs are not trained as replicas'),
      'model.head': (config.model.get('head', 'softmax') == 'semantic_id',
                     "the semantic-ID codes depend on the seed, so replicas could not share "
                     "their content; use 'softmax' or train the seeds one by one"),
      'data.name': (records.is_records(config.data.name),
                    'prepared records are not supported with replicas yet (untested); use the '
                    'in-memory dataset or train the seeds one by one'),
  }
  for field, (bad, why) in refused.items():
    if bad:
      raise ConfigError(field, f'{config_value(config, field)!r}: {why}')


def config_value(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for key in field.split('.'):
    node = node.get(key) if node is not None else None
  return node


def train_replicas(config: ml_collections.ConfigDict, workdirs: Sequence[workdir_lib.PathLike],
                   seeds: Sequence[int], *, learning_rates: Sequence[float] | None = None,
                   stop_after_steps: int | None = None) -> list[dict[str, Any]]:
  """Trains ``config`` once per seed (``config.seed = seeds[i]`` into ``workdirs[i]``), all at once;
  resumes when every workdir holds checkpoints (see :func:`_resume`).

  Args:
    learning_rates: one peak rate per replica (``optimizer.learning_rate = learning_rates[i]``,
      recorded in its workdir's config); None: the config's for all. A seed may repeat with
      different rates; each (seed, rate) pair must be its own.
  Returns one result per replica: what ``train_and_evaluate`` of its seed (and rate) returns (the
  final metrics, or ``{'stopped', 'step'}`` for a replica still training when ``stop_after_steps``
  or a signal ended the run).
  """
  seeds = [int(s) for s in seeds]
  workdirs = [workdir_lib.root(w) for w in workdirs]
  if not seeds or len(seeds) != len(workdirs):
    raise ConfigError('seed', f'{len(seeds)} seeds for {len(workdirs)} workdirs: give one each')
  rates = check_learning_rates(seeds, learning_rates)
  if rates is None and len(set(seeds)) != len(seeds):
    raise ConfigError('seed', f'the seeds {seeds} repeat one: each replica needs its own')
  if len({str(w) for w in workdirs}) != len(workdirs):
    raise ConfigError('seed', f'the workdirs {[str(w) for w in workdirs]} repeat one')
  check_supported(config)
  for w in workdirs:
    w.mkdir(parents=True, exist_ok=True)
  tc = config.train
  ckpts = [workdir_lib.checkpoints(w, max_to_keep=tc.keep_checkpoints,
                                   async_save=tc.async_checkpoints) for w in workdirs]
  try:
    resume = _resume(ckpts, workdirs, seeds, rates, tc.patience)  # before anything is written
    return _setup_and_train(config, workdirs, seeds, rates, ckpts, resume, stop_after_steps)
  finally:
    for c in ckpts:
      c.close()


def check_learning_rates(seeds: Sequence[int], learning_rates: Sequence[float] | None
                         ) -> list[float] | None:
  """The replicas' peak rates as floats (None stays None); raises ConfigError naming
  ``optimizer.learning_rate`` for a count other than the seeds', a rate that is not positive, or a
  (seed, rate) pair given twice."""
  if learning_rates is None:
    return None
  rates = [float(r) for r in learning_rates]
  if len(rates) != len(seeds):
    raise ConfigError('optimizer.learning_rate', f'{len(rates)} learning rates for {len(seeds)} '
                      'seeds: give one each')
  bad = [r for r in rates if not r > 0 or r == float('inf')]
  if bad:
    raise ConfigError('optimizer.learning_rate', f'the learning rates {rates} include {bad[0]}: '
                      'each must be positive and finite')
  pairs = list(zip(seeds, rates))
  twice = [p for i, p in enumerate(pairs) if p in pairs[:i]]
  if twice:
    raise ConfigError('optimizer.learning_rate', f'seed {twice[0][0]} with learning rate '
                      f'{twice[0][1]} is given twice: each replica needs its own pair')
  return rates


def replica_name(seed: int, learning_rate: float | None = None) -> str:
  """A replica's workdir name and result key: ``seed_S``, or ``seed_S_lr_RATE`` in a rate sweep."""
  return f'seed_{seed}' if learning_rate is None else f'seed_{seed}_lr_{float(learning_rate)!r}'


def _setup_and_train(config, workdirs, seeds, rates, ckpts, resume, stop_after_steps):
  num = len(seeds)
  # The shared experiment keeps the config's rate: its optimizer is every replica's, scaled.
  base = build_experiment(_with_seed(config, seeds[0]), workdirs[0])
  rates = rates or [base.config.optimizer.learning_rate] * num
  # One view of the experiment per replica: its workdir, seed and rate, everything else shared.
  exps = [dataclasses.replace(base, workdir=w, config=ml_collections.FrozenConfigDict(
      _with_seed(config, s, lr))) for w, s, lr in zip(workdirs, seeds, rates)]
  recorded = [state_lib.recorded_config(e.config, e.spec.cfg,
                                        e.debias.num_groups if e.debias is not None else 0)
              for e in exps]
  for e, r in zip(exps, recorded):
    config_base.check_resume(e.workdir, r)  # every workdir before any is written
  for e, r in zip(exps, recorded):
    config_base.save(r, e.workdir)
    write_catalog(e)
  tc = base.config.train

  inputs = [trainer._train_input(e) for e in exps]  # pylint: disable=protected-access
  _, steps_per_epoch, max_targets = inputs[0]  # the same for every seed: only the order differs
  total_steps = steps_per_epoch * tc.num_epochs
  if tc.max_steps > 0:
    total_steps = min(total_steps, tc.max_steps)
  eval_every = tc.eval_every or steps_per_epoch
  terms = run_memory(base, max_targets)
  for key in ('training logits', 'parameters and optimizer state'):  # one per replica
    if key in terms:
      terms[key] = (terms[key][0] * num, terms[key][1])
  memory.check(terms)

  tx, schedule = optimizer_lib.make_optimizer(base.config.optimizer, total_steps,
                                              base.config.get('text_finetune'))
  abstract, shardings = state_lib.state_shardings(
      base.spec, tx, ema=base.config.optimizer.get('ema_decay', 0.0) > 0)
  stacked = stacked_shardings(shardings)
  data_iters = [iter(ds.to_iter_dataset()) for ds, _, _ in inputs]
  scales = np.asarray([r / base.config.optimizer.learning_rate for r in rates], np.float32)
  return _train(base, exps, seeds, ckpts, resume, data_iters, tx, schedule, scales, abstract,
                shardings, stacked, total_steps=total_steps, eval_every=eval_every,
                steps_per_epoch=steps_per_epoch, max_targets=max_targets,
                stop_after_steps=stop_after_steps)


def stacked_shardings(shardings: Any) -> Any:
  """The shardings of train states stacked on a leading replica axis (not sharded)."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings)


def stack_states(states: Sequence[Any], stacked: Any) -> Any:
  """One train state of ``[replicas, ...]`` arrays from the replicas' states."""
  return jax.jit(lambda ss: jax.tree.map(lambda *xs: jnp.stack(xs), *ss),
                 out_shardings=stacked)(list(states))


def make_replicas_step(exp: Experiment, tx: optax.GradientTransformation, schedule, stacked: Any,
                       max_targets: int):
  """The trainer's step (:func:`trainer.train_step_fn`) vmapped over stacked states, batches
  ``[replicas, batch, ...]`` and learning-rate scales ``[replicas]`` (each replica's peak rate over
  ``schedule``'s), with the item content shared; jitted and donated like ``make_train_step``'s:
  ``(state, batch, content, scales) -> (state, metrics)``. The metrics come back ``[replicas]``."""
  content_sharding = jax.tree.map(lambda x: x.sharding, exp.content)
  return jax.jit(
      jax.vmap(trainer.train_step_fn(exp, tx, schedule, max_targets), in_axes=(0, 0, None, 0)),
      in_shardings=(stacked, trainer.batch_shardings(exp, leading=1), content_sharding,
                    exp.spec.replicated),
      out_shardings=(stacked, exp.spec.replicated), donate_argnums=(0,))


def _with_seed(config: ml_collections.ConfigDict, seed: int, learning_rate: float | None = None
               ) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  out.seed = int(seed)
  if learning_rate is not None:
    out.optimizer.learning_rate = float(learning_rate)
  config_base.validate(out, jax.device_count())
  return out


def _resume(ckpts, workdirs, seeds, rates, patience: int
            ) -> tuple[int, list[int | None], list[bool]]:
  """(the step to go on from, each replica's latest checkpoint, which replicas already stopped
  early). Fresh workdirs all start at 0; otherwise each workdir must be of its seed (and rate, when
  ``rates`` are given), every replica still training at the same latest step, and a replica that
  stopped early at or before it."""
  latest = [c.latest_step() for c in ckpts]
  if all(s is None for s in latest):
    return 0, latest, [False] * len(ckpts)
  where = ', '.join(f'{w}: {"none" if s is None else f"step {s}"}'
                    for w, s in zip(workdirs, latest))
  if any(s is None for s in latest):
    raise ConfigError('seed', f'some replica workdirs hold checkpoints and some none ({where}): '
                      'resume with the workdirs of one replicas run, or use empty ones')
  for i, (w, seed) in enumerate(zip(workdirs, seeds)):
    if not workdir_lib.path(w, workdir_lib.CONFIG).exists():
      continue
    saved = config_base.load(w)
    if saved.seed != seed:
      raise ConfigError('seed', f'{w} holds the run of seed {saved.seed}, not {seed}')
    if rates is not None and saved.optimizer.learning_rate != rates[i]:
      raise ConfigError('optimizer.learning_rate', f'{w} holds the run of learning rate '
                        f'{saved.optimizer.learning_rate}, not {rates[i]}')
  stopped = [bool(patience) and c.progress(s)['evals_since_best'] >= patience
             for c, s in zip(ckpts, latest)]
  start = max(latest)
  if any(s != start for s, done in zip(latest, stopped) if not done):
    raise ConfigError('seed', f'the replica workdirs hold checkpoints of different steps '
                      f'({where}): they are not one replicas run stopped together')
  return start, latest, stopped


def _train(base, exps, seeds, ckpts, resume, data_iters, tx, schedule, scales, abstract, shardings,
           stacked, *,
           total_steps: int, eval_every: int, steps_per_epoch: int, max_targets: int,
           stop_after_steps: int | None) -> list[dict[str, Any]]:
  """The loop of ``train_and_evaluate`` over stacked replicas (no hooks, one step per call)."""
  tc, num = base.config.train, len(exps)
  workdirs = [e.workdir for e in exps]
  start, latest, stopped = resume
  target = abstract_with_shardings(abstract, shardings)
  if start:
    states = [c.restore(s, target, it) for c, s, it in zip(ckpts, latest, data_iters)]
    progress = [c.progress(s) for c, s in zip(ckpts, latest)]
    logging.info('resuming replicas from step %d', start)
  else:
    states = [state_lib.init_train_state(base.spec, tx, e.config.seed, shardings) for e in exps]
    progress = [new_progress() for _ in exps]
  # A replica's state where it stopped (its step and state), for its final evaluation.
  ended = {i: (latest[i], states[i]) for i in range(num) if stopped[i]}
  running = [not s for s in stopped]
  state = stack_states(states, stacked)
  del states
  take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s), out_shardings=shardings)
  train_step = make_replicas_step(base, tx, schedule, stacked, max_targets)
  scales = jax.device_put(scales, base.spec.replicated)  # once, not with every step

  rank_fn = base.rank_fn()
  valid_arrays = base.eval_arrays('valid')
  monitor_arrays = base.eval_arrays('test') if base.config.eval.get('monitor_test') else None
  loggers = [MetricLogger(w) for w in workdirs]
  for i, logger in enumerate(loggers):
    logger.info(dict(event='start', step=start, total_steps=total_steps,
                     steps_per_epoch=steps_per_epoch, num_params=base.spec.num_params(),
                     max_targets_per_batch=max_targets, devices=jax.device_count(),
                     processes=jax.process_count(), replica=i, replicas=num, seed=seeds[i],
                     learning_rate=exps[i].config.optimizer.learning_rate,
                     **base.timings, mesh=dict(base.mesh.shape), **base.dataset.summary()))

  stop = preemption.StopFlag()
  last_valid: list[tuple[int, dict] | None] = [None] * num
  warm: tuple[int, float, float] | None = None
  pending: list[tuple[int, Any]] = []
  t_start = time.perf_counter()
  t_last, n_last = t_start, start
  # Each replica's training seconds count on from the checkpoint resumed.
  before = [p['elapsed_s'] for p in progress]

  def elapsed(i: int) -> float:
    return before[i] + time.perf_counter() - t_start

  eval_seconds = 0.0
  interrupted = None
  step = saved_step = start
  bar = loggers[0].progress(total_steps, start) if tc.progress_bar else None
  try:
    with stop.installed():
      while step < total_steps and any(running):
        host = [next(it) for it in data_iters]
        batch = base.put({k: np.stack([b[k] for b in host]) for k in host[0]}, stacked=True)
        state, metrics = train_step(state, batch, base.content, scales)  # [replicas] each
        step += 1
        pending.append((step, metrics))
        if len(pending) > tc.max_inflight_steps:  # as train_and_evaluate bounds its queue
          jax.block_until_ready(pending[-tc.max_inflight_steps - 1][1]['loss'])
        if bar is not None:
          bar.update(1)
        is_eval, signalled, periodic_save, flush = trainer.step_events(
            step, tc, eval_every, total_steps, stop, stop_after_steps)
        if flush:
          now = time.perf_counter()
          _flush(pending, loggers, running, workdirs, step - n_last, now - t_last, tc.batch_size)
          t_last, n_last = now, step
          if warm is None:
            warm = (step, now, eval_seconds)
        active = [i for i in range(num) if running[i]]
        if is_eval:
          t_eval = time.perf_counter()
          for i in active:
            t_one = time.perf_counter()
            mine = take(state, i)
            ranks_metrics, monitored = trainer.validate(
                base, rank_fn, state_lib.eval_params(mine), valid_arrays, monitor_arrays,
                base.content, step=step, progress=progress[i], logger=loggers[i])
            progress[i]['elapsed_s'] = elapsed(i)
            ckpts[i].save(step, mine, data_iters[i],
                          {'valid_ndcg@10': ranks_metrics['ndcg@10'], **progress[i]})
            last_valid[i] = (step, ranks_metrics)
            t_done = time.perf_counter()
            loggers[i].info(trainer.eval_event(step, steps_per_epoch, elapsed(i),
                                               t_done - t_one, ranks_metrics, monitored))
            if tc.patience and progress[i]['evals_since_best'] >= tc.patience:
              running[i] = False  # frozen: later evaluations no longer touch its workdir
              ended[i] = (step, mine)
          saved_step = step
          t_last = time.perf_counter()
          eval_seconds += t_last - t_eval
        elif periodic_save:
          for i in active:
            progress[i]['elapsed_s'] = elapsed(i)
            ckpts[i].save(step, take(state, i), data_iters[i], {**progress[i]})
          saved_step = step
        if signalled or step == stop_after_steps:
          if saved_step != step:
            for i in active:
              progress[i]['elapsed_s'] = elapsed(i)
              ckpts[i].save(step, take(state, i), data_iters[i], {**progress[i]})
          interrupted = f'signal {signalled}' if signalled else 'stop_after_steps'
          break
  finally:
    if bar is not None:
      bar.close()
    for c in ckpts:
      c.wait()

  t_done = time.perf_counter()
  results = []
  for i, e in enumerate(exps):
    if interrupted and running[i]:
      loggers[i].info(dict(event='stopped', step=step, reason=interrupted))
      loggers[i].close()
      results.append({'stopped': interrupted, 'step': step})
      continue
    end, final = ended.get(i) or (step, None)
    loggers[i].info(trainer.train_done_event(
        end, min(start, end), 'early_stopping' if i in ended else 'max_steps', progress[i], warm,
        t_start, t_done, eval_seconds, tc.batch_size, replicas=num))
    best = ckpts[i].best_step()
    if best is not None and best != end:
      final = ckpts[i].restore(best, abstract_with_shardings(abstract, shardings))
    elif final is None:
      final = take(state, i)
    known = ({'valid': last_valid[i][1]} if last_valid[i] and last_valid[i][0] == (best or end)
             else {})
    results.append(trainer._final_metrics(  # pylint: disable=protected-access
        e, rank_fn, state_lib.eval_params(final), step=best or end, known=known, hooks=[]))
    loggers[i].close()
  return results


def _flush(pending: list, loggers: list[MetricLogger], running: list[bool], workdirs: list,
           steps: int, seconds: float, batch_size: int) -> None:
  """The trainer's flush per running replica: one fetch of the stacked metrics, then each
  replica's slice logged (and checked finite) into its own workdir."""
  fetched = jax.device_get([m for _, m in pending])
  for i, logger in enumerate(loggers):
    if not running[i]:
      continue
    mine = [(s, {k: v[i] for k, v in m.items()}, 1) for (s, _), m in zip(pending, fetched)]
    try:
      trainer._flush(mine, logger, steps, seconds, batch_size)  # pylint: disable=protected-access
    except NonFiniteLossError as e:
      raise NonFiniteLossError(f'replica {workdirs[i]}: {e}') from None
  pending.clear()
