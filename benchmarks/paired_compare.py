"""Paired comparison of two runs on the same evaluation users, from their saved rankings.

Each run is a workdir whose evaluation wrote ``rankings_{split}.jsonl`` (``eval.save_rankings=True``
when training, or ``llm4rec evaluate --save_rankings``). Per user, NDCG@k and HR@k of run B minus
run A; the standard error of that mean difference is the paired one (users are the same, so it is
far smaller than the two runs' own errors combined).

  python benchmarks/paired_compare.py --a=WORKDIR_A --b=WORKDIR_B [--split=test] [--out=F.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

import provenance
from llm4rec_jax import workdir as workdir_lib


def load_ranks(workdir: str, split: str) -> dict[str, int]:
  """user id -> rank of the held-out item (0 = first), from WORKDIR/rankings_{split}.jsonl."""
  path = workdir_lib.rankings(workdir, split)
  if not path.exists():
    raise SystemExit(f'{path}: no saved rankings; evaluate with --save_rankings (or train with '
                     'eval.save_rankings=True)')
  out = {}
  with path.open() as f:
    for n, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        out[row['user']] = int(row['rank'])
      except (ValueError, KeyError) as e:
        raise SystemExit(f'{path}:{n}: not a rankings line ({e})') from e
  return out


def per_user(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
  """Per-user metrics as llm4rec_jax.metrics defines them (0-based ranks, ties against)."""
  hit = ranks < k
  return {f'ndcg@{k}': np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0), f'hr@{k}': hit * 1.0}


def compare(a: dict[str, int], b: dict[str, int], ks=(10, 20)) -> dict:
  if set(a) != set(b):
    raise SystemExit(f'the runs rank different users ({len(set(a) ^ set(b))} differ)')
  users = sorted(a)
  ra = np.array([a[u] for u in users], float)
  rb = np.array([b[u] for u in users], float)
  out = {'users': len(users)}
  for k in ks:
    ma, mb = per_user(ra, k), per_user(rb, k)
    for name in ma:
      d = mb[name] - ma[name]
      out[name] = {'a': round(float(ma[name].mean()), 5), 'b': round(float(mb[name].mean()), 5),
                   'b_minus_a': round(float(d.mean()), 5),
                   'paired_se': round(float(d.std(ddof=1) / np.sqrt(len(d))), 5)}
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--a', required=True, help='workdir of the reference run')
  p.add_argument('--b', required=True, help='workdir of the candidate run')
  p.add_argument('--splits', default='valid,test')
  p.add_argument('--out', default='')
  args = p.parse_args()
  record = provenance.start()
  results = {s: compare(load_ranks(args.a, s), load_ranks(args.b, s))
             for s in args.splits.split(',')}
  record.update({'benchmark': 'paired_compare', 'a': args.a, 'b': args.b, 'results': results})
  for side in ('a', 'b'):
    cfg = workdir_lib.path(getattr(args, side), workdir_lib.CONFIG)
    if cfg.exists():
      record[f'config_{side}'] = json.loads(cfg.read_text())
  record['seeds'] = sorted({record[f'config_{side}'].get('seed', 0)
                            for side in ('a', 'b') if f'config_{side}' in record})
  provenance.finish(record)
  print(json.dumps(record['results']))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1, default=str) + '\n')


if __name__ == '__main__':
  main()
