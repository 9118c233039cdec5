"""Amazon Beauty: accuracy vs popularity bias of ONE trained naive model ranked with popularity
deconfounding at inference (scores -= strength * log popularity) over several strengths.

The debiased operating point is chosen on VALIDATION: the largest strength whose valid NDCG@10 stays
within 2% of the unadjusted model's; its test NDCG@10, Gini@10 and tail share@10 are reported next
to the naive ones. Writes the trade-off plot (test NDCG@10 vs Gini / tail share, one point per
strength) to benchmarks/results/debias_beauty_tradeoff.png.

  python benchmarks/debias_beauty.py [--quick] [--naive_workdir=WORKDIR_OF_A_TRAINED_BEAUTY_MODEL]
"""

import json
import pathlib
import shutil
import tempfile
import sys
import time

from common import ROOT, apply_overrides, load_config, make_quick, parser
from debias_common import TrainedModel, plot_tradeoff


def main():
  p = parser(__doc__)
  p.add_argument('--naive_workdir', default=None,
                 help='a trained Beauty workdir (default: train one, configs/beauty.py)')
  p.add_argument('--strengths', default='0,0.05,0.1,0.15,0.2,0.3,0.5')
  p.add_argument('--tolerance', type=float, default=0.02)
  p.add_argument('--plot', default=str(ROOT / 'benchmarks/results/debias_beauty_tradeoff.png'))
  args = p.parse_args()
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  tmp = None
  if args.naive_workdir:
    workdir = pathlib.Path(args.naive_workdir)
    config = config_base.load(workdir)
    apply_overrides(config, args.set)
  else:
    config = load_config('beauty', 'sasrec')  # the runs these results record
    config.seed = args.seed
    config.train.progress_bar = False
    if args.quick:
      make_quick(config)
    apply_overrides(config, args.set)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp())
    tmp = None if args.workdir else workdir
    shutil.rmtree(workdir, ignore_errors=True)
    trainer.train_and_evaluate(config, workdir)
  model = TrainedModel(config, workdir)
  strengths = [float(s) for s in args.strengths.split(',')]
  if args.quick:
    strengths = strengths[:3]
  keys = ('ndcg@10', 'hr@10', 'gini@10', 'tail_share@10', 'coverage@10', 'arp@10', 'novelty@10')
  rows = []
  for s in strengths:
    valid, _, _ = model.rank('valid', s)
    test, _, _ = model.rank('test', s)
    rows.append({'strength': s, 'valid_ndcg@10': round(valid['ndcg@10'], 4),
                 'test': {k: round(test[k], 4) for k in keys}})
  base = rows[0]
  within = [r for r in rows
            if r['valid_ndcg@10'] >= (1 - args.tolerance) * base['valid_ndcg@10']]
  chosen = max(within, key=lambda r: r['strength'])
  plot_tradeoff(pathlib.Path(args.plot), [r['strength'] for r in rows],
                [r['test']['ndcg@10'] for r in rows], [r['test']['gini@10'] for r in rows],
                [r['test']['tail_share@10'] for r in rows],
                'Amazon Beauty: popularity deconfounding at inference')
  nd, dn = base['test']['ndcg@10'], chosen['test']['ndcg@10']
  line = {'benchmark': 'debias_beauty', 'quick': args.quick, 'model_step': model.step,
          'naive_workdir': str(workdir) if args.naive_workdir else None,
          'config_num_epochs': config.train.num_epochs, 'sweep': rows,
          'naive': {'strength': 0.0, **base['test']},
          'debiased': {'strength': chosen['strength'], **chosen['test']},
          'test_ndcg@10_change': round((dn - nd) / nd, 4) if nd else None,
          'gini_falls': chosen['test']['gini@10'] < base['test']['gini@10'],
          'ndcg_within_2pct': (dn >= 0.98 * nd), 'plot': args.plot,
          'wall_s': round(time.perf_counter() - t0, 1),
          'command': 'python ' + ' '.join(['benchmarks/debias_beauty.py', *sys.argv[1:]])}
  if tmp is not None:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(line))


if __name__ == '__main__':
  main()
