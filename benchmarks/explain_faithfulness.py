"""Faithfulness of attributions by deletion: for each test user's top-1 recommendation, delete the
top-k attributed history items vs k random ones and compare the fall of the item's score and rank.

  python benchmarks/explain_faithfulness.py --dataset=beauty --workdir=workdirs/beauty  # trained
  python benchmarks/explain_faithfulness.py --dataset=ml100k --workdir=workdirs/ml100k
  python benchmarks/explain_faithfulness.py --quick      # trains a tiny model for 12 steps first

Without --workdir (or with --quick) a model is trained first with configs/<dataset>.py.
Prints one JSON line: the deletion curve and the top/random ratio at every k, for integrated
gradients and for gradient x input; deleting the k most recent items is reported as a second,
model-free baseline.
"""

import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from common import load_config, make_quick

CONFIGS = {'beauty': 'beauty', 'ml100k': 'ml100k'}


def main() -> dict:
  import argparse  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--dataset', default='ml100k', choices=sorted(CONFIGS))
  p.add_argument('--workdir', default=None, help='a trained workdir of configs/<dataset>.py')
  p.add_argument('--quick', action='store_true')
  p.add_argument('--num_cases', type=int, default=512, help='test users explained (random sample)')
  p.add_argument('--steps', type=int, default=32, help='integrated-gradients path steps')
  p.add_argument('--num_random', type=int, default=5, help='random deletions per case and k')
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.data import registry  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.explain import attribution, faithfulness  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.serving import Recommender  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  workdir = pathlib.Path(args.workdir) if args.workdir else None
  if args.quick or workdir is None:
    config = load_config(CONFIGS[args.dataset])
    if args.quick:
      make_quick(config)
      args.num_cases, args.steps, args.num_random = 32, 4, 2
    workdir = workdir or pathlib.Path(tempfile.mkdtemp())
    trainer.train_and_evaluate(config, workdir)
  train_s = time.perf_counter() - t0
  rec = Recommender(workdir)
  _, split = registry.load_split(rec.config.data)
  max_len = rec.spec.cfg.max_len
  rng = np.random.default_rng(args.seed)
  pool = np.asarray([i for i in range(len(split.test)) if len(split.test.history(i)) >= 2])
  cases = np.sort(rng.choice(pool, min(args.num_cases, len(pool)), replace=False))
  histories = [split.test.history(int(i))[-max_len:] for i in cases]
  inputs = np.stack([faithfulness.delete_positions(h, [], max_len) for h in histories])
  seen = np.zeros((len(cases), max(len(h) for h in histories)), np.int32)
  for i, h in enumerate(histories):
    seen[i, :len(h)] = h
  items = []
  for start in range(0, len(cases), 256):
    _, top = rec._top(rec.params, jnp.asarray(inputs[start:start + 256]),  # pylint: disable=protected-access
                      jnp.asarray(seen[start:start + 256]), 1, rec.content, rec.trie)
    items.append(np.asarray(top)[:, 0])
  items = np.concatenate(items)
  score_rank = faithfulness.make_score_rank_fn(rec.spec.graphdef)

  def score_rank_np(x, it, s):
    return jax.device_get(score_rank(rec.params, x, it, s, rec.content))

  result = {'benchmark': 'explain_faithfulness', 'dataset': args.dataset, 'quick': args.quick,
            'workdir_checkpoint_step': rec.step, 'num_cases': len(cases), 'ig_steps': args.steps,
            'num_random': args.num_random,
            'mean_history_len': round(float(np.mean([len(h) for h in histories])), 2)}
  ks = (1, 2, 3, 5, 10)
  for method, steps in (('integrated_gradients', args.steps), ('grad_x_input', 0)):
    t = time.perf_counter()
    a = attribution.attribute_batch(rec.spec.graphdef, rec.params, inputs, items, rec.content,
                                    steps=steps, method=method, batch_size=64)
    attr_s = time.perf_counter() - t
    attrs = [a.history[i, max_len - len(h):] for i, h in enumerate(histories)]
    curve = faithfulness.deletion_curve(score_rank_np, histories, items, attrs, max_len=max_len,
                                        ks=ks, num_random=args.num_random, seed=args.seed)
    gap = np.abs(a.total() - (a.score - a.baseline_score))
    result[method] = {
        'score_ratio@3': round(curve.ratio(3, 'score'), 2),
        'rank_ratio@3': round(curve.ratio(3, 'rank'), 2),
        'score_ratio_vs_recent@3': curve.to_json()['score_ratio_vs_recent'][ks.index(3)],
        'curve': curve.to_json(),
        'attribution_s': round(attr_s, 1),
        'completeness_gap_median': round(float(np.median(gap)), 4),
        'completeness_gap_rel_median': round(float(np.median(
            gap / np.maximum(np.abs(a.score - a.baseline_score), 1e-6))), 4)}
  result['train_s'] = round(train_s, 1)
  result['wall_s'] = round(time.perf_counter() - t0, 1)
  result['command'] = 'python ' + ' '.join(['benchmarks/explain_faithfulness.py', *sys.argv[1:]])
  return result


if __name__ == '__main__':
  print(json.dumps(main()))
