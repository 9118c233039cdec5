"""Synthetic data with known truth: naive vs each debiasing method, NDCG@10 against true preferences.

The generator exposes items with probability (popularity / max) ** exposure_strength and users pick
among exposed items by preference, so observed sequences over-represent popular items. Truth
NDCG@10 grades each test list by the generator's unconfounded next-item distribution (every item
exposed, seen items removed); observed NDCG@10 is the usual leave-one-out hit metric on the
(confounded) held-out item. Variants: naive; ips / snips (inverse popularity propensity, power 0.5,
clip 0.05); snips_windowed / snips_learned (SNIPS with the item's popularity in the interaction's
time window, 4 equal-count windows, resp. a logistic exposure model from the item's categorical
features); pda (training logits + pda_gamma * log popularity, ranked without it); and the naive
model ranked with popularity removed at inference (scores -= strength * log popularity).

  python benchmarks/debias_synthetic.py [--quick] [--pda_gamma 1.0]
"""

import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

import provenance
from common import apply_overrides, load_config, make_quick, parser
from debias_common import TrainedModel


def main():
  p = parser(__doc__)
  p.add_argument('--pda_gamma', type=float, default=1.0)
  p.add_argument('--strengths', default='0.25,0.5,0.75,1.0')
  p.add_argument('--epochs', type=int, default=20)
  p.add_argument('--variants', default='naive,ips,snips,pda')
  args = p.parse_args()
  from llm4rec_jax.debias import unbiased_eval  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  record = provenance.start()
  t0 = time.perf_counter()
  root = pathlib.Path(args.workdir or tempfile.mkdtemp())
  variants = {'naive': {}, 'ips': {'debias.method': 'ips'}, 'snips': {'debias.method': 'snips'},
              'pda': {'debias.method': 'pda', 'debias.pda_gamma': args.pda_gamma},
              # the other propensity sources: per time window, and a logistic model of exposure
              # from the item's categorical features
              'snips_windowed': {'debias.method': 'snips', 'debias.propensity': 'windowed'},
              'snips_learned': {'debias.method': 'snips', 'debias.propensity': 'learned'}}
  out, gains = {}, None
  unknown = set(args.variants.split(',')) - set(variants)
  if unknown:
    p.error(f'unknown --variants {sorted(unknown)}; choose from {sorted(variants)}')
  variants = {k: variants[k] for k in args.variants.split(',')}
  for name, overrides in variants.items():
    config = load_config('synthetic')
    config.seed = args.seed
    config.train.num_epochs = args.epochs
    config.train.progress_bar = False
    if args.quick:
      make_quick(config, max_cases=0)  # the ground-truth metrics score every user
      config.data.synthetic.num_users = 600  # so fewer users to score
    apply_overrides(config, args.set + [f'{k}={v}' for k, v in overrides.items()])
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    trainer.train_and_evaluate(config, workdir)
    model = TrainedModel(config, workdir)
    if gains is None:
      arrays = model.arrays('test')
      n = len(model.exp.split.test)
      gains = unbiased_eval.true_gains(model.exp.dataset.extras['ground_truth'], arrays.users[:n],
                                       arrays.inputs[:n], arrays.dense_seen(slice(0, n)))
    strengths = [0.0] + ([float(s) for s in args.strengths.split(',')] if name == 'naive' else [])
    for s in strengths:
      m, _, tops = model.rank('test', s)
      key = name if s == 0 else f'naive_adjusted_{s:g}'
      out[key] = {'truth_ndcg@10': round(unbiased_eval.truth_ndcg(tops, gains, 10), 4),
                  'observed_ndcg@10': round(m['ndcg@10'], 4),
                  **{k: round(m[k], 4) for k in ('arp@10', 'gini@10', 'tail_share@10',
                                                  'coverage@10')},
                  'best_step': model.step}
  oracle_top = np.argsort(-gains, axis=1)[:, :10]
  # Without naive in this run there is nothing to compare with: None, not a comparison with NaN
  # (which reads False); compare with a naive run of the same settings instead.
  naive = out['naive']['truth_ndcg@10'] if 'naive' in out else None
  line = {'benchmark': 'debias_synthetic', 'quick': args.quick, 'epochs': args.epochs,
          'seed': args.seed, 'overrides': args.set,
          'pda_gamma': args.pda_gamma, 'variants': out,
          'beats_naive_on_truth_ndcg@10': {k: None if naive is None else v['truth_ndcg@10'] > naive
                                           for k, v in out.items() if k != 'naive'},
          'oracle_arp@10': round(float(np.mean(
              model.context.counts[oracle_top])), 2),
          'wall_s': round(time.perf_counter() - t0, 1),
          'command': 'python ' + ' '.join(['benchmarks/debias_synthetic.py', *sys.argv[1:]]),
          'provenance': provenance.finish(record)}
  if not args.workdir:
    shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(line))


if __name__ == '__main__':
  main()
