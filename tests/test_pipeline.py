"""Training windows, the Grain training pipeline (shuffle, slicing, iterator state) and eval arrays."""

import collections

import numpy as np
import pytest

from llm4rec_jax.data import pipeline
from llm4rec_jax.data.splits import EvalExamples

SEQS = [np.zeros(0, np.int32), np.array([1, 2, 3], np.int32), np.array([4], np.int32),
        np.arange(5, 13, dtype=np.int32)]  # user 3: 5..12 (8 items)


def test_make_windows_last_window_only():
  windows, users = pipeline.make_windows(SEQS, max_len=3)
  assert windows.dtype == np.int32 and users.dtype == np.int32
  np.testing.assert_array_equal(windows, [[0, 1, 2, 3], [9, 10, 11, 12]])
  np.testing.assert_array_equal(users, [1, 3])


def test_make_windows_all_windows_exact():
  windows, users = pipeline.make_windows(SEQS, max_len=3, all_windows=True)
  np.testing.assert_array_equal(windows, [[0, 1, 2, 3], [9, 10, 11, 12], [6, 7, 8, 9],
                                          [0, 0, 5, 6]])
  np.testing.assert_array_equal(users, [1, 3, 3, 3])


@pytest.mark.parametrize('length', range(2, 15))
@pytest.mark.parametrize('max_len', [1, 3, 4])
def test_make_windows_all_windows_targets_each_item_once(length, max_len):
  seq = np.arange(100, 100 + length, dtype=np.int32)
  windows, users = pipeline.make_windows([np.zeros(0, np.int32), seq], max_len, all_windows=True)
  assert windows.shape[1] == max_len + 1 and np.all(users == 1)
  inputs, targets = windows[:, :-1], windows[:, 1:]
  # Every window is a contiguous stretch of the sequence, left-padded.
  for w in windows:
    real = w[w > 0]
    assert np.all(w[:len(w) - len(real)] == 0)
    np.testing.assert_array_equal(np.diff(real), 1)
  # Each item after the first is the target of exactly one position that reads a real item.
  predicted = targets[(targets > 0) & (inputs > 0)]
  assert sorted(predicted.tolist()) == seq[1:].tolist()
  assert collections.Counter(targets[targets > 0].tolist())[int(seq[-1])] == 1


@pytest.mark.parametrize('all_windows', [False, True])
def test_window_ends_locate_each_window_in_its_sequence(all_windows):
  windows, users = pipeline.make_windows(SEQS, max_len=3, all_windows=all_windows)
  ends = pipeline.window_ends(SEQS, max_len=3, all_windows=all_windows)
  np.testing.assert_array_equal(ends, [3, 8] if not all_windows else [3, 8, 5, 2])
  for w, u, e in zip(windows, users, ends):  # the window is the sequence's items up to e
    real = w[w > 0]
    np.testing.assert_array_equal(real, SEQS[u][e - len(real):e])


def test_make_windows_empty():
  windows, users = pipeline.make_windows([np.zeros(0, np.int32), np.array([7], np.int32)], 4)
  assert windows.shape == (0, 5) and users.shape == (0,)


def _toy(num=10, max_len=4):
  windows = (np.arange(num * (max_len + 1), dtype=np.int32).reshape(num, max_len + 1) + 1)
  return windows, np.arange(num, dtype=np.int32)


def _batches(ds, n=None):
  out = []
  for b in ds.to_iter_dataset():
    out.append(b)
    if n is not None and len(out) == n:
      break
  return out


def test_train_dataset_shapes_shift_and_epochs():
  windows, users = _toy()
  ds = pipeline.train_dataset(windows, users, global_batch_size=4, seed=3, num_epochs=2)
  batches = _batches(ds)
  assert len(batches) == 5  # 20 records, drop_remainder
  for b in batches:
    assert set(b) == {'inputs', 'targets', 'users'}
    assert b['inputs'].shape == (4, 4) and b['targets'].shape == (4, 4) and b['users'].shape == (4,)
    np.testing.assert_array_equal(b['inputs'], windows[b['users']][:, :-1])
    np.testing.assert_array_equal(b['targets'], windows[b['users']][:, 1:])
    np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
  order = np.concatenate([b['users'] for b in batches])
  epoch1, epoch2 = order[:10], order[10:]
  assert sorted(epoch1.tolist()) == list(range(10)) and sorted(epoch2.tolist()) == list(range(10))
  assert epoch1.tolist() != epoch2.tolist()
  assert epoch1.tolist() != list(range(10))  # actually shuffled


