"""Retrieval-augmented generation on vs off: the same multimodal model and budget, trained twice.

Scenarios (leave-one-out, full ranking, seen items excluded, best checkpoint by validation NDCG@10):
  * ``beauty``: Amazon Beauty with the S3-Rec attributes fused (the multimodal benchmark's
    ``beauty_attributes`` model: ``item_repr=both``, cross-attention in every block);
  * ``scientific``: Amazon Scientific, text + categories (``configs/scientific.py:multimodal``).

``rag_on`` adds ``retrieval.rag=True`` (items nearest to the recent history; their content tokens join
the cross-attention memory; index refreshed once per epoch; a training context excludes the history
up to its cutoff, as evaluation does, unless ``--rag_set retrieval.train_exclude=user``, the rule
before: every item of the user); everything else is identical. Prints one
JSON line with both variants' test metrics (keys ``rag_off``, ``rag_on``).

  python benchmarks/retrieval_rag.py --scenario beauty --set train.num_epochs=6
  python benchmarks/retrieval_rag.py --variants rag_on --rag_set retrieval.train_exclude=user
  python benchmarks/retrieval_rag.py --quick
"""

from __future__ import annotations

import copy
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import apply_overrides, load_config, make_quick, parser, train_and_report  # noqa: E402

SCENARIOS = ('beauty', 'scientific')


def scenario_config(scenario: str, quick: bool):
  if scenario == 'scientific':
    config = load_config('scientific', 'multimodal')
    if quick:
      config.content.text = ''  # CI has no text cache; encoding the descriptions takes minutes
  else:
    config = load_config('beauty', 'sasrec')  # the runs these results record
    config.content.categorical = 'all'
    config.model.item_repr = 'both'
    config.model.cross_attention_every = 1
  if quick:
    make_quick(config)
  return config


def main():
  p = parser(__doc__.splitlines()[0])
  p.add_argument('--scenario', choices=SCENARIOS, default='beauty')
  p.add_argument('--variants', default='rag_off,rag_on')
  p.add_argument('--rag_set', action='append', default=[], metavar='KEY=VALUE',
                 help='overrides for rag_on only, e.g. retrieval.source=both')
  args = p.parse_args()
  base_workdir = args.workdir
  out = {'benchmark': 'retrieval_rag', 'scenario': args.scenario, 'quick': args.quick}
  for variant in args.variants.split(','):
    config = scenario_config(args.scenario, args.quick)
    if variant == 'rag_on':
      config.retrieval.rag = True
      apply_overrides(config, args.rag_set)
    elif variant != 'rag_off':
      raise SystemExit(f'unknown variant {variant!r} (rag_off, rag_on)')
    run_args = copy.copy(args)
    run_args.workdir = str(pathlib.Path(base_workdir) / variant) if base_workdir else None
    line = train_and_report(config, run_args, benchmark=f'retrieval_rag_{variant}')
    line['retrieval'] = config.retrieval.to_dict() if variant == 'rag_on' else None
    out[variant] = line
  if {'rag_on', 'rag_off'} <= set(out):
    on, off = out['rag_on']['test'], out['rag_off']['test']
    out['ndcg@10_on_minus_off'] = round(on['ndcg@10'] - off['ndcg@10'], 4)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
