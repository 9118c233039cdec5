"""Multi-seed accuracy table: each (dataset, variant) trained on N seeds in fresh processes.

Prints one JSON line per dataset and variant: test NDCG@10 / HR@10 mean and standard error over
seeds, the per-seed values, best epoch, wall time to the best epoch and peak memory of each seed (the
per-seed lines come from the single-run benchmark runner, ``common.train_and_report``).

  python benchmarks/leaderboard.py --datasets beauty,lastfm --seeds 3 \
      [--variant NAME=KEY=VALUE,KEY=VALUE] [--set KEY=VALUE] [--replicas] [--out FILE.jsonl]

``--replicas`` trains a row's seeds at once in one process (``--seeds`` of the benchmark script).

``--from_runs`` aggregates per-seed result lines already written (JSON lines, one per seed, each with
``dataset`` and ``seed``) instead of training.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import provenance  # noqa: E402  pylint: disable=wrong-import-position

# dataset -> (benchmark script that trains it, the arguments it needs): Beauty runs the default
# (best) variant of configs/beauty.py (item attributes fused, claim K), and Yelp and LastFM its
# ids-only filter_prior on their own files, the configurations measured there (configs/yelp.py,
# claim J; configs/lastfm.py, claim H: LastFM's runs trained at another rate and longer).
BEST_BEAUTY = '--variant=fused'
BEST_IDS = '--variant=filter_prior'
LASTFM = ['--set=optimizer.learning_rate=0.002', '--set=train.num_epochs=200',
          '--set=train.patience=10']
SCRIPTS = {'beauty': ('beauty.py', [BEST_BEAUTY]),
           'yelp': ('beauty.py', [BEST_IDS, '--set=data.name=yelp']),
           'lastfm': ('beauty.py', [BEST_IDS, '--set=data.name=lastfm', *LASTFM]),
           'ml100k': ('ml100k.py', [])}
METRICS = ('ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'mrr')


def mean_se(values) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float('nan')
  return {'mean': round(float(v.mean()), 5), 'se': round(se, 5)}


def summarize(dataset: str, variant: str, runs: list[dict]) -> dict:
  """One table row from per-seed result lines."""
  runs = sorted(runs, key=lambda r: r['seed'])
  row = {'benchmark': 'leaderboard', 'dataset': dataset, 'variant': variant,
         'seeds': [r['seed'] for r in runs], 'protocol': runs[0].get('protocol'),
         'full_ranking': True, 'exclude_seen': runs[0].get('exclude_seen')}
  for m in METRICS:
    row[f'test_{m}'] = {**mean_se([r['test'][m] for r in runs]),
                        'per_seed': [r['test'][m] for r in runs]}
  row['valid_ndcg@10'] = {**mean_se([r['valid_ndcg@10'] for r in runs]),
                          'per_seed': [r['valid_ndcg@10'] for r in runs]}
  for k in ('best_epoch', 'time_to_best_epoch_s', 'wall_s', 'peak_rss_mb'):
    row[k] = [r.get(k) for r in runs]
  row['commands'] = [r.get('command') for r in runs]
  # Each seed's own record (commit, date, machine and load when its run started and ended).
  row['per_seed_provenance'] = [r.get('provenance') for r in runs]
  return row


def run_seed(dataset: str, seed: int, overrides: list[str], workdir: pathlib.Path) -> dict:
  if dataset not in SCRIPTS:
    raise SystemExit(f'--datasets: unknown dataset {dataset!r}; known: {", ".join(SCRIPTS)}')
  script, needed = SCRIPTS[dataset]
  cmd = [sys.executable, str(HERE / script), f'--workdir={workdir}', f'--seed={seed}',
         '--set=train.progress_bar=False', *needed, *[f'--set={s}' for s in overrides]]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  line = json.loads([l for l in out.stdout.splitlines() if l.strip()][-1])
  line['seed'] = seed
  return line


def run_seeds(dataset: str, seeds: list[int], overrides: list[str], workdir: pathlib.Path) -> list[dict]:
  """The seeds trained at once in one process (the script's ``--seeds``: replicas of one vmapped
  step, each equal to its separate run), one line per seed."""
  script, needed = SCRIPTS[dataset]
  cmd = [sys.executable, str(HERE / script), f'--workdir={workdir}',
         f'--seeds={",".join(map(str, seeds))}', '--set=train.progress_bar=False', *needed,
         *[f'--set={s}' for s in overrides]]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
  if [l['seed'] for l in lines] != seeds:
    raise RuntimeError(f'{" ".join(cmd)} printed seeds {[l["seed"] for l in lines]}, not {seeds}')
  return lines


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--datasets', default='beauty,yelp,lastfm')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--first_seed', type=int, default=0)
  p.add_argument('--variant', action='append', default=[],
                 help='NAME=KEY=VALUE,KEY=VALUE (repeatable); default: one variant "default"')
  p.add_argument('--set', action='append', default=[], help='override for every variant')
  p.add_argument('--from_runs', default='', help='aggregate these per-seed JSON lines instead')
  p.add_argument('--replicas', action='store_true',
                 help='train the seeds of a row at once in one process (replicas) instead of one '
                 'fresh process per seed')
  p.add_argument('--workdir', default='', help='keep the per-seed workdirs here')
  p.add_argument('--label', default='', help='what the rows\' configuration is, for tables')
  p.add_argument('--out', default='')
  args = p.parse_args()
  record = provenance.start()
  rows = []
  if args.from_runs:
    runs = [json.loads(l) for l in pathlib.Path(args.from_runs).read_text().splitlines() if l]
    for ds in dict.fromkeys(r['dataset'] for r in runs):
      rows.append(summarize(ds, 'from_runs', [r for r in runs if r['dataset'] == ds]))
  else:
    variants = {'default': []}
    if args.variant:
      variants = {}
      for v in args.variant:
        name, _, sets = v.partition('=')
        variants[name] = [s for s in sets.split(',') if s]
    root = pathlib.Path(args.workdir or tempfile.mkdtemp())
    for ds in args.datasets.split(','):
      for name, sets in variants.items():
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        if ds not in SCRIPTS:
          raise SystemExit(f'--datasets: unknown dataset {ds!r}; known: {", ".join(SCRIPTS)}')
        if args.replicas:
          runs = run_seeds(ds, seeds, args.set + sets, root / f'{ds}_{name}')
        else:
          runs = [run_seed(ds, s, args.set + sets, root / f'{ds}_{name}_s{s}') for s in seeds]
        rows.append(summarize(ds, name, runs))
  record['seeds'] = sorted({s for row in rows for s in row['seeds']})
  provenance.finish(record)
  lines = [json.dumps({**row, **({'label': args.label} if args.label else {}),
                       'provenance': record}) for row in rows]
  print('\n'.join(lines))
  if args.out:
    pathlib.Path(args.out).write_text('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
