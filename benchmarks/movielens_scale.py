"""MovieLens-25M at full size on one machine: load -> split -> train N steps -> full-ranking evaluation.

  python benchmarks/movielens_scale.py                       # 1M, 5M and 25M interactions
  python benchmarks/movielens_scale.py --sizes 1000000 --steps 20   # a quick look

For each size a seeded release in the GroupLens CSV layout (``ratings.csv`` sorted by userId then
movieId, ``movies.csv`` with quoted titles and ``|``-separated genres) is written to a temp folder,
shaped like MovieLens-25M: 162,541 users per 25M ratings (users scale with the size), at least 20
ratings each, median about 70, a heavy tail to ~26,000; the full 59,047-movie catalog with GroupLens'
sparse movie ids (up to 209,171) at every size, so evaluation cost grows with users only. Ratings are
half stars, item popularity Zipf-like, no user rates a movie twice.

Each size then runs, in fresh processes (so each peak RSS is its own):
  * ``load``: ``readers.load_dataset('ml-csv:DIR')`` + the leave-one-out split alone (time, peak RSS);
  * ``run``: ``trainer.train_and_evaluate`` with ``configs/ml100k.py`` (the small preset, max_len 200,
    every window) on ``ml-csv:DIR`` for ``--steps`` steps, then the full-ranking evaluation of every
    user on valid and test (seen items excluded).
Results: one JSON (``benchmarks/results/movielens_scale.json``) with every size's load seconds, peak
RSS, training sequences/s (after the first logging interval, which compiles), evaluation users/s, the
provenance (command, commit, machine, load average). ``docs/scale.md`` is generated from it by
``benchmarks/movielens_scale_report.py``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import provenance  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
ML25M = dict(interactions=25_000_095, users=162_541, items=59_047, max_movie_id=209_171)
GENRES = ('Action', 'Adventure', 'Animation', 'Children', 'Comedy', 'Crime', 'Documentary', 'Drama',
          'Fantasy', 'Film-Noir', 'Horror', 'IMAX', 'Musical', 'Mystery', 'Romance', 'Sci-Fi',
          'Thriller', 'War', 'Western')


def write_release(out: pathlib.Path, interactions: int, seed: int = 0) -> dict:
  """Writes ``ratings.csv`` + ``movies.csv`` shaped like MovieLens-25M with ~``interactions`` rows."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.csv as pa_csv  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out.mkdir(parents=True, exist_ok=True)
  n_users = max(100, round(ML25M['users'] * interactions / ML25M['interactions']))
  n_items = ML25M['items']
  # 20 + lognormal(median 50, sigma 1.4): median ~70, mean ~154 (25M / 162,541), tail ~26,000.
  counts = 20 + np.minimum(np.exp(rng.normal(np.log(50.0), 1.4, n_users)), 26_000).astype(np.int64)
  counts = np.maximum(20, np.round(counts * interactions / counts.sum())).astype(np.int64)
  # Distinct movies per user: Zipf-like popularity via rejection of repeats, drawn in one pass
  # (oversampled twofold, repeats dropped, each user cut to their count).
  pop = 1.0 / (np.arange(n_items) + 20.0) ** 0.9
  cdf = np.cumsum(pop / pop.sum())
  draws = np.minimum(2 * counts + 8, 2 * n_items)
  user = np.repeat(np.arange(n_users, dtype=np.int64), draws)
  item = np.minimum(np.searchsorted(cdf, rng.random(len(user))), n_items - 1)
  # A quarter of the draws uniform over the catalog, so heavy users reach their counts.
  uniform = rng.random(len(user)) < 0.25
  item[uniform] = rng.integers(0, n_items, int(uniform.sum()))
  key = np.unique(user * n_items + item)  # sorted by (user, item), repeats gone
  user, item = key // n_items, key % n_items
  # Keep a random subset of each user's distinct draws, at most their count.
  rank = np.empty(len(user), np.int64)
  order = np.lexsort((rng.random(len(user)), user))
  starts = np.searchsorted(user[order], np.arange(n_users))
  rank[order] = np.arange(len(user)) - np.repeat(starts, np.bincount(user, minlength=n_users))
  keep = rank < counts[user]
  user, item = user[keep], item[keep]
  movie_ids = np.sort(rng.choice(np.arange(1, ML25M['max_movie_id'] + 1), n_items, replace=False))
  # Timestamps: each user rates over their own span, in a random order of their movies.
  first = rng.integers(789_652_009, 1_574_327_703, n_users)
  ts = first[user] + rng.integers(0, 86_400 * 30, len(user))
  rating = rng.integers(1, 11, len(user)) / 2.0
  plain = pa_csv.WriteOptions(quoting_header='none', batch_size=1 << 16)  # GroupLens: bare header
  pa_csv.write_csv(pa.table({'userId': user + 1, 'movieId': movie_ids[item], 'rating': rating,
                             'timestamp': ts}), out / 'ratings.csv', plain)
  years = rng.integers(1902, 2020, n_items)
  titles = [f'Movie {m}, The ({y})' for m, y in zip(movie_ids.tolist(), years.tolist())]
  genres = ['|'.join(sorted(set(rng.choice(GENRES, rng.integers(1, 4))))) for _ in range(n_items)]
  pa_csv.write_csv(pa.table({'movieId': movie_ids, 'title': titles, 'genres': genres}),
                   out / 'movies.csv', plain)
  per_user = np.bincount(user, minlength=n_users)
  return {'interactions': int(len(user)), 'users': int(n_users),
          'items_rated': int(len(np.unique(item))), 'catalog': n_items,
          'ratings_per_user': {'min': int(per_user.min()), 'median': float(np.median(per_user)),
                               'max': int(per_user.max())},
          'ratings_csv_mb': round((out / 'ratings.csv').stat().st_size / 2**20, 1)}