def test_train_dataset_no_target_at_padded_inputs():
  windows, users = pipeline.make_windows(SEQS, max_len=3, all_windows=True)
  batches = _batches(pipeline.train_dataset(windows, users, global_batch_size=4, seed=0,
                                            num_epochs=1))
  assert len(batches) == 1
  b = batches[0]
  for inp, tgt in zip(b['inputs'], b['targets']):
    row = next(r for r in windows if np.array_equal(r[:-1], inp))
    # The model reads window[:-1] and predicts window[1:], except where it reads only padding.
    np.testing.assert_array_equal(tgt, np.where(inp > 0, row[1:], 0))
  got = sorted(np.concatenate([t[t > 0] for t in b['targets']]).tolist())
  assert got == sorted(SEQS[1][1:].tolist() + SEQS[3][1:].tolist())  # each non-first item once


def test_train_dataset_deterministic_per_seed():
  windows, users = _toy()
  order = lambda seed: np.concatenate(
      [b['users'] for b in _batches(pipeline.train_dataset(windows, users, global_batch_size=2,
                                                           seed=seed, num_epochs=3))]).tolist()
  assert order(7) == order(7)
  assert order(7) != order(8)


def test_train_dataset_process_slices_make_up_global_batches():
  windows, users = _toy(num=12)
  kw = dict(global_batch_size=6, seed=1, num_epochs=None)
  glob = _batches(pipeline.train_dataset(windows, users, **kw), 5)
  local = [_batches(pipeline.train_dataset(windows, users, process_index=p, process_count=2, **kw), 5)
           for p in range(2)]
  for i in range(5):
    for p in range(2):
      assert local[p][i]['inputs'].shape == (3, 4)
    # Process blocks in process order are the global batch, rows in the same order.
    for key in ('inputs', 'targets', 'users'):
      np.testing.assert_array_equal(np.concatenate([local[0][i][key], local[1][i][key]]),
                                    glob[i][key])
  with pytest.raises(ValueError):
    pipeline.train_dataset(windows, users, global_batch_size=5, seed=0, num_epochs=1,
                           process_count=2)


