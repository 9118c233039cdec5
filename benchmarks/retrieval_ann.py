"""ScaNN index vs the exact jitted top-k on synthetic embeddings, side by side in one run.

Prints one JSON line: recall@10 of the index against the exact path, queries per second of both
(batched, after compilation / warm-up), the speed-up, build time and index size.

The embeddings are a mixture of Gaussian clusters with varying norms (the shape trained item
embeddings have: items group by taste, popular items have larger norms); queries come from the same
mixture. ``--distribution=iid`` uses i.i.d. Gaussian vectors instead (the hardest case for any
partitioned index: no structure to exploit).

  python benchmarks/retrieval_ann.py                 # 1,000,000 x 64
  python benchmarks/retrieval_ann.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def embeddings(n: int, dim: int, num_queries: int, distribution: str, seed: int):
  rng = np.random.default_rng(seed)
  if distribution == 'iid':
    return (rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(num_queries, dim)).astype(np.float32))
  num_clusters = max(16, n // 1000)
  centers = rng.normal(size=(num_clusters, dim)).astype(np.float32)

  def draw(m):
    c = rng.integers(0, num_clusters, size=m)
    x = centers[c] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
    x *= rng.lognormal(0.0, 0.25, size=(m, 1)).astype(np.float32)
    return x.astype(np.float32)

  return draw(n), draw(num_queries)


def rss_mb() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return 0.0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='20,000 items: checks the script runs')
  p.add_argument('--num_items', type=int, default=1_000_000)
  p.add_argument('--dim', type=int, default=64)
  p.add_argument('--num_queries', type=int, default=5000)
  p.add_argument('--k', type=int, default=10)
  p.add_argument('--distribution', choices=('clustered', 'iid'), default='clustered')
  p.add_argument('--leaves_to_search', type=int, default=0, help='0 = default_params')
  p.add_argument('--reorder', type=int, default=0, help='0 = default_params')
  p.add_argument('--sweep', default='',
                 help='extra search settings on the same index, LEAVES:REORDER comma list')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()
  if args.quick:
    args.num_items, args.num_queries = 20_000, 500

  import jax  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import config_base, partitioning  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.retrieval import (ItemIndex, default_params, exact_top_k,  # pylint: disable=import-outside-toplevel
                                     put_table)

  table, queries = embeddings(args.num_items, args.dim, args.num_queries, args.distribution,
                              args.seed)
  rules = config_base.DEFAULT_RULES
  mesh = partitioning.make_mesh(dict(axes=('data', 'fsdp', 'tensor'), shape=(1, 1, -1)))
  t, v = put_table(table, None, mesh, rules)
  block = 500

  def exact(qs):
    out = [exact_top_k(qs[s:s + block], t, v, args.k, mesh, rules)[0]
           for s in range(0, len(qs), block)]
    return np.concatenate(out)

  exact(queries[:block])  # compile
  t0 = time.perf_counter()
  truth = exact(queries)
  exact_s = time.perf_counter() - t0

  overrides = {'leaves_to_search': args.leaves_to_search, 'reorder': args.reorder}
  params = default_params(args.num_items, args.dim, overrides)
  rss0 = rss_mb()
  t0 = time.perf_counter()
  index = ItemIndex.build(table, params=params)
  build_s = time.perf_counter() - t0
  rss_build = rss_mb() - rss0
  index.search_batched(queries[:256], args.k)  # warm-up
  t0 = time.perf_counter()
  found, _ = index.search_batched(queries, args.k)
  ann_s = time.perf_counter() - t0
  def recall_of(f):
    return float(np.mean([len(set(a) & set(g)) / args.k for a, g in zip(f, truth)]))

  recall = recall_of(found)
  exact_qps, ann_qps = len(queries) / exact_s, len(queries) / ann_s
  sweep = []
  for point in filter(None, args.sweep.split(',')):
    leaves, reorder = (int(x) for x in point.split(':'))
    t0 = time.perf_counter()
    f, _ = index.search_batched(queries, args.k, leaves_to_search=leaves, reorder=reorder)
    qps = len(queries) / (time.perf_counter() - t0)
    sweep.append({'leaves_to_search': leaves, 'reorder': reorder,
                  f'recall@{args.k}': round(recall_of(f), 4), 'ann_qps': round(qps, 1),
                  'speedup': round(qps / exact_qps, 2)})
  result = {
      'benchmark': 'retrieval_ann', 'quick': args.quick, 'num_items': args.num_items,
      'dim': args.dim, 'num_queries': args.num_queries, 'distribution': args.distribution,
      'k': args.k, f'recall@{args.k}': round(recall, 4),
      'exact_qps': round(exact_qps, 1), 'ann_qps': round(ann_qps, 1),
      'speedup': round(ann_qps / exact_qps, 2), 'build_s': round(build_s, 2),
      'index_bytes': index.memory_bytes(), 'build_rss_increase_mb': round(rss_build, 1),
      'vectors_bytes': int(table.nbytes), 'params': index.meta.params, 'sweep': sweep,
      'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'load_avg_1m': round(os.getloadavg()[0], 2)}
  print(json.dumps(result))


if __name__ == '__main__':
  main()
