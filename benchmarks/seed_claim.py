"""A declared multi-seed claim tested from result files: B beats A on a metric over the same seeds.

Each side is a list of result files (JSON, or JSON lines with one record per seed, or leaderboard
rows with their per-seed values); records are matched by their ``seed``. The claim holds when the mean of the per-seed differences B - A is
positive and larger than ``--se_factor`` standard errors of those differences (ddof=1), the
criterion the multi-seed claims of docs/causal_filter.md declare. Validation figures are reported
beside test, never used.

  python benchmarks/seed_claim.py --name=filter_vs_attention \
      --a=beauty_d128_fast.json,beauty_d128_seed1.json,beauty_d128_seed2.json \
      --b=beauty_d128_filter0.7_seed0.json,... [--metric=ndcg@10] [--out=FILE.json]

Relative paths are read from benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import provenance

RESULTS = pathlib.Path(__file__).resolve().parent / 'results'


def read_records(spec: str) -> dict[int, dict]:
  """seed -> record, from a comma-separated list of result files (JSON or JSON lines)."""
  out: dict[int, dict] = {}
  for name in [s for s in spec.split(',') if s]:
    path = pathlib.Path(name) if pathlib.Path(name).is_absolute() else RESULTS / name
    text = path.read_text()
    try:
      records = [json.loads(text)]
    except json.JSONDecodeError:
      records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for rec in [r for row in records for r in _per_seed(row)]:
      seeds = rec.get('seeds') or rec.get('provenance', {}).get('seeds') or []
      if 'seed' not in rec and len(seeds) == 1:  # single-run files that list their one seed
        rec = dict(rec, seed=seeds[0])
      if 'seed' not in rec:
        raise SystemExit(f'{path}: a record without a seed')
      if rec['seed'] in out:
        raise SystemExit(f'{path}: seed {rec["seed"]} given twice')
      out[rec['seed']] = dict(rec, source=path.name)
  return out


def _per_seed(rec: dict) -> list[dict]:
  """A leaderboard row (benchmarks/leaderboard.py) as one record per seed; others as they are."""
  if rec.get('benchmark') != 'leaderboard':
    return [rec]
  return [{'seed': seed,
           'test': {k[len('test_'):]: v['per_seed'][i] for k, v in rec.items()
                    if k.startswith('test_') and isinstance(v, dict) and 'per_seed' in v},
           'valid_ndcg@10': rec['valid_ndcg@10']['per_seed'][i]}
          for i, seed in enumerate(rec['seeds'])]


def test_claim(a: dict[int, dict], b: dict[int, dict], metric: str, se_factor: float) -> dict:
  seeds = sorted(set(a) & set(b))
  if len(seeds) < 2:
    raise SystemExit(f'need at least two seeds present on both sides, got {seeds}')
  ta = np.array([a[s]['test'][metric] for s in seeds], np.float64)
  tb = np.array([b[s]['test'][metric] for s in seeds], np.float64)
  diff = tb - ta
  se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
  mean = float(diff.mean())
  return {
      'seeds': seeds, 'metric': f'test {metric}', 'se_factor': se_factor,
      'a': {'per_seed': ta.round(4).tolist(), 'mean': round(float(ta.mean()), 5),
            'se': round(float(ta.std(ddof=1) / np.sqrt(len(ta))), 5),
            'valid_ndcg@10': [a[s].get('valid_ndcg@10') for s in seeds],
            'files': [a[s]['source'] for s in seeds]},
      'b': {'per_seed': tb.round(4).tolist(), 'mean': round(float(tb.mean()), 5),
            'se': round(float(tb.std(ddof=1) / np.sqrt(len(tb))), 5),
            'valid_ndcg@10': [b[s].get('valid_ndcg@10') for s in seeds],
            'files': [b[s]['source'] for s in seeds]},
      'diff_per_seed': diff.round(4).tolist(), 'diff_mean': round(mean, 5),
      'diff_se': round(se, 5), 'holds': bool(mean > 0 and mean > se_factor * se),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--name', required=True, help='what the claim is, e.g. filter_vs_attention')
  p.add_argument('--a', required=True, help='result files of the baseline, one seed each')
  p.add_argument('--b', required=True, help='result files of the variant claimed to be better')
  p.add_argument('--metric', default='ndcg@10')
  p.add_argument('--se_factor', type=float, default=2.0)
  p.add_argument('--out', default=None)
  args = p.parse_args()
  record = provenance.start()
  result = {'benchmark': 'seed_claim', 'name': args.name,
            **test_claim(read_records(args.a), read_records(args.b), args.metric, args.se_factor)}
  result['command'] = record['command']
  record['seeds'] = result['seeds']
  result['provenance'] = provenance.finish(record)
  line = json.dumps(result)
  print(line)
  if args.out:
    pathlib.Path(args.out).write_text(line + '\n')


if __name__ == '__main__':
  main()