@pytest.mark.parametrize('k', [0, 3, 7])
def test_train_iterator_state_resumes(k):
  windows, users = _toy()
  make = lambda: pipeline.train_dataset(windows, users, global_batch_size=3, seed=5, num_epochs=4)
  it = iter(make().to_iter_dataset())
  for _ in range(k):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(make().to_iter_dataset())
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_eval_arrays_exact():
  ex = EvalExamples.from_lists([1, 2, 3], [[1, 2, 3, 4, 5], [6], [7, 8]], [9, 10, 11])
  arr = pipeline.eval_arrays(ex, max_len=3, batch_size=4)
  np.testing.assert_array_equal(arr.inputs, [[3, 4, 5], [0, 0, 6], [0, 7, 8], [0, 0, 0]])
  np.testing.assert_array_equal(arr.dense_seen(), [[1, 2, 3, 4, 5, 0, 0, 0],
                                                   [6, 0, 0, 0, 0, 0, 0, 0],
                                                   [7, 8, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(arr.targets, [9, 10, 11, 0])
  np.testing.assert_array_equal(arr.users, [1, 2, 3, 0])
  np.testing.assert_array_equal(arr.valid, [True, True, True, False])
  for a in (arr.inputs, arr.seen_items, arr.targets, arr.users):
    assert a.dtype == np.int32
  (batch,) = pipeline.iterate_eval(arr, 4)
  assert batch['seen_rows'].shape == batch['seen_cols'].shape == (1024,)  # the smallest bucket
  pairs = set(zip(batch['seen_rows'][:8].tolist(), batch['seen_cols'][:8].tolist()))
  assert pairs == {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 6), (2, 7), (2, 8)}
  assert not batch['seen_rows'][8:].any() and not batch['seen_cols'][8:].any()  # (0, 0) padding
  # max_seen keeps the last items of each history.
  capped = pipeline.eval_arrays(ex, max_len=3, batch_size=4, max_seen=2)
  assert [h.tolist() for h in capped.histories(slice(0, 3))] == [[4, 5], [6], [7, 8]]


def test_eval_arrays_padding_and_batches():
  rng = np.random.default_rng(0)
  hists = [rng.integers(1, 50, rng.integers(1, 30)) for _ in range(11)]
  ex = EvalExamples.from_lists(np.arange(1, 12), hists, np.arange(1, 12))
  arr = pipeline.eval_arrays(ex, max_len=6, batch_size=4)
  assert arr.inputs.shape == (12, 6) and len(arr.seen_offsets) == 13
  assert arr.valid.sum() == 11 and not arr.valid[11]
  for i, h in enumerate(hists):
    tail = h[-6:]
    np.testing.assert_array_equal(arr.inputs[i, 6 - len(tail):], tail)
    assert np.all(arr.inputs[i, :6 - len(tail)] == 0)
    np.testing.assert_array_equal(arr.history(i), h)  # the whole history
  assert len(arr.history(11)) == 0
  batches = list(pipeline.iterate_eval(arr, 4))
  assert len(batches) == 3
  assert all(len(b[k]) == 4 for b in batches for k in b if not k.startswith('seen_'))
  np.testing.assert_array_equal(np.concatenate([b['targets'] for b in batches]), arr.targets)
  for j, b in enumerate(batches):  # each batch's pairs are exactly its rows' histories
    got = sorted(zip(b['seen_rows'].tolist(), b['seen_cols'].tolist()))
    want = sorted([(r, int(v)) for r in range(4) if 4 * j + r < 11 for v in hists[4 * j + r]])
    pad = len(got) - len(want)
    assert got == sorted(want + [(0, 0)] * pad)
  # No cases at all still gives one fully padded batch.
  empty = pipeline.eval_arrays(EvalExamples.from_lists([], [], []), max_len=3, batch_size=4)
  assert empty.inputs.shape == (4, 3) and not empty.valid.any()


def test_eval_arrays_memory_follows_interactions_not_longest_history():
  """One user with 2M interactions among 5,000 short histories: the evaluation arrays cost the
  interactions (CSR) plus cases x max_len, never cases x longest history (that would be 40 GB)."""
  rng = np.random.default_rng(0)
  hists = [rng.integers(1, 1000, 5) for _ in range(4999)] + [rng.integers(1, 1000, 2_000_000)]
  ex = EvalExamples.from_lists(np.arange(1, 5001), hists, np.ones(5000, np.int32))
  arr = pipeline.eval_arrays(ex, max_len=50, batch_size=256)
  nbytes = sum(getattr(arr, f).nbytes for f in ('inputs', 'targets', 'users', 'valid',
                                                'seen_offsets', 'seen_items'))
  assert nbytes < 2 * (4 * 2_025_000 + 5120 * 50 * 4)
  np.testing.assert_array_equal(arr.inputs[4999], hists[-1][-50:])
  sizes = [b['seen_rows'].size for b in pipeline.iterate_eval(arr, 256)]
  assert max(sizes[:-1]) == 2048 and sizes[-1] == 1 << 21  # buckets follow each batch's pairs


def test_train_dataset_batches_are_those_of_shuffling_the_records():
  """Shuffling indices and gathering rows per batch gives the batches of shuffling the records."""
  import grain  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  windows = rng.integers(0, 50, (37, 6)).astype(np.int32)
  users = rng.permutation(37).astype(np.int32)
  weights = rng.random((37, 6)).astype(np.float32)
  for p in range(2):
    got = pipeline.train_dataset(windows, users, global_batch_size=8, seed=5, num_epochs=2,
                                 process_index=p, process_count=2, weights=weights)
    ref = grain.MapDataset.source(pipeline._WindowSource(windows, users, weights))  # pylint: disable=protected-access
    ref = ref.seed(5).shuffle().repeat(2).batch(4, drop_remainder=True)[p::2]
    ref = ref.map(pipeline._to_model_batch)  # pylint: disable=protected-access
    assert len(got) == len(ref) == 9  # 74 records, batches of 4, every other one
    for a, b in zip(got, ref):
      assert sorted(a) == sorted(b) == ['inputs', 'target_weights', 'targets', 'users']
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