def _peak_rss_gb() -> float:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def child_load(data: str) -> dict:
  """Load + leave-one-out split only (a fresh process: its peak RSS is the loader's)."""
  from llm4rec_jax.data import readers, splits  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  ds = readers.load_dataset(f'ml-csv:{data}')
  t1 = time.perf_counter()
  split = splits.leave_one_out(ds)
  t2 = time.perf_counter()
  return {'load_s': round(t1 - t0, 2), 'split_s': round(t2 - t1, 2), 'peak_rss_gb': _peak_rss_gb(),
          'users': ds.num_users, 'items': ds.num_items, 'interactions': ds.num_interactions,
          'test_cases': len(split.test), 'longest_history': int(np.diff(split.test.offsets).max())}


def run_config(data: str, steps: int, overrides: list[str]):
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  import common  # pylint: disable=import-outside-toplevel
  config = common.load_config('ml100k')
  config.data.name = f'ml-csv:{data}'
  config.train.max_steps = steps
  config.train.eval_every = steps
  config.train.log_every = max(1, steps // 4)
  config.train.patience = 0
  config.train.progress_bar = False
  config.train.keep_checkpoints = 1
  common.apply_overrides(config, overrides)
  return config


def child_run(data: str, steps: int, overrides: list[str]) -> dict:
  """The whole job through ``train_and_evaluate`` (a fresh process for its own peak RSS)."""
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = run_config(data, steps, overrides)
  workdir = pathlib.Path(tempfile.mkdtemp(prefix='ml_scale_'))
  t0 = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - t0
  events = workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.EVENTS))
  start = next(e for e in events if e['event'] == 'start')
  done = next(e for e in events if e['event'] == 'train_done')
  valid_eval = [e for e in events if e['event'] == 'eval'][-1]
  shutil.rmtree(workdir, ignore_errors=True)
  test_s = results['eval_seconds']['test']
  return {
      'wall_s': round(wall, 1), 'load_s': round(start['load_seconds'], 2),
      'split_s': round(start['split_seconds'], 2), 'steps': done['steps_run'],
      'train_seconds': round(done['train_seconds'], 1),
      # After the first logging interval (which holds the compilation).
      'train_sequences_per_s': round(done['steady_examples_per_sec'] or 0.0, 1),
      'train_sequences_per_s_incl_compile': round(done['examples_per_sec'], 1),
      'valid_eval_s': round(valid_eval['eval_s'], 1),
      'test_eval_s': round(test_s, 1),
      'eval_users_per_s': round(results['test']['num_cases'] / test_s, 1),
      'eval_users': results['test']['num_cases'], 'catalog': start['items'],
      'valid': {k: round(results['valid'][k], 5) for k in ('ndcg@10', 'hr@10')},
      'test': {k: round(results['test'][k], 5) for k in ('ndcg@10', 'hr@10')},
      'num_params': start['num_params'], 'peak_rss_gb': _peak_rss_gb(),
      'config': {'model': dict(config.model), 'data.max_len': config.data.max_len,
                 'data.all_windows': config.data.all_windows,
                 'train.batch_size': config.train.batch_size,
                 'eval.batch_size': config.eval.batch_size},
  }


def _child(mode: str, data: pathlib.Path, args) -> dict:
  cmd = [sys.executable, __file__, '--child', mode, '--data', str(data), '--steps', str(args.steps)]
  for s in args.set:
    cmd += ['--set', s]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    return {'error': f'exit {proc.returncode}', 'stderr_tail': proc.stderr[-800:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--sizes', default='1000000,5000000,25000000')
  p.add_argument('--steps', type=int, default=100, help='training steps per size')
  p.add_argument('--seed', type=int, default=0, help='seed of the generated release')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'movielens_scale.json'))
  p.add_argument('--child', choices=('load', 'run'), help=argparse.SUPPRESS)
  p.add_argument('--data', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    fn = child_load(args.data) if args.child == 'load' else child_run(args.data, args.steps,
                                                                     args.set)
    print(json.dumps(fn))
    return
  record = provenance.start()
  record.update(benchmark='movielens_scale', seeds=[args.seed], steps=args.steps, sizes=[])
  with tempfile.TemporaryDirectory(prefix='ml25m_') as tmp:
    for size in [int(s) for s in args.sizes.split(',')]:
      data = pathlib.Path(tmp) / f'ml-{size}'
      t0 = time.perf_counter()
      release = write_release(data, size, seed=args.seed)
      entry = {'target_interactions': size, 'release': release,
               'generate_s': round(time.perf_counter() - t0, 1)}
      entry['load_only'] = _child('load', data, args)
      entry['run'] = _child('run', data, args)
      record['sizes'].append(entry)
      print(json.dumps(entry), flush=True)
      shutil.rmtree(data, ignore_errors=True)
  provenance.finish(record)
  pathlib.Path(args.out).write_text(json.dumps(record, indent=1) + '\n')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
