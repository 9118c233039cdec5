"""Where NDCG@10 goes between validation and test (leave-one-out), for a trained workdir.

Leave-one-out validation predicts a user's item n-2 from items[:n-2] (exactly the training
sequence); test predicts item n-1 from items[:n-1] (the training sequence plus the validation item,
which no training step has seen in that user's context). The drop splits into two paired parts, each
measured on the same users with its standard error:

  valid -> test_skip   the target moves one step later in time, history unchanged (`test_skip`:
                       items[:n-2] -> item n-1, the validation item excluded as seen)
  test_skip -> test    the validation item joins the history (what the newest item is worth)

plus `train_last` (items[:n-3] -> item n-3, a target the model was trained on: how much it fits the
training sequences). Model-free references on the same cases show how much of each part is in the
data: popularity (training counts) and a first-order Markov chain (training transitions
last item -> next item, popularity breaking ties). Full ranking, seen items excluded (ties against
the target), as in evaluation.

  python benchmarks/val_test_gap.py --workdir=WORKDIR [--checkpoint=best] [--out=FILE.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import provenance  # noqa: E402  pylint: disable=wrong-import-position

from llm4rec_jax import config_base, metrics as metrics_lib  # noqa: E402
from llm4rec_jax import workdir as workdir_lib  # noqa: E402
from llm4rec_jax.data import pipeline, splits  # noqa: E402
from llm4rec_jax.train import experiment  # noqa: E402

CASES = ('train_last', 'valid', 'test_skip', 'test')


def case_sets(split: splits.Split) -> dict[str, tuple[splits.EvalExamples, splits.EvalExamples]]:
  """name -> (model inputs, seen items + targets): both over the same users, in the same order."""
  valid, test = split.valid, split.test
  if not np.array_equal(valid.users, test.users):
    raise ValueError('validation and test cases are not the same users')
  skip = splits.EvalExamples(valid.users, valid.offsets, valid.items, test.targets)
  # train_last: the training sequence minus its last item -> that item (users with >= 2 of them).
  hist = [split.train[u] for u in valid.users]
  keep = np.asarray([len(h) >= 2 for h in hist])
  tl = splits.EvalExamples.from_lists(valid.users[keep], [h[:-1] for h, k in zip(hist, keep) if k],
                                      [h[-1] for h, k in zip(hist, keep) if k])
  return {'train_last': (tl, tl), 'valid': (valid, valid), 'test_skip': (skip, test),
          'test': (test, test)}


def eval_batch(inputs: splits.EvalExamples, seen: splits.EvalExamples, max_len: int,
               batch_size: int) -> pipeline.EvalBatch:
  a = pipeline.eval_arrays(inputs, max_len, batch_size)
  b = pipeline.eval_arrays(seen, max_len, batch_size)
  return pipeline.EvalBatch(a.inputs, b.targets, a.users, a.valid, b.seen_offsets, b.seen_items)


def transition_counts(train: list[np.ndarray], num_items: int) -> tuple[np.ndarray, np.ndarray]:
  """Training transitions grouped by source item: item a is followed by dst[bounds[a]:bounds[a+1]]."""
  src = np.concatenate([s[:-1] for s in train if len(s) > 1])
  dst = np.concatenate([s[1:] for s in train if len(s) > 1])
  order = np.argsort(src, kind='stable')
  return dst[order], np.searchsorted(src[order], np.arange(num_items + 2))


def reference_ranks(kind: str, inputs: splits.EvalExamples, seen: splits.EvalExamples,
                    train: list[np.ndarray], num_items: int, chunk: int = 2048) -> np.ndarray:
  """0-based ranks of 'popularity' or 'markov' scores (from the training sequences only)."""
  pop = np.bincount(np.concatenate(train), minlength=num_items + 1).astype(np.float64)
  if kind == 'markov':
    dst, bounds = transition_counts(train, num_items)
  tie = pop / (pop.max() + 1.0)  # < 1: popularity only orders equal transition counts
  chunk = max(1, min(chunk, (1 << 28) // (8 * (num_items + 1))))  # <= 256 MiB of scores a chunk
  ranks = np.empty(len(seen), np.int64)
  for lo in range(0, len(seen), chunk):
    hi = min(lo + chunk, len(seen))
    scores = np.broadcast_to(tie, (hi - lo, num_items + 1)).copy()
    if kind == 'markov':
      for r, i in enumerate(range(lo, hi)):
        h = inputs.history(i)
        if len(h):
          nxt = dst[bounds[h[-1]]:bounds[h[-1] + 1]]
          scores[r] += np.bincount(nxt, minlength=num_items + 1)
    scores[:, 0] = -np.inf
    for r, i in enumerate(range(lo, hi)):
      scores[r, seen.history(i)] = -np.inf
    t = scores[np.arange(hi - lo), seen.targets[lo:hi]][:, None]
    ranks[lo:hi] = (scores > t).sum(1) + (scores == t).sum(1) - 1
  return ranks


def ndcg10(ranks: np.ndarray) -> np.ndarray:
  return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
  """Mean of b - a (per-case NDCG@10) and its standard error."""
  d = ndcg10(b) - ndcg10(a)
  return {'diff': round(float(d.mean()), 5), 'se': round(float(d.std(ddof=1) / np.sqrt(len(d))), 5)}


def data_stats(sets, train: list[np.ndarray], num_items: int) -> dict[str, dict]:
  pop = np.bincount(np.concatenate(train), minlength=num_items + 1)
  out = {}
  for name, (inputs, seen) in sets.items():
    t = seen.targets
    repeat = np.asarray([t[i] in seen.history(i) for i in range(len(t))])
    last = np.asarray([inputs.history(i)[-1] if len(inputs.history(i)) else 0
                       for i in range(len(t))])
    out[name] = {'cases': int(len(t)), 'target_seen_share': round(float(repeat.mean()), 4),
                 'target_train_count_median': float(np.median(pop[t])),
                 'target_cold_share': round(float((pop[t] == 0).mean()), 4),
                 'last_input_train_count_median': float(np.median(pop[last]))}
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdir', required=True)
  p.add_argument('--checkpoint', default='best')
  p.add_argument('--out', default='')
  args = p.parse_args()
  record = provenance.start()
  config = config_base.load(args.workdir)
  exp = experiment.build_experiment(config, args.workdir)
  if exp.split is None:
    raise SystemExit(f'{args.workdir}: trained from prepared records (data.name={config.data.name});'
                     ' this diagnosis needs the in-memory leave-one-out split')
  step, params = experiment.restore_params(exp, args.checkpoint)
  num_items = exp.spec.cfg.num_items
  sets = case_sets(exp.split)
  rank_fn = exp.rank_fn()
  ranks: dict[str, dict[str, np.ndarray]] = {'model': {}, 'popularity': {}, 'markov': {}}
  for name, (inputs, seen) in sets.items():
    arrays = eval_batch(inputs, seen, config.data.max_len, config.eval.batch_size)
    _, r, _ = exp.evaluate_arrays(rank_fn, params, arrays, content=exp.content)
    ranks['model'][name] = r
    for kind in ('popularity', 'markov'):
      ranks[kind][name] = reference_ranks(kind, inputs, seen, exp.split.train, num_items)
  results = {}
  for scorer, by_case in ranks.items():
    m = {name: metrics_lib.ranking_metrics(r, (10, 20)) for name, r in by_case.items()}
    res = {name: {k: round(v, 5) for k, v in mm.items()} for name, mm in m.items()}
    res['test_over_valid'] = round(m['test']['ndcg@10'] / max(m['valid']['ndcg@10'], 1e-12), 4)
    res['valid_to_test_skip'] = paired(by_case['valid'], by_case['test_skip'])
    res['test_skip_to_test'] = paired(by_case['test_skip'], by_case['test'])
    res['valid_to_test'] = paired(by_case['valid'], by_case['test'])
    results[scorer] = res
  # The run's evaluations (with eval.monitor_test, the test ranking logged beside validation).
  curve = []
  events = workdir_lib.path(args.workdir, workdir_lib.EVENTS)
  if events.exists():
    for line in events.read_text().splitlines():
      e = json.loads(line)
      if e.get('event') == 'eval':
        curve.append({'step': e['step'], 'epoch': round(e['epoch'], 2),
                      'valid_ndcg@10': round(e['valid_ndcg@10'], 5),
                      'monitor_test_ndcg@10': (round(e['monitor_test_ndcg@10'], 5)
                                               if 'monitor_test_ndcg@10' in e else None)})
  record.update({'seeds': [int(config.seed)], 'benchmark': 'val_test_gap', 'eval_curve': curve,
                 'dataset': exp.dataset.name, 'workdir': args.workdir,
                 'checkpoint_step': int(step), 'config': config.to_dict(),
                 'data': data_stats(sets, exp.split.train, num_items), 'results': results})
  provenance.finish(record)
  line = json.dumps(record, default=str)
  print(line)
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1, default=str) + '\n')


if __name__ == '__main__':
  main()
