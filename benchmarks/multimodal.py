"""Multimodal fusion benchmarks on real data; each scenario prints one JSON line.

Scenarios (leave-one-out, full ranking over the catalog, seen items excluded):
  * ``scientific``: Amazon 2018 Scientific, id-only vs multimodal (text + categories fused into the
    item representation and read by cross-attention);
  * ``cold_start``: the same data with 10% of the items held out of training entirely; NDCG@10 on
    the test cases whose target is a held-out item, for popularity, id-only, multimodal (id + content)
    and content-only items;
  * ``beauty_attributes``: Amazon Beauty, id-only vs the S3-Rec attributes (categories, brand) fused.

  python benchmarks/multimodal.py --scenario scientific [--quick] [--workdir DIR]
"""

import copy
import json
import pathlib
import time

import numpy as np

from common import apply_overrides, load_config, make_quick, parser, train_and_report

SCENARIOS = {
    'scientific': ('scientific', ('id', 'multimodal')),
    'cold_start': ('scientific', ('id', 'multimodal', 'content')),
    'beauty_attributes': ('beauty', ('id', 'multimodal')),
}


def variant_config(dataset: str, variant: str, quick: bool):
  if dataset == 'scientific':
    config = load_config('scientific', variant)
    if quick and variant != 'id':
      config.content.text = ''  # CI has no text cache; encoding 4k descriptions takes minutes
  else:
    config = load_config('beauty', 'sasrec')  # the runs these results record
    if variant != 'id':
      config.content.categorical = 'all'
      config.model.item_repr = 'both'
      config.model.cross_attention_every = 1
  if quick:
    make_quick(config)
  return config


def popularity_cold(config) -> dict:
  """Most-popular-first ranking (training counts) on the cold-target test cases."""
  from llm4rec_jax import metrics  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.data import registry, splits  # pylint: disable=import-outside-toplevel
  ds, split = registry.load_split(config.data)
  counts = np.bincount(np.concatenate(split.train), minlength=ds.num_items + 1).astype(np.float64)
  counts[0] = -np.inf
  test = splits.subset(split.test, np.isin(split.test.targets, split.cold_items))
  ranks = []
  for i in range(len(test)):
    scores = counts.copy()
    scores[test.history(i)] = -np.inf
    target = scores[test.targets[i]]
    ranks.append(ds.num_items if not np.isfinite(target) else
                 int(np.sum(scores > target) + np.sum(scores == target) - 1))
  return metrics.ranking_metrics(np.asarray(ranks), config.eval.ks)


def main():
  p = parser(__doc__)
  p.add_argument('--scenario', choices=sorted(SCENARIOS), default='scientific')
  p.add_argument('--variants', default=None, help='comma list: run only these variants')
  args = p.parse_args()
  dataset, variants = SCENARIOS[args.scenario]
  if args.variants:
    variants = tuple(v for v in variants if v in args.variants.split(','))
  out = {'benchmark': 'multimodal', 'scenario': args.scenario, 'dataset': dataset,
         'protocol': 'leave_one_out', 'full_ranking': True, 'exclude_seen': True,
         'quick': args.quick, 'variants': {}}
  t0 = time.perf_counter()
  for variant in variants:
    config = variant_config(dataset, variant, args.quick)
    if args.scenario == 'cold_start':
      config.data.cold_item_fraction = 0.1
      if variant == 'multimodal':
        config.model.id_dropout = 0.2  # train the content-only path that cold items rely on
    vargs = copy.copy(args)
    vargs.workdir = str(pathlib.Path(args.workdir) / variant) if args.workdir else None

    def cold(_, results):
      return ({'test_cold': {k: round(results['test_cold'][k], 4)
                             for k in ('ndcg@10', 'hr@10', 'ndcg@50', 'hr@50', 'num_cases')}}
              if 'test_cold' in results else {})

    line = train_and_report(config, vargs, benchmark='multimodal', extra=cold)
    keep = ('test', 'test_cold', 'valid_ndcg@10', 'best_epoch', 'time_to_best_epoch_s', 'wall_s',
            'train_examples_per_s', 'num_params')
    out['variants'][variant] = {k: line[k] for k in keep if k in line}
    out['variants'][variant]['content'] = {k: config.content[k] for k in
                                           ('text', 'categorical', 'numeric', 'dense')}
    out['variants'][variant]['item_repr'] = config.model.item_repr
    out['variants'][variant]['id_dropout'] = config.model.id_dropout
  if args.scenario == 'cold_start':
    config = variant_config(dataset, 'id', args.quick)
    config.data.cold_item_fraction = 0.1
    apply_overrides(config, args.set)
    pop = popularity_cold(config)
    out['variants']['popularity'] = {'test_cold': {k: round(pop[k], 4) for k in
                                                   ('ndcg@10', 'hr@10', 'ndcg@50', 'hr@50')}}
  out['wall_s'] = round(time.perf_counter() - t0, 1)
  out['command'] = 'python benchmarks/multimodal.py --scenario ' + args.scenario + (
      f' --variants {args.variants}' if args.variants else '') + (' --quick' if args.quick else '')
  print(json.dumps(out))


if __name__ == '__main__':
  main()
