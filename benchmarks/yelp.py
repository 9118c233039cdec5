"""Yelp (S3-Rec data): leave-one-out, full ranking; reported with and without excluding seen items.

6.7% of Yelp test targets repeat an item already in the user's history; with seen items excluded
those cases count as misses, so both numbers are reported (training is the same run).

  python benchmarks/yelp.py [--quick]
"""

import json

from common import load_config, make_quick, parser, train_and_report


def _with_seen_items(workdir, results):
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = load_config('yelp')
  config.update_from_flattened_dict({'eval.exclude_seen': False})
  if QUICK:
    make_quick(config)
  other = trainer.evaluate(config, workdir)
  return {'test_seen_items_ranked': {k: round(other['test'][k], 4)
                                     for k in ('ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'mrr')}}


if __name__ == '__main__':
  args = parser(__doc__).parse_args()
  QUICK = args.quick
  config = load_config('yelp')
  if args.quick:
    make_quick(config)
  print(json.dumps(train_and_report(config, args, benchmark='yelp', extra=_with_seen_items)))
