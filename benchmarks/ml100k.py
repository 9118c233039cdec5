"""MovieLens 100K: leave-one-out by timestamp, full ranking, seen items excluded.

  python benchmarks/ml100k.py [--quick]
"""


from common import load_config, make_quick, parser, print_report

if __name__ == '__main__':
  args = parser(__doc__).parse_args()
  config = load_config('ml100k')
  if args.quick:
    make_quick(config)
  print_report(config, args, benchmark='ml100k')
