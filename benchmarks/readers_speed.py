"""Reading a MovieLens-25M-shaped ``ratings.csv``: wall seconds and peak RSS of ``read_movielens_csv``.

  python benchmarks/readers_speed.py [--rows 25000000] [--seed 0]

Generates a seeded file in a temp dir (GroupLens header and layout: sorted by user, ratings 0.5-5.0
written like ``4.0``), then times, each in a fresh subprocess so peak RSS is its own: ``parse`` (the
ratings table alone, :func:`tables.read_table`) and ``read`` (the whole reader, ``from_raw`` included).
Appends one JSON line to ``benchmarks/results/readers_speed.json``.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _generate(root: pathlib.Path, rows: int, seed: int) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.csv as pacsv  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  movies = np.sort(rng.choice(209_171, 59_047, replace=False) + 1)  # ML-25M: 59k sparse ids
  stars = np.array([f'{k / 2:.1f}' for k in range(1, 11)])
  table = pa.table({'userId': np.sort(rng.integers(1, 162_542, rows)),
                    'movieId': movies[rng.integers(0, len(movies), rows)],
                    'rating': stars[rng.integers(0, 10, rows)],
                    'timestamp': rng.integers(789_652_009, 1_574_327_703, rows)})
  with open(root / 'ratings.csv', 'wb') as f:
    f.write(b'userId,movieId,rating,timestamp\n')
    pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style='none'))
  (root / 'movies.csv').write_text('movieId,title,genres\n' + ''.join(
      f'{m},"Movie {m}, The ({1900 + m % 120})",Drama|Comedy\n' for m in movies))


def _child(what: str, root: str) -> None:
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.data.readers import source, tables  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  if what == 'parse':
    with source.Source(root) as src:
      rows = len(tables.read_table(src, 'ratings.csv', ',', tables.RATING_COLUMNS, encoding='utf-8',
                                   skip_header=tables.not_int)[0])
  else:
    rows = readers.read_movielens_csv(root).num_interactions
  seconds = time.perf_counter() - start
  print(json.dumps({'rows': rows, 'seconds': round(seconds, 2),
                    'peak_rss_gb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}))


def _run(what: str, root: str) -> dict:
  out = subprocess.run([sys.executable, __file__, '--child', what, root], check=True,
                       capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rows', type=int, default=25_000_000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return _child(*args.child)
  load_start = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    _generate(pathlib.Path(tmp), args.rows, args.seed)
    parse, read = _run('parse', tmp), _run('read', tmp)
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), platform.processor())
  commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
  record = {'command': ' '.join(['python', 'benchmarks/readers_speed.py'] + sys.argv[1:]),
            'git_commit': commit, 'rows': args.rows, 'seconds': read['seconds'],
            'peak_rss_gb': read['peak_rss_gb'], 'parse_seconds': parse['seconds'],
            'parse_peak_rss_gb': parse['peak_rss_gb'],
            'machine': {'cpu': cpu, 'cores': os.cpu_count(), 'load_start': load_start,
                        'load_end': os.getloadavg()},
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  assert parse['rows'] == read['rows'] == args.rows, (parse, read)
  out = ROOT / 'benchmarks/results/readers_speed.json'
  with open(out, 'a') as f:
    f.write(json.dumps(record) + '\n')
  print(json.dumps(record))


if __name__ == '__main__':
  main()
