"""Amazon Beauty (S3-Rec data): leave-one-out, full ranking, seen items excluded.

Reference (same data, 2-core CPU): PyTorch SASRec with full cross-entropy, NDCG@10 0.0549 / HR@10
0.0905, best epoch 8 at about 17 minutes.

  python benchmarks/beauty.py [--quick]
      [--variant=sasrec|d128|filter|filter_blend|filter_prior|fused]
                              [--config.a.b=VALUE ...] [--seeds=0,1,2]

``--seeds`` trains the seeds at once in one process (replicas, one vmapped step) and prints one line
per seed.

``--variant`` picks a variant of ``configs/beauty.py`` (its docstring lists them). This script's
default is ``sasrec``, the run compared with the PyTorch SASRec reference above (and what the result
files whose command names no variant ran); the configuration's own default, and the leaderboard's
Beauty row, is ``fused``.
"""

from common import load_config, make_quick, parser, print_report

if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--variant', default='sasrec', help='a variant of configs/beauty.py')
  args = p.parse_args()
  config = load_config('beauty', args.variant)
  if args.quick:
    make_quick(config)
  print_report(config, args, benchmark='beauty', valid_target=0.055)
