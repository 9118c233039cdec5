"""The Beam preparation (raw JSON lines -> sharded ArrayRecord sequences) against the in-memory
reader, its errors, and the per-process Grain input against ``pipeline.make_windows`` and
``splits.leave_one_out``."""

import collections
import gzip
import json

import numpy as np
import pytest

from llm4rec_jax.data import pipeline, readers, splits
from llm4rec_jax.data.prepare import generate, seqrecord, source
from llm4rec_jax.errors import DataError

beam_pipeline = pytest.importorskip('llm4rec_jax.data.prepare.beam_pipeline')


def _prepare(src, out, **kwargs):
  opts = dict(num_shards=3, chunk_bytes=40_000, block_bytes=9_000)  # many chunks and blocks
  opts.update(kwargs)
  return beam_pipeline.run(beam_pipeline.PrepareOptions(input=str(src), output=str(out), **opts))


def _by_raw_user(prepared: source.Prepared):
  """raw user -> (raw items, timestamps, ratings), from every record; checks the user numbering."""
  items = seqrecord.read_items(prepared.directory)
  src = prepared.source(0, prepared.num_users)
  out = {}
  for r in range(prepared.num_users):
    seq = seqrecord.decode(src[r])
    assert seq.user_index == r + 1 and len(seq.items) == prepared.lengths[r]
    out[seq.user_id] = (list(items[seq.items]), list(seq.timestamps), list(seq.ratings))
  return out


def _reader_by_raw_user(ds):
  order = ds.order()
  bounds = np.searchsorted(ds.user[order], np.arange(ds.num_users + 2))
  return {ds.users.raw_ids[u]: (list(ds.items.raw_ids[ds.item[order[bounds[u]:bounds[u + 1]]]]),
                                list(ds.timestamp[order[bounds[u]:bounds[u + 1]]]),
                                list(ds.rating[order[bounds[u]:bounds[u + 1]]]))
          for u in range(1, ds.num_users + 1)}


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp('release')
  info = generate.generate(root / 'raw', scale=1e-4, seed=3, users_per_block=500)
  return root, info


@pytest.fixture(scope='module')
def prepared(release):
  root, _ = release
  _prepare(root / 'raw', root / 'files')
  return source.Prepared(root / 'files')


def test_generated_release_equals_the_reader(release, prepared):
  root, info = release
  ref = readers.read_amazon_2023(root / 'raw')
  m = prepared.manifest
  assert (m['num_users'], m['num_items'], m['num_interactions']) == (
      ref.num_users, ref.num_items, ref.num_interactions) == (
          info['users'], info['items_rated'], info['ratings'])
  assert _by_raw_user(prepared) == _reader_by_raw_user(ref)
  # Items are numbered in sorted raw-id order; the shards' users partition 1..num_users.
  assert list(seqrecord.read_items(prepared.directory)[1:]) == sorted(ref.items.raw_ids[1:])
  assert sum(s['users'] for s in m['shards']) == m['num_users']
  assert not any(p.name.startswith('_tmp') for p in (root / 'files').iterdir())


def test_beam_shuffle_and_gzip_give_the_same_records(release, prepared, tmp_path):
  root, _ = release
  with open(root / 'raw' / 'Electronics.jsonl', 'rb') as f, gzip.open(
      tmp_path / 'Electronics.jsonl.gz', 'wb') as g:
    g.write(f.read())
  _prepare(tmp_path / 'Electronics.jsonl.gz', tmp_path / 'out', shuffle='beam')
  other = source.Prepared(tmp_path / 'out')
  assert other.manifest['shards'] == prepared.manifest['shards']
  a, b = prepared.source(0, prepared.num_users), other.source(0, other.num_users)
  assert all(a[i] == b[i] for i in range(prepared.num_users))


@pytest.mark.parametrize('line, message, field', [
    ('{"user_id": "u2", "parent_asin": "i1", "rating": "five", "timestamp": 1}', 'a number',
     'rating'),
    ('{"user_id": "u2", "parent_asin": "i1", "rating": 4.0}', 'missing', 'timestamp'),
    ('{"user_id": "u2", "parent_asin": "i1", "rating": 4.0, "timestamp": 1', 'invalid JSON', None),
    ('{"user_id": "", "parent_asin": "i1", "rating": 4.0, "timestamp": 1}', 'missing', 'user_id'),
])
def test_malformed_line_names_file_line_and_field(tmp_path, line, message, field):
  good = [json.dumps(dict(user_id=f'u{k % 3}', parent_asin=f'i{k}', rating=5.0, timestamp=1000 * k,
                          text='x' * 50)) for k in range(400)]
  lines = good[:250] + ['', line] + good[250:]  # a blank line before it: line 252
  (tmp_path / 'Toys.jsonl').write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataError, match=message) as e:
    _prepare(tmp_path, tmp_path / 'out', block_bytes=2_000, chunk_bytes=5_000)
  assert e.value.line == 252 and e.value.field == field
  assert e.value.path.endswith('Toys.jsonl')
  assert f'Toys.jsonl:252' in str(e.value)


