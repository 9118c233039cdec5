"""Train/valid/test split protocols on hand-made data (exact cases) and on MovieLens 100K."""

import numpy as np
import pytest

from llm4rec_jax.data import dataset, splits
from llm4rec_jax.data.readers import read_movielens_100k
from llm4rec_jax.errors import DataError


def _raw_items(ds, ids):
  return [str(ds.items.raw_ids[i]) for i in ids]


def _raw_cases(ds, ex):
  """{raw user: (raw history, raw target)} of an EvalExamples."""
  return {str(ds.users.raw_ids[u]): (_raw_items(ds, ex.history(i)), str(ds.items.raw_ids[t]))
          for i, (u, t) in enumerate(zip(ex.users, ex.targets))}


def _raw_train(ds, split):
  return {str(ds.users.raw_ids[u]): _raw_items(ds, s) for u, s in enumerate(split.train) if u}


# (user, item, timestamp), deliberately not in time order.
LOO_ROWS = [
    ('a', 'i3', 30), ('b', 'i2', 15), ('a', 'i1', 10), ('c', 'i4', 50), ('a', 'i4', 40),
    ('b', 'i1', 35), ('d', 'i5', 12), ('a', 'i2', 20), ('c', 'i3', 5), ('b', 'i5', 25),
]


@pytest.fixture
def loo_ds():
  u, i, t = zip(*LOO_ROWS)
  return dataset.from_raw('toy', u, i, t)


def test_leave_one_out_exact(loo_ds):
  ds = loo_ds
  split = splits.leave_one_out(ds)
  assert split.protocol == 'leave_one_out'
  assert len(split.train) == ds.num_users + 1 and len(split.train[0]) == 0
  assert _raw_train(ds, split) == {'a': ['i1', 'i2'], 'b': ['i2'], 'c': ['i3', 'i4'], 'd': ['i5']}
  # Users with < 3 interactions (c, d) only contribute training data.
  assert _raw_cases(ds, split.valid) == {'a': (['i1', 'i2'], 'i3'), 'b': (['i2'], 'i5')}
  assert _raw_cases(ds, split.test) == {'a': (['i1', 'i2', 'i3'], 'i4'), 'b': (['i2', 'i5'], 'i1')}
  assert len(split.valid) == len(split.test) == 2
  assert split.test.offsets.tolist() == [0, 3, 5]
  assert split.test.users.dtype == np.int32 and split.test.targets.dtype == np.int32
  assert split.num_train_interactions() == 6


def test_leave_one_out_needs_a_user_with_three_interactions():
  ds = dataset.from_raw('short', ['a', 'a', 'b'], ['x', 'y', 'x'], [1, 2, 3])
  with pytest.raises(DataError):
    splits.leave_one_out(ds)


# 16 interactions at distinct times 100..1600; with valid/test fractions 0.25 the cuts are
# sorted[8] = 900 (valid window [900, 1300)) and sorted[12] = 1300 (test window [1300, inf)).
TEMPORAL_ROWS = [
    ('a', 'i1', 100), ('a', 'i2', 300), ('a', 'i3', 900), ('a', 'i4', 1000), ('a', 'i5', 1300),
    ('a', 'i6', 1400),
    ('b', 'i2', 200), ('b', 'i1', 1500),
    ('c', 'i3', 1200), ('c', 'i4', 1600),
    ('d', 'i4', 400), ('d', 'i5', 500), ('d', 'i6', 600), ('d', 'i7', 700), ('d', 'i1', 800),
    ('e', 'i2', 1100),
]


def test_temporal_exact_cuts():
  rows = [TEMPORAL_ROWS[i] for i in np.random.default_rng(0).permutation(len(TEMPORAL_ROWS))]
  u, i, t = zip(*rows)
  ds = dataset.from_raw('toy', u, i, t)
  split = splits.temporal(ds, valid_fraction=0.25, test_fraction=0.25)
  assert split.protocol == 'temporal'
  # Training: everything strictly before the validation cut (900 itself is in the window).
  assert _raw_train(ds, split) == {'a': ['i1', 'i2'], 'b': ['i2'], 'c': [],
                                   'd': ['i4', 'i5', 'i6', 'i7', 'i1'], 'e': []}
  # Valid: first interaction in [900, 1300) with history = everything before it; c and e start in
  # the window (no history) and b and d have nothing there.
  assert _raw_cases(ds, split.valid) == {'a': (['i1', 'i2'], 'i3')}
  # Test: first interaction at >= 1300 (a at exactly 1300); histories include validation-window items.
  assert _raw_cases(ds, split.test) == {'a': (['i1', 'i2', 'i3', 'i4'], 'i5'),
                                        'b': (['i2'], 'i1'), 'c': (['i3'], 'i4')}
  assert split.num_train_interactions() == 8


