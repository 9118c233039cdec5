"""Yelp (S3-Rec data): leave-one-out, full ranking; reported with and without excluding seen items.

6.7% of Yelp test targets repeat an item already in the user's history; with seen items excluded
those cases count as misses, so both numbers are reported (training is the same run).

  python benchmarks/yelp.py [--quick] [--variant=sasrec|filter_prior]

``--variant`` picks a variant of ``configs/yelp.py``. This script's default is ``sasrec``, what the
result files whose command names no variant ran; the configuration's own default is
``filter_prior`` (``configs/beauty.py``'s default on Yelp; the leaderboard's Yelp row).
"""


from common import load_config, make_quick, parser, print_report


def _with_seen_items(config):
  """Re-evaluates the trained workdir with seen items ranked (same config otherwise): the model
  test was ranked with (its refit when it has one, not refit again), the workdir left as it was."""
  def extra(workdir, results):
    from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
    other = trainer.evaluate(config, workdir, checkpoint='auto', exclude_seen=False, record=False)
    return {'test_seen_items_ranked': {k: round(other['test'][k], 4)
                                       for k in ('ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'mrr')}}
  return extra


if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--variant', default='sasrec', help='a variant of configs/yelp.py')
  args = p.parse_args()
  config = load_config('yelp', args.variant)
  if args.quick:
    make_quick(config)
  print_report(config, args, benchmark='yelp', extra=_with_seen_items(config))
