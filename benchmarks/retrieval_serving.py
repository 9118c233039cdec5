"""End-to-end ``recommend`` latency per user on Beauty, with and without the ScaNN index.

Trains a short Beauty model (or takes ``--workdir`` of a trained one), builds ``WORKDIR/index``
(``llm4rec index``), then times ``Recommender.recommend(history, top_k=10)`` for the same test users
both ways (after warm-up), one user per call as a server would. Prints one JSON line: p50/p99 latency
of each path, and how often the index path returns the same top-10 as full scoring.

  python benchmarks/retrieval_serving.py --set train.num_epochs=5
  python benchmarks/retrieval_serving.py --workdir workdirs/beauty --users 1000
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import apply_overrides, load_config, make_quick, parser  # noqa: E402


def main():
  p = parser(__doc__.splitlines()[0])
  p.add_argument('--users', type=int, default=1000, help='test users timed')
  args = p.parse_args()
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.data import registry  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.serving import index as workdir_index  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.serving import Recommender  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  trained_here = False
  workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp())
  if not workdir_lib.path(workdir, workdir_lib.CHECKPOINTS).exists():
    config = load_config('beauty', 'sasrec')  # the runs these results record
    config.train.num_epochs = 5
    config.seed = args.seed
    if args.quick:
      make_quick(config)
      args.users = 50
    apply_overrides(config, args.set)
    trainer.train_and_evaluate(config, workdir)
    trained_here = True
  config = config_base.load(workdir)
  summary = workdir_index.build_index(workdir)
  _, split = registry.load_split(config.data)
  rng = np.random.default_rng(args.seed)
  cases = rng.choice(len(split.test), size=min(args.users, len(split.test)), replace=False)

  full = Recommender(workdir, use_index=False)
  ann = Recommender(workdir)
  raw = np.asarray(full.raw_ids)
  histories = [list(raw[split.test.history(int(i))]) for i in cases]

  def timed(rec):
    for h in histories[:5]:
      rec.recommend(h, top_k=10)  # compile / warm up
    lat, tops = [], []
    for h in histories:
      t0 = time.perf_counter()
      out = rec.recommend(h, top_k=10)
      lat.append((time.perf_counter() - t0) * 1e3)
      tops.append([r['item'] for r in out['recommendations']])
    return np.asarray(lat), tops

  lat_full, top_full = timed(full)
  lat_ann, top_ann = timed(ann)
  same = np.mean([a == b for a, b in zip(top_full, top_ann)])
  overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_full, top_ann)])

  def stats(lat):
    return {'p50_ms': round(float(np.percentile(lat, 50)), 3),
            'p99_ms': round(float(np.percentile(lat, 99)), 3),
            'mean_ms': round(float(lat.mean()), 3)}

  import os  # pylint: disable=import-outside-toplevel
  result = {'benchmark': 'retrieval_serving', 'quick': args.quick, 'dataset': config.data.name,
            'num_items': summary['num_items'], 'users_timed': len(histories),
            'checkpoint_step': summary['checkpoint_step'], 'index_params': summary['params'],
            'index_build_s': summary['build_s'], 'candidates': int(config.retrieval.candidates),
            'without_index': stats(lat_full), 'with_index': stats(lat_ann),
            'same_top10_fraction': round(float(same), 4), 'top10_overlap': round(float(overlap), 4),
            'load_avg_1m': round(os.getloadavg()[0], 2)}
  if trained_here and not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