def test_known_sequences_hold_what_precedes_the_cases_and_no_target():
  u, i, t = zip(*LOO_ROWS)
  ds = dataset.from_raw('toy', u, i, t)
  split = splits.leave_one_out(ds)

  def raw(seqs):
    return {str(ds.users.raw_ids[u]): _raw_items(ds, s) for u, s in enumerate(seqs) if u}

  # Test: a and b also count their validation targets (i3, i5), never their test targets.
  assert raw(splits.known_sequences(split.train, split.test)) == {
      'a': ['i1', 'i2', 'i3'], 'b': ['i2', 'i5'], 'c': ['i3', 'i4'], 'd': ['i5']}
  assert raw(splits.known_sequences(split.train, split.valid)) == _raw_train(ds, split)
  rows = [TEMPORAL_ROWS[i] for i in np.random.default_rng(0).permutation(len(TEMPORAL_ROWS))]
  ds = dataset.from_raw('toy', *zip(*rows))
  split = splits.temporal(ds, valid_fraction=0.25, test_fraction=0.25)
  # Temporal: a test history holds the validation window; users without a test case (d, e) keep
  # their training sequence.
  assert raw(splits.known_sequences(split.train, split.test)) == {
      'a': ['i1', 'i2', 'i3', 'i4'], 'b': ['i2'], 'c': ['i3'], 'd': ['i4', 'i5', 'i6', 'i7', 'i1'],
      'e': []}
  # A user with several cases (prefixes of one sequence) keeps the shortest history.
  two = splits.EvalExamples.from_lists([1, 1], [np.array([4, 5, 6]), np.array([4])], [7, 5])
  assert [s.tolist() for s in splits.known_sequences([np.zeros(0), np.array([4])], two)] == [
      [], [4]]


def test_temporal_without_timestamps_names_the_protocol_field():
  u, i, _ = zip(*LOO_ROWS)
  ds = dataset.from_raw('no-time', u, i)
  assert not ds.has_timestamps
  for call in (lambda: splits.temporal(ds), lambda: splits.make_split(ds, 'temporal')):
    with pytest.raises(DataError, match='split.protocol') as info:
      call()
    assert info.value.field == 'split.protocol'
  with pytest.raises(DataError, match='split.protocol'):
    splits.make_split(ds, 'random')
  assert splits.make_split(ds, 'leave_one_out').protocol == 'leave_one_out'


@pytest.fixture(scope='module')
def ml100k(data_dir):
  return read_movielens_100k(data_dir / 'movielens/ml-100k')


def test_leave_one_out_ml100k_reconstructs_sequences(ml100k):
  ds = ml100k
  split = splits.leave_one_out(ds)
  assert len(split.test) == 943 and len(split.valid) == 943
  assert split.num_train_interactions() == ds.num_interactions - 2 * 943
  seqs = ds.sequences()
  times = ds.timestamp_sequences()
  assert split.test.users.tolist() == list(range(1, 944))
  assert split.valid.users.tolist() == list(range(1, 944))
  for n, u in enumerate(split.test.users):
    assert np.all(np.diff(times[u]) >= 0)
    train = split.train[u]
    rebuilt = np.concatenate([train, [split.valid.targets[n], split.test.targets[n]]])
    np.testing.assert_array_equal(rebuilt, seqs[u])
    np.testing.assert_array_equal(split.valid.history(n), train)
    np.testing.assert_array_equal(split.test.history(n), seqs[u][:-1])


def test_subset_and_sample_gather_the_right_cases():
  hists = [[1, 2], [3], [4, 5, 6], [7], [8, 9]]
  ex = splits.EvalExamples.from_lists([10, 11, 12, 13, 14], hists, [20, 21, 22, 23, 24])
  sub = splits.subset(ex, np.array([False, True, True, False, True]))
  assert sub.users.tolist() == [11, 12, 14] and sub.targets.tolist() == [21, 22, 24]
  assert [sub.history(i).tolist() for i in range(3)] == [[3], [4, 5, 6], [8, 9]]
  assert splits.subset(ex, np.array([4, 0])).users.tolist() == [14, 10]
  assert splits.sample(ex, 0) is ex and splits.sample(ex, 5) is ex
  a, b = splits.sample(ex, 3, seed=1), splits.sample(ex, 3, seed=1)
  assert len(a) == 3 and a.users.tolist() == b.users.tolist()
  assert a.users.tolist() == sorted(a.users.tolist())  # case order kept
  for i, u in enumerate(a.users.tolist()):
    assert a.history(i).tolist() == hists[u - 10]
