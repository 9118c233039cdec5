"""The validation -> test gap diagnostics: case construction, reference scorers, monitor-only test."""

import json
import pathlib
import sys

import numpy as np

from conftest import tiny_config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))

import val_test_gap  # noqa: E402  pylint: disable=wrong-import-position

from llm4rec_jax.data import splits  # noqa: E402
from llm4rec_jax.data import dataset as dataset_lib  # noqa: E402


def _split(seqs):
  user = np.concatenate([np.full(len(s), u + 1) for u, s in enumerate(seqs)])
  item = np.concatenate(seqs)
  ds = dataset_lib.from_raw('toy', user, item, timestamp=np.arange(len(item)))
  return splits.leave_one_out(ds), ds


def _brute_ranks(score_fn, inputs, seen, num_items):
  out = []
  for i in range(len(seen)):
    s = np.array([score_fn(inputs.history(i), j) if j else -np.inf
                  for j in range(num_items + 1)], float)
    s[seen.history(i)] = -np.inf
    t = s[seen.targets[i]]
    out.append(int((s > t).sum() + (s == t).sum() - 1))
  return np.asarray(out)


def test_cases_and_reference_ranks_match_a_direct_computation():
  seqs = [np.array([1, 2, 3, 4, 5]), np.array([2, 3, 4, 6, 2]), np.array([5, 1, 2, 3, 4, 6]),
          np.array([6, 5, 4, 3])]
  split, ds = _split(seqs)
  sets = val_test_gap.case_sets(split)
  # test_skip: the validation history, the test target, the test history excluded as seen.
  inputs, seen = sets['test_skip']
  for i in range(len(seen)):
    np.testing.assert_array_equal(inputs.history(i), split.valid.history(i))
    np.testing.assert_array_equal(seen.history(i), split.test.history(i))
    assert seen.targets[i] == split.test.targets[i]
  tl_inputs, tl_seen = sets['train_last']
  for i, u in enumerate(tl_seen.users):
    np.testing.assert_array_equal(tl_inputs.history(i), split.train[u][:-1])
    assert tl_seen.targets[i] == split.train[u][-1]
  num_items = ds.num_items
  train = split.train
  pop = np.bincount(np.concatenate(train), minlength=num_items + 1).astype(float)
  trans = np.zeros((num_items + 1, num_items + 1))
  for s in train:
    for a, b in zip(s[:-1], s[1:]):
      trans[a, b] += 1
  tie = pop / (pop.max() + 1)
  for name, (inp, sn) in sets.items():
    got_pop = val_test_gap.reference_ranks('popularity', inp, sn, train, num_items)
    got_mk = val_test_gap.reference_ranks('markov', inp, sn, train, num_items, chunk=2)
    want_pop = _brute_ranks(lambda h, j: tie[j], inp, sn, num_items)
    want_mk = _brute_ranks(lambda h, j: tie[j] + (trans[h[-1], j] if len(h) else 0), inp, sn,
                           num_items)
    np.testing.assert_array_equal(got_pop, want_pop, err_msg=name)
    np.testing.assert_array_equal(got_mk, want_mk, err_msg=name)


def test_paired_difference_and_its_standard_error():
  a = np.array([0, 20, 0, 5])
  b = np.array([0, 0, 30, 5])
  d = val_test_gap.ndcg10(b) - val_test_gap.ndcg10(a)
  got = val_test_gap.paired(a, b)
  assert got['diff'] == round(d.mean(), 5) and got['diff'] == 0.0
  assert got['se'] == round(d.std(ddof=1) / 2, 5) and got['se'] > 0


def test_monitor_test_is_logged_and_never_selects(tmp_path):
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  plain = trainer.train_and_evaluate(tiny_config(), tmp_path / 'plain')
  monitored = trainer.train_and_evaluate(tiny_config(**{'eval.monitor_test': True}),
                                         tmp_path / 'monitored')
  # Same training, same selection, same final metrics: the test ranking is only logged.
  assert plain['step'] == monitored['step']
  assert plain['test']['ndcg@10'] == monitored['test']['ndcg@10']
  events = [json.loads(l) for l in (tmp_path / 'monitored' / 'events.jsonl').read_text().splitlines()]
  evals = [e for e in events if e.get('event') == 'eval']
  assert evals and all('monitor_test_ndcg@10' in e for e in evals)
  last = evals[-1]
  if last['step'] == monitored['step']:  # the final evaluation ranks the same test cases
    assert abs(last['monitor_test_ndcg@10'] - monitored['test']['ndcg@10']) < 1e-6


def test_transition_blend_ranks_equal_plain_ranks_at_zero_weight_and_follow_transitions():
  import transition_blend  # pylint: disable=import-outside-toplevel
  train = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([3, 4])]
  trans = transition_counts = transition_blend.transition_counts(train, 4)
  dst, bounds = transition_counts
  np.testing.assert_array_equal(np.sort(dst[bounds[1]:bounds[2]]), [2, 2])
  np.testing.assert_array_equal(np.sort(dst[bounds[3]:bounds[4]]), [4])
  logp = np.log(np.array([[1e-30, .1, .2, .3, .4], [1e-30, .4, .3, .2, .1]]))
  ranks = transition_blend.blended_ranks(logp, np.array([1, 3]), [np.array([1]), np.array([3])],
                                         np.array([2, 4]), trans, [0.0, 10.0])
  # w = 0: the decoder's own ranks (seen item excluded, ties against the target).
  np.testing.assert_array_equal(ranks[0.0], [2, 2])
  # a large weight: the transitions 1 -> 2 and 3 -> 4 put the targets first.
  np.testing.assert_array_equal(ranks[10.0], [0, 0])
