"""ScaNN item index and the exact sharded top-k: recall, save/load, mismatch refusal, upsert/delete."""

import numpy as np
import pytest

from llm4rec_jax import config_base, partitioning
from llm4rec_jax.retrieval import (IndexMismatchError, ItemIndex, default_params, exact_top_k,
                                   put_table)

RULES = config_base.DEFAULT_RULES


def _data(n=6000, d=16, b=64, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32))


def _recall(found, truth):
  return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope='module')
def tree_index():
  table, _ = _data()
  params = default_params(len(table), table.shape[1], dict(brute_force_below=1000,
                                                            leaves_to_search=24))
  return ItemIndex.build(table, np.arange(1, len(table) + 1), params=params, step=7)


def test_exact_top_k_sharded_matches_numpy():
  table, queries = _data(n=3001, d=8)
  valid = np.ones(len(table), bool)
  valid[::7] = False  # masked rows never come back
  mesh = partitioning.make_mesh(dict(axes=('data', 'fsdp', 'tensor'), shape=(2, 1, 4)))
  t, v = put_table(table, valid, mesh, RULES)
  assert t.sharding.spec[0] == ('tensor', 'fsdp') or t.sharding.spec[0] == 'tensor'
  ids, scores = exact_top_k(queries, t, v, 10, mesh, RULES, chunk=128)
  s = queries @ table.T
  s[:, ~valid] = -np.inf
  ref = np.argsort(-s, axis=1)[:, :10]
  np.testing.assert_array_equal(ids, ref)
  np.testing.assert_allclose(scores, np.take_along_axis(s, ref, axis=1), rtol=1e-5, atol=1e-5)


def test_scann_recall_against_exact(tree_index):
  table, queries = _data()
  assert tree_index.params.num_leaves > 0  # a real tree + AH + reorder index, not brute force
  mesh = partitioning.make_mesh(dict(axes=('data', 'fsdp', 'tensor'), shape=(1, 1, 8)))
  t, v = put_table(table, None, mesh, RULES)
  truth, _ = exact_top_k(queries, t, v, 10, mesh, RULES)
  found, scores = tree_index.search_batched(queries, 10)
  assert _recall(found - 1, truth) >= 0.85  # ids were 1-based
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
  # Searching every leaf with a deep re-order is exact.
  found_all, _ = tree_index.search_batched(queries, 10, leaves_to_search=tree_index.params.num_leaves,
                                           reorder=len(table))
  assert _recall(found_all - 1, truth) >= 0.99


def test_small_catalog_is_brute_force_and_exact():
  table, queries = _data(n=500)
  index = ItemIndex.build(table)
  assert index.params.num_leaves == 0
  found, _ = index.search_batched(queries, 5)
  np.testing.assert_array_equal(found, np.argsort(-(queries @ table.T), axis=1)[:, :5])
  ids, scores = index.search(queries[0], 600)  # more than the catalog: padded with -1 / -inf
  assert (ids >= 0).sum() == 500 and np.all(ids[500:] == -1) and np.all(np.isneginf(scores[500:]))
  index.upsert([777], 10.0 * queries[1])  # brute force is editable in place too
  assert index.search(queries[1], 1)[0][0] == 777


def test_save_load_round_trip(tree_index, tmp_path):
  table, queries = _data()
  before = tree_index.search_batched(queries, 10)
  tree_index.save(tmp_path / 'idx')
  loaded = ItemIndex.load(tmp_path / 'idx', step=7, vectors=table)
  after = loaded.search_batched(queries, 10)
  np.testing.assert_array_equal(before[0], after[0])
  np.testing.assert_allclose(before[1], after[1])
  assert loaded.meta.step == 7 and loaded.meta.embedding == 'item_table'
  assert loaded.params == tree_index.params and len(loaded) == len(table)


def test_load_refuses_mismatched_checkpoint(tree_index, tmp_path):
  table, _ = _data()
  tree_index.save(tmp_path / 'idx')
  with pytest.raises(IndexMismatchError, match='step 7.*step 8'):
    ItemIndex.load(tmp_path / 'idx', step=8)
  other = table.copy()
  other[3] += 0.5  # another checkpoint's embeddings
  with pytest.raises(IndexMismatchError, match='differ'):
    ItemIndex.load(tmp_path / 'idx', step=7, vectors=other)
  with pytest.raises(IndexMismatchError, match='shape'):
    ItemIndex.load(tmp_path / 'idx', step=7, vectors=table[:-1])
  # Float noise (a recomputation elsewhere) is not a mismatch.
  ItemIndex.load(tmp_path / 'idx', step=7, vectors=table * (1 + 1e-7))
  with pytest.raises(IndexMismatchError, match='not an index'):
    ItemIndex.load(tmp_path)


def test_upsert_makes_new_item_findable_and_delete_removes_it():
  table, queries = _data(seed=1)
  params = default_params(len(table), table.shape[1], dict(brute_force_below=1000))
  index = ItemIndex.build(table, params=params)
  q = queries[0]
  new_id = 10_000
  assert new_id not in index.search(q, 10)[0]
  index.upsert([new_id], 3.0 * q / np.linalg.norm(q) * np.abs(table).max())
  ids, _ = index.search(q, 10)
  assert ids[0] == new_id and len(index) == len(table) + 1
  # Upserting an existing id replaces its vector (no duplicate).
  index.upsert([5], 4.0 * q / np.linalg.norm(q) * np.abs(table).max())
  ids, _ = index.search(q, 10)
  assert ids[0] == 5 and list(ids).count(5) == 1 and len(index) == len(table) + 1
  index.delete([new_id, 5])
  ids, _ = index.search(q, 10)
  assert new_id not in ids and 5 not in ids and len(index) == len(table) - 1
  assert index.meta.upserts == 2 and index.meta.deletes == 2
  with pytest.raises(KeyError):
    index.delete([new_id])


def test_default_params_scale_with_catalog():
  small = default_params(1000, 64)
  assert small.num_leaves == 0
  mid, big = default_params(100_000, 64), default_params(1_000_000, 64)
  assert 0 < mid.num_leaves < big.num_leaves == 1000
  assert big.leaves_to_search == 50 and big.reorder == 100
  assert default_params(1_000_000, 64, dict(num_leaves=2000, reorder=300)).num_leaves == 2000
