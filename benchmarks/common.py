"""Shared runner for the training benchmarks: train + evaluate one config, print one JSON line."""

from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None):
  """``configs/<name>.py`` -> ``get_config(arg)``."""
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  return config_base.from_file(ROOT / 'configs' / f'{name}.py', arg)


class _Parser(argparse.ArgumentParser):
  """Takes the CLI's ``--config.a.b=v`` overrides as well as ``--set a.b=v``."""

  def parse_known_args(self, args=None, namespace=None):
    args = sys.argv[1:] if args is None else list(args)
    return super().parse_known_args([_as_set(a) for a in args], namespace)


def _as_set(arg: str) -> str:
  if arg.startswith('--config.') and '=' in arg:
    return '--set=' + arg[len('--config.'):]
  return arg


def parser(description: str) -> argparse.ArgumentParser:
  p = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='a few steps of a tiny model: checks the benchmark runs, numbers meaningless')
  p.add_argument('--workdir', default=None, help='keep checkpoints/logs here (default: temp dir)')
  p.add_argument('--resume', action='store_true',
                 help='with --workdir: go on from the checkpoints a cut-short run left there '
                 '(same command; a changed setting is refused) instead of starting afresh; the '
                 "line's wall_s is this process's, time_to_best_epoch_s counts every run's "
                 'training seconds up to the checkpoint it resumed')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--seeds', default='',
                 help='comma-separated seeds trained at once in one process, as replicas '
                 '(llm4rec_jax.train.replicas; WORKDIR/seed_S each), one JSON line per seed; '
                 'benchmarks that print one line ignore it')
  p.add_argument('--learning_rates', default='',
                 help='with --seeds: comma-separated peak learning rates, one per seed (or one '
                 'seed for every rate), trained at once as replicas (WORKDIR/seed_S_lr_RATE each), '
                 'one JSON line per replica with its learning_rate')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override, e.g. --set model.dropout=0.5 or, as with the llm4rec '
                 'command, --config.model.dropout=0.5 (repeatable)')
  return p


def apply_overrides(config, overrides: list[str]) -> None:
  """``['model.dropout=0.5', ...]`` -> config fields, values parsed as Python literals."""
  import ast  # pylint: disable=import-outside-toplevel
  for item in overrides:
    key, _, value = item.partition('=')
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    config.update_from_flattened_dict({key: parsed})


def make_quick(config, max_cases: int = 500) -> None:
  """Shrinks a config to seconds: tiny model, 12 steps of at most 16 sequences, one evaluation of
  ``max_cases`` sampled cases (0 = every user, for benchmarks that score all users against known
  ground truth)."""
  config.model.update(dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64))
  # The steps' full softmax over every item was most of what was left (ML-100K: 61 s a run at 64
  # sequences a step, 38 s at 16, with another job on the cores).
  config.train.batch_size = min(config.train.batch_size, 16)
  config.train.max_steps = 12
  config.train.eval_every = 12
  config.train.log_every = 6
  config.train.progress_bar = False
  # Rank a seeded sample of the evaluation cases: full ranking of every user was most of a quick
  # run's time (tests/test_benchmarks.py runs every benchmark this way).
  config.eval.max_cases = max_cases


def read_events(workdir: pathlib.Path) -> list[dict[str, Any]]:
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  return workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.EVENTS))


def train_and_report(config, args, *, benchmark: str, extra=None,
                     valid_target: float | None = None) -> dict[str, Any]:
  """Runs train_and_evaluate in a fresh workdir and summarises events + metrics."""
  import provenance  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  record = provenance.start()
  config.seed = args.seed
  apply_overrides(config, args.set)
  workdir = _fresh_workdir(args)
  t0 = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  line = _summary(config, args, workdir, results, time.perf_counter() - t0, benchmark=benchmark,
                  extra=extra, valid_target=valid_target)
  line['provenance'] = provenance.finish(record)
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  return line