def test_yelp_open_reviews_equal_the_reader(tmp_path):
  rng = np.random.default_rng(0)
  with open(tmp_path / 'yelp_academic_dataset_review.json', 'w', encoding='utf-8') as f:
    for k in range(300):
      f.write(json.dumps(dict(review_id=f'r{k}', user_id=f'user{rng.integers(40)}',
                              business_id=f'biz{rng.integers(25)}', stars=int(rng.integers(1, 6)),
                              date=f'2019-0{rng.integers(1, 10)}-1{rng.integers(10)} 12:00:0{k % 10}',
                              text='ok')) + '\n')
  _prepare(tmp_path, tmp_path / 'out', format='yelp-open', block_bytes=3_000)
  ref = readers.read_yelp_open(tmp_path)
  assert _by_raw_user(source.Prepared(tmp_path / 'out')) == _reader_by_raw_user(ref)



def test_yelp_open_bad_date_names_file_line_and_field(tmp_path):
  """The line-by-line path of the Yelp reviews parser (dates as text) reports a bad date."""
  lines = [json.dumps(dict(review_id=f'r{k}', user_id=f'user{k % 7}', business_id=f'biz{k % 5}',
                           stars=3, date=f'2019-03-1{k % 10} 12:00:00', text='ok'))
           for k in range(200)]
  lines[120] = lines[120].replace('2019-03-10 12:00:00', 'yesterday')
  (tmp_path / 'yelp_academic_dataset_review.json').write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataError, match='expected a date') as e:
    _prepare(tmp_path, tmp_path / 'out', format='yelp-open', block_bytes=3_000)
  assert (e.value.line, e.value.field) == (121, 'date')
  assert 'yelp_academic_dataset_review.json:121' in str(e.value)


def test_windows_and_eval_cases_equal_the_in_memory_split(release, prepared):
  root, _ = release
  ref = readers.read_amazon_2023(root / 'raw')
  split = splits.leave_one_out(ref)
  items = seqrecord.read_items(prepared.directory)
  users = np.concatenate([[''], [seqrecord.decode(r).user_id
                                 for r in prepared.source(0, prepared.num_users)]])
  for all_windows in (False, True):
    w, u = pipeline.make_windows(split.train, 4, all_windows=all_windows)
    want = sorted((ref.users.raw_ids[a], tuple(ref.items.raw_ids[r])) for r, a in zip(w, u))
    slices = [source.TrainWindows(prepared, 4, all_windows=all_windows, process_index=p,
                                  process_count=3) for p in range(3)]
    got = [(users[x['user']], tuple(items[x['window']])) for s in slices
           for x in (s[i] for i in range(len(s)))]
    # Equal slices; together every window of make_windows but the (W mod 3) last ones.
    assert len({len(s) for s in slices}) == 1
    assert not collections.Counter(got) - collections.Counter(want)
    assert sum((collections.Counter(want) - collections.Counter(got)).values()) == len(want) % 3
  for which in ('valid', 'test'):
    ex = [source.eval_examples(prepared, which, process_index=p, process_count=2) for p in range(2)]
    mine = {(users[e.users[i]], tuple(items[e.history(i)]), items[e.targets[i]])
            for e in ex for i in range(len(e))}
    r = getattr(split, which)
    theirs = {(ref.users.raw_ids[r.users[i]], tuple(ref.items.raw_ids[r.history(i)]),
               ref.items.raw_ids[r.targets[i]]) for i in range(len(r))}
    assert mine == theirs and sum(len(e) for e in ex) == len(r)
    assert not set(ex[0].users) & set(ex[1].users)


def test_beauty_shards_give_make_windows_exactly(data_dir, tmp_path):
  ds = readers.load_dataset('beauty')
  source.write_dataset(ds, tmp_path, num_shards=3)
  prep = source.Prepared(tmp_path)
  split = splits.leave_one_out(ds)
  w, u = pipeline.make_windows(split.train, 8, all_windows=True)
  slices = [source.TrainWindows(prep, 8, all_windows=True, process_index=p, process_count=2)
            for p in range(2)]
  rows = [s[i] for s in slices for i in range(len(s))]
  np.testing.assert_array_equal(np.stack([r['window'] for r in rows]), w[:len(rows)])
  np.testing.assert_array_equal([r['user'] for r in rows], u[:len(rows)])
  assert len(rows) == len(w) - len(w) % 2
  # Process slices partition the users: process 0 ends where process 1 starts.
  assert rows[len(slices[0]) - 1]['user'] <= rows[len(slices[0])]['user']
  for which in ('valid', 'test'):
    ex = [source.eval_examples(prep, which, process_index=p, process_count=2) for p in range(2)]
    ref = getattr(split, which)
    np.testing.assert_array_equal(np.concatenate([e.users for e in ex]), ref.users)
    np.testing.assert_array_equal(np.concatenate([e.targets for e in ex]), ref.targets)
    np.testing.assert_array_equal(np.concatenate([e.items for e in ex]), ref.items)


def test_train_batches_resume_from_iterator_state(prepared):
  ds = source.train_dataset(prepared, max_len=6, global_batch_size=16, seed=1, num_epochs=None,
                            process_index=1, process_count=2)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  it2 = iter(ds)
  it2.set_state(state)
  for a, b in zip(want, [next(it2) for _ in range(4)]):
    assert set(a) == {'inputs', 'targets', 'users'} and a['inputs'].shape == (8, 6)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
