"""Evaluate trained workdirs again under changed evaluation settings: one per-seed line each.

For inference-time variants of runs that are already trained (``eval.transition_weights``,
``debias.adjust_strength``, ...): the best checkpoint of each workdir is evaluated with its saved
config plus ``--set`` overrides, and a line in the per-seed format of ``common.train_and_report``
is written, so ``leaderboard.py --from_runs`` makes a multi-seed row of the variant. Training
facts (best epoch, wall time, peak memory) are carried over from ``--runs`` (the training runs'
own lines, matched by seed); the line says they belong to the training run.

  python benchmarks/reevaluate.py --workdirs=W0,W1,W2 --set 'eval.transition_weights=(0,0.25,0.5,1,2)' \\
      --runs=RUNS.jsonl --out=OUT.jsonl

``--pick KEY=V1,V2,...`` evaluates each value of one more setting (e.g. ``debias.adjust_strength``)
and keeps, per workdir, the value with the highest validation NDCG@10 (a tie keeps the earlier
value); the line records every value's validation figure and the test figures of the kept one only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import provenance  # noqa: E402  pylint: disable=wrong-import-position
from common import apply_overrides  # noqa: E402  pylint: disable=wrong-import-position

from llm4rec_jax import config_base  # noqa: E402
from llm4rec_jax.train import trainer  # noqa: E402

CARRIED = ('best_epoch', 'time_to_best_epoch_s', 'wall_s', 'peak_rss_mb')


def parse_pick(spec: str) -> tuple[str, list[str]] | None:
  """'KEY=V1,V2' -> (KEY, ['V1', 'V2']); '' -> None."""
  if not spec:
    return None
  key, _, values = spec.partition('=')
  values = [v for v in values.split(',') if v]
  if not key or not values:
    raise SystemExit(f'--pick: expected KEY=V1,V2,..., got {spec!r}')
  return key, values


def reevaluate(workdir: str, overrides: list[str], runs: dict[int, dict],
               pick: tuple[str, list[str]] | None = None) -> dict:
  record = provenance.start()
  config = config_base.load(workdir)
  apply_overrides(config, overrides)
  picked = None
  if pick is not None:
    key, values = pick
    by_value = {}
    for value in values:
      apply_overrides(config, [f'{key}={value}'])
      by_value[value] = trainer.evaluate(config, workdir)
    best = max(values, key=lambda v: (by_value[v]['valid']['ndcg@10'], -values.index(v)))
    picked = {'key': key, 'value': best, 'by': 'valid_ndcg@10',
              'valid_ndcg@10': {v: round(r['valid']['ndcg@10'], 5) for v, r in by_value.items()}}
    apply_overrides(config, [f'{key}={best}'])
    # The workdir's metrics.json and transitions.npz are the kept value's, as after a plain run.
    results = by_value[best] if best == values[-1] else trainer.evaluate(config, workdir)
    overrides = [*overrides, f'{key}={best}']
  else:
    results = trainer.evaluate(config, workdir)
  seed = int(config.seed)
  trained = runs.get(seed, {})
  line = {'benchmark': 'reevaluate', 'dataset': results['dataset'], 'protocol': results['protocol'],
          'exclude_seen': results['exclude_seen'], 'seed': seed, 'seeds': [seed],
          'workdir': workdir, 'overrides': overrides, 'checkpoint_step': results['step'],
          'test': {k: round(v, 5) for k, v in results['test'].items()
                   if k in ('ndcg@10', 'hr@10', 'ndcg@20', 'hr@20', 'mrr')},
          'valid_ndcg@10': round(results['valid']['ndcg@10'], 5),
          **{k: trained.get(k) for k in CARRIED},
          'carried_from_training_run': trained.get('command'),
          'config': config.to_dict()}
  for key in ('transition_blend', 'refit'):
    if key in results:
      line[key] = results[key]
  if picked is not None:
    line['picked'] = picked
  provenance.finish(record)
  line['command'] = record['command']
  line['provenance'] = {**record, 'seeds': [seed]}
  return line


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdirs', required=True, help='comma-separated trained workdirs')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--runs', action='append', default=[],
                 help='JSON or JSON-lines files of the training runs (per-seed lines)')
  p.add_argument('--pick', default='', metavar='KEY=V1,V2,...',
                 help='one more setting whose value is chosen per workdir on validation NDCG@10')
  p.add_argument('--out', default='')
  args = p.parse_args()
  pick = parse_pick(args.pick)
  runs = {}
  for f in args.runs:
    text = pathlib.Path(f).read_text()
    chunks = [(1, text)] if f.endswith('.json') else [(n, l) for n, l in
                                                       enumerate(text.splitlines(), 1) if l.strip()]
    for n, chunk in chunks:
      try:
        r = json.loads(chunk)
      except ValueError as e:
        raise SystemExit(f'{f}:{n}: not a JSON result line ({e})') from e
      runs[int(r.get('seed', (r.get('seeds') or [0])[0]))] = r
  out = [reevaluate(w, args.set, runs, pick) for w in args.workdirs.split(',') if w]
  text = ''.join(json.dumps(l, default=str) + '\n' for l in out)
  print(text, end='')
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