def train_and_report_seeds(config, args, *, benchmark: str, extra=None,
                           valid_target: float | None = None) -> list[dict[str, Any]]:
  """``--seeds``: the seeds trained at once as replicas (one process, one vmapped step), then one
  :func:`train_and_report` line per seed; ``wall_s`` is the whole replicas run's (all seeds).
  With ``--learning_rates`` replica ``i`` trains seed ``i`` (or the one seed) at rate ``i``; its
  line has ``learning_rate`` and its config that rate."""
  import copy  # pylint: disable=import-outside-toplevel
  import provenance  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import replicas  # pylint: disable=import-outside-toplevel
  record = provenance.start()
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  rates = [float(r) for r in getattr(args, 'learning_rates', '').split(',') if r.strip()] or None
  if rates and len(seeds) == 1:
    seeds = seeds * len(rates)  # one seed for every rate
  replicas.check_learning_rates(seeds, rates)  # before the workdir is touched
  apply_overrides(config, args.set)
  root = _fresh_workdir(args)
  per_replica = rates or [None] * len(seeds)
  workdirs = [root / replicas.replica_name(s, r) for s, r in zip(seeds, per_replica)]
  t0 = time.perf_counter()
  results = replicas.train_replicas(config, workdirs, seeds, learning_rates=rates)
  wall = time.perf_counter() - t0
  record = provenance.finish(record)
  lines = []
  for seed, rate, workdir, result in zip(seeds, per_replica, workdirs, results):
    args_one = argparse.Namespace(**{**vars(args), 'seed': seed})
    one = copy.deepcopy(config)  # the replica's own config, as its workdir records it
    one.seed = seed
    if rate is not None:
      one.optimizer.learning_rate = rate
    line = _summary(one, args_one, workdir, result, wall, benchmark=benchmark, extra=extra,
                    valid_target=valid_target)
    line['replicas'] = {'seeds': seeds, 'wall_s_all': round(wall, 1)}
    if rates is not None:
      line['learning_rate'] = rate
      line['replicas']['learning_rates'] = rates
    line['provenance'] = dict(record, seeds=[seed])
    lines.append(line)
  if not args.workdir:
    shutil.rmtree(root, ignore_errors=True)
  return lines


def print_report(config, args, *, benchmark: str, extra=None,
                 valid_target: float | None = None) -> None:
  """Prints :func:`train_and_report`'s line, or with ``--seeds`` one line per seed
  (:func:`train_and_report_seeds`)."""
  import json  # pylint: disable=import-outside-toplevel
  run = train_and_report_seeds if getattr(args, 'seeds', '') else train_and_report
  lines = run(config, args, benchmark=benchmark, extra=extra, valid_target=valid_target)
  for line in lines if isinstance(lines, list) else [lines]:
    print(json.dumps(line), flush=True)


def _fresh_workdir(args) -> pathlib.Path:
  """``--workdir`` emptied, or kept as it is with ``--resume``; else a new temporary folder."""
  if getattr(args, 'resume', False) and not args.workdir:
    raise SystemExit('--resume needs the --workdir of the run to go on with')
  workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp())
  if workdir.exists() and not getattr(args, 'resume', False):
    shutil.rmtree(workdir)
  return workdir


def _summary(config, args, workdir: pathlib.Path, results: dict[str, Any], wall: float, *,
             benchmark: str, extra, valid_target: float | None) -> dict[str, Any]:
  """One run's JSON line (without provenance) from its workdir's events and final metrics."""
  events = read_events(workdir)
  evals = [e for e in events if e['event'] == 'eval']
  done = [e for e in events if e['event'] == 'train_done'][-1]
  starts = [e for e in events if e['event'] == 'start']
  start = starts[0]
  best = max(evals, key=lambda e: e['valid_ndcg@10'])
  line = {
      'benchmark': benchmark, 'dataset': results['dataset'], 'protocol': results['protocol'],
      'full_ranking': True, 'exclude_seen': results['exclude_seen'], 'quick': args.quick,
      'seed': args.seed,
      'model': {k: config.model[k] for k in ('d_model', 'num_layers', 'num_heads', 'dropout')},
      'num_params': start['num_params'], 'max_len': config.data.max_len,
      'test': {k: round(results['test'][k], 4) for k in
               ('ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'mrr')},
      'valid_ndcg@10': round(best['valid_ndcg@10'], 4),
      'best_epoch': round(best['epoch'], 2), 'epochs_run': round(evals[-1]['epoch'], 2),
      'time_to_best_epoch_s': round(best['elapsed_s'], 1), 'wall_s': round(wall, 1),
      'train_examples_per_s': round(done['examples_per_sec'], 1),
      'train_tokens_per_s': round(done['examples_per_sec'] * config.data.max_len, 1),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'command': 'python ' + ' '.join([f'benchmarks/{pathlib.Path(sys.argv[0]).name}',
                                       *sys.argv[1:]]),
  }
  if any(e['step'] for e in starts):  # went on from checkpoints: the steps each run began at
    line['resumed_at_steps'] = [e['step'] for e in starts if e['step']]
  if valid_target is not None:
    reached = [e for e in evals if e['valid_ndcg@10'] >= valid_target]
    line[f'time_to_valid_ndcg@10>={valid_target}_s'] = (round(reached[0]['elapsed_s'], 1)
                                                        if reached else None)
    line[f'epoch_valid_ndcg@10>={valid_target}'] = round(reached[0]['epoch'], 2) if reached else None
  for key in ('transition_blend', 'refit'):  # what the final evaluation chose and did
    if key in results:
      line[key] = results[key]
  if extra:
    line.update(extra(workdir, results))
  line['config'] = config.to_dict()
  return line
