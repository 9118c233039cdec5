"""Inference-time blend of a trained decoder with first-order training transitions of the newest item.

docs/val_test_gap.md found the decoder draws less from the newest history item than a Markov chain
does. This scores ``log_softmax(decoder) + w * log1p(transitions[last item, :])`` (transition counts
from the training sequences only), picks ``w`` from ``--weights`` by validation NDCG@10 alone, and then
reports test for every weight (the pick is fixed before test is read; paired SEs against w = 0).

  python benchmarks/transition_blend.py --workdir=WORKDIR [--weights=0,0.25,0.5,1,2] [--out=F.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import provenance  # noqa: E402  pylint: disable=wrong-import-position
import val_test_gap  # noqa: E402  pylint: disable=wrong-import-position

from llm4rec_jax import config_base, metrics as metrics_lib  # noqa: E402
from llm4rec_jax.data import pipeline  # noqa: E402
from llm4rec_jax.train import experiment  # noqa: E402


transition_counts = val_test_gap.transition_counts


def blended_ranks(model_logp: np.ndarray, last: np.ndarray, seen_rows: list[np.ndarray],
                  targets: np.ndarray, trans, weights) -> dict[float, np.ndarray]:
  dst, bounds = trans
  vocab = model_logp.shape[1]
  markov = np.zeros_like(model_logp)
  for r, a in enumerate(last):
    if a:
      markov[r] = np.log1p(np.bincount(dst[bounds[a]:bounds[a + 1]], minlength=vocab)[:vocab])
  out = {}
  for w in weights:
    s = model_logp + w * markov
    for r, h in enumerate(seen_rows):
      s[r, h] = -np.inf
    t = s[np.arange(len(s)), targets][:, None]
    out[w] = (s > t).sum(1) + (s == t).sum(1) - 1
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdir', required=True)
  p.add_argument('--weights', default='0,0.25,0.5,1,2')
  p.add_argument('--out', default='')
  args = p.parse_args()
  weights = [float(w) for w in args.weights.split(',')]
  record = provenance.start()
  config = config_base.load(args.workdir)
  exp = experiment.build_experiment(config, args.workdir)
  if exp.split is None:
    raise SystemExit(f'{args.workdir}: trained from prepared records (data.name={config.data.name});'
                     ' the blend needs the in-memory split')
  step, params = experiment.restore_params(exp, 'best')
  model = nnx.merge(exp.spec.graphdef, params)
  num_items = exp.spec.cfg.num_items
  trans = transition_counts(exp.split.train, num_items)

  @jax.jit
  def logp(inputs):
    catalog = model.encode_catalog(exp.content)
    h = model(inputs, catalog)[:, -1]
    return jax.nn.log_softmax(model.logits(h, catalog), axis=-1)

  by_split = {}
  for which, examples in (('valid', exp.split.valid), ('test', exp.split.test)):
    bs = max(1, min(1024, (1 << 28) // (8 * (num_items + 1))))  # <= 256 MiB of scores a batch
    arrays = pipeline.eval_arrays(examples, config.data.max_len, bs)
    ranks = {w: [] for w in weights}
    for lo in range(0, len(examples), bs):
      hi = min(lo + bs, len(examples))
      lp = np.array(logp(arrays.inputs[lo:lo + bs]))[:hi - lo]
      lp = np.where(np.isfinite(lp), lp, -1e30)
      last = arrays.inputs[lo:hi, -1]
      seen = [examples.history(i) for i in range(lo, hi)]
      for w, r in blended_ranks(lp, last, seen, examples.targets[lo:hi], trans, weights).items():
        ranks[w].append(r)
    by_split[which] = {w: np.concatenate(r) for w, r in ranks.items()}
  valid_ndcg = {w: float(val_test_gap.ndcg10(r).mean()) for w, r in by_split['valid'].items()}
  pick = max(weights, key=lambda w: valid_ndcg[w])
  rows = {}
  for w in weights:
    rows[str(w)] = {which: {k: round(v, 5) for k, v in
                            metrics_lib.ranking_metrics(by_split[which][w], (10, 20)).items()}
                    for which in ('valid', 'test')}
    rows[str(w)]['test_vs_w0'] = val_test_gap.paired(by_split['test'][0.0] if 0.0 in by_split['test']
                                                     else by_split['test'][weights[0]],
                                                     by_split['test'][w])
  record.update({'seeds': [int(config.seed)], 'benchmark': 'transition_blend',
                 'dataset': exp.dataset.name, 'workdir': args.workdir, 'checkpoint_step': int(step), 'weights': weights,
                 'picked_by_valid_ndcg@10': pick, 'by_weight': rows, 'config': config.to_dict()})
  provenance.finish(record)
  print(json.dumps(record, default=str))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1, default=str) + '\n')


if __name__ == '__main__':
  main()
