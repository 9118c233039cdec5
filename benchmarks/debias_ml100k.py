"""MovieLens 100K: test NDCG@10 gap between gender groups (u.user), naive vs fairness objectives.

Variants (configs/ml100k.py, fewer epochs than the accuracy benchmark to bound the cost):
naive; adversarial (an adversary predicts gender from the user representation behind gradient
reversal); parity (demographic-parity penalty between the genders' mean next-item distributions).
Reports per-gender NDCG@10, the gap, overall NDCG@10, and the adversary's training accuracy.

  python benchmarks/debias_ml100k.py [--quick] [--epochs 15] [--variants naive,adversarial,parity]
"""

import json
import pathlib
import shutil
import tempfile
import sys
import time

from common import apply_overrides, load_config, make_quick, parser


def main():
  p = parser(__doc__)
  p.add_argument('--epochs', type=int, default=15)
  p.add_argument('--variants', default='naive,adversarial,parity')
  args = p.parse_args()
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  root = pathlib.Path(args.workdir or tempfile.mkdtemp())
  fair = {'naive': {},
          'adversarial': {'debias.fairness': 'adversarial', 'debias.sensitive_attribute': 'gender'},
          'parity': {'debias.fairness': 'parity', 'debias.sensitive_attribute': 'gender'}}
  out = {}
  for name in args.variants.split(','):
    config = load_config('ml100k')
    config.seed = args.seed
    config.train.num_epochs = args.epochs
    config.train.progress_bar = False
    config.debias.group_attributes = 'gender,age_group'
    if args.quick:
      make_quick(config)
    apply_overrides(config, args.set + [f'{k}={v}' for k, v in fair[name].items()])
    workdir = root / name
    shutil.rmtree(workdir, ignore_errors=True)
    results = trainer.train_and_evaluate(config, workdir)
    genders = results['groups']['test']['gender']
    row = {'test_ndcg@10': round(results['test']['ndcg@10'], 4),
           'test_hr@10': round(results['test']['hr@10'], 4),
           'ndcg@10_by_gender': {g: round(v['ndcg@10'], 4) for g, v in genders.items()
                                 if isinstance(v, dict)},
           'gender_ndcg@10_gap': round(results['test']['gender_ndcg@10_gap'], 4),
           'age_group_ndcg@10_gap': round(results['test']['age_group_ndcg@10_gap'], 4),
           'best_step': results['step']}
    logs = workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.TRAIN_LOG))
    last = [l for l in logs if 'adv_accuracy' in l or 'parity_gap' in l][-20:]
    if last and 'adv_accuracy' in last[-1]:
      row['adversary_train_accuracy_last20'] = round(sum(l['adv_accuracy'] for l in last) / len(last), 4)
    if last and 'parity_gap' in last[-1]:
      row['parity_gap_last20'] = round(sum(l['parity_gap'] for l in last) / len(last), 4)
    out[name] = row
  naive_gap = out.get('naive', {}).get('gender_ndcg@10_gap')
  line = {'benchmark': 'debias_ml100k', 'quick': args.quick, 'epochs': args.epochs,
          'variants': out,
          'gap_smaller_than_naive': ({k: v['gender_ndcg@10_gap'] < naive_gap
                                      for k, v in out.items() if k != 'naive'}
                                     if naive_gap is not None else None),
          'wall_s': round(time.perf_counter() - t0, 1),
          'command': 'python ' + ' '.join(['benchmarks/debias_ml100k.py', *sys.argv[1:]])}
  if not args.workdir:
    shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(line))


if __name__ == '__main__':
  main()
