"""Semantic IDs: residual k-means codes, prefix trie, code head and constrained beam search."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llm4rec_jax.errors import DataError
from llm4rec_jax.model.decoder import DecoderConfig, ItemDecoder
from llm4rec_jax.model.semantic_head import (SemanticIdHead, constrained_beam_search,
                                             semantic_id_loss)
from llm4rec_jax.model.semantic_ids import PAD_CODE, SemanticIds, rq_kmeans

beam_search = nnx.jit(constrained_beam_search, static_argnames=('beam_size', 'top_k'))


def assert_valid_ids(sid: SemanticIds, num_items: int) -> None:
  """Shape, padding row, code ranges and one unique tuple per item."""
  assert sid.codes.shape == (num_items + 1, sid.num_levels)
  assert sid.codes.dtype == np.int32
  assert np.all(sid.codes[0] == PAD_CODE)
  assert np.all(sid.codes[1:] >= 0)
  assert np.all(sid.codes[1:] < np.array(sid.codebook_sizes))
  assert len({tuple(row) for row in sid.codes[1:].tolist()}) == num_items
  np.testing.assert_array_equal(sid.to_items(sid.codes[1:]), np.arange(1, num_items + 1))


@nnx.jit
def brute_force_log_probs(head: SemanticIdHead, hidden: jax.Array, codes: jax.Array) -> jax.Array:
  """Total log-prob [B, n] of every item tuple ``codes`` [n, L], level by level from the logits."""
  batch, n = hidden.shape[0], codes.shape[0]
  h = jnp.broadcast_to(hidden[:, None], (batch, n, hidden.shape[-1]))
  prefix = jnp.broadcast_to(codes[None], (batch, n, codes.shape[1]))
  total = jnp.zeros((batch, n))
  for level in range(codes.shape[1]):
    logp = jax.nn.log_softmax(head.level_logits(level, h, prefix[..., :level]), axis=-1)
    total += jnp.take_along_axis(logp, prefix[..., level:level + 1], axis=-1)[..., 0]
  return total


@nnx.jit
def teacher_forced_total(head: SemanticIdHead, hidden: jax.Array, codes: jax.Array) -> jax.Array:
  """Total log-prob [B, n] of every item from :meth:`SemanticIdHead.log_probs`."""
  return head.log_probs(hidden[:, None], codes[None]).sum(-1)


# ----------------------------------------------------------------------------- rq_kmeans


def test_rq_kmeans_unique_codes_on_random_and_model_embeddings():
  emb = np.random.default_rng(0).normal(size=(301, 16)).astype(np.float32)
  # 8 x 8 = 64 tuples for 300 items: collisions are certain and must get the extra level.
  sid = rq_kmeans(emb, num_levels=2, codebook_size=8, iters=10, seed=3)
  assert_valid_ids(sid, 300)
  assert sid.num_rq_levels == 2 and sid.num_levels == 3
  assert sid.codebook_sizes[:2] == (8, 8)
  assert sid.codebook_sizes[2] == sid.codes[1:, 2].max() + 1
  assert 0 < sid.collision_rate < 1
  assert len(np.unique(sid.codes[1:, 0])) == 8  # k-means keeps every centroid in use
  again = rq_kmeans(emb, num_levels=2, codebook_size=8, iters=10, seed=3)
  np.testing.assert_array_equal(again.codes, sid.codes)

  # The item table of an (untrained) decoder, as the trainer would feed it.
  decoder = ItemDecoder(DecoderConfig(vocab_size=128, num_items=100, d_model=32, num_layers=1),
                        rngs=nnx.Rngs(0))
  table = np.asarray(decoder.item_embed[...])[:101]
  assert_valid_ids(rq_kmeans(table, num_levels=3, codebook_size=16, iters=10), 100)


def test_rq_kmeans_separates_duplicated_embeddings():
  rng = np.random.default_rng(1)
  distinct = rng.normal(size=(10, 8)).astype(np.float32)
  group = np.repeat(np.arange(10), [5, 1, 1, 2, 3, 1, 1, 4, 1, 1])  # 20 items, 10 vectors
  emb = np.concatenate([np.zeros((1, 8), np.float32), distinct[group]])
  sid = rq_kmeans(emb, num_levels=2, codebook_size=16, iters=10)
  assert_valid_ids(sid, 20)
  assert sid.codebook_sizes[:2] == (16, 16)
  assert sid.codebook_sizes[-1] == 5  # the largest group of identical embeddings
  for g in range(10):
    members = sid.codes[1:][group == g]
    assert len({tuple(r) for r in members[:, :2].tolist()}) == 1  # same vector, same k-means codes
    assert sorted(members[:, 2].tolist()) == list(range(len(members)))
  assert sid.collision_rate == pytest.approx(10 / 20)


def test_rq_kmeans_codebook_larger_than_catalog():
  emb = np.random.default_rng(2).normal(size=(6, 4))
  sid = rq_kmeans(emb, num_levels=3, codebook_size=256)
  assert_valid_ids(sid, 5)
  assert sid.codebook_sizes == (5, 5, 5)  # one centroid per item, so no collisions
  assert sid.num_levels == sid.num_rq_levels == 3 and sid.collision_rate == 0.0


def test_save_load_round_trip_and_validation(tmp_path):
  sid = rq_kmeans(np.random.default_rng(3).normal(size=(41, 6)), num_levels=2, codebook_size=4)
  path = tmp_path / 'semantic_ids.npz'
  sid.save(path)
  back = SemanticIds.load(path)
  np.testing.assert_array_equal(back.codes, sid.codes)
  assert back.codebook_sizes == sid.codebook_sizes
  assert back.num_rq_levels == sid.num_rq_levels
  assert back.to_items([[-1] * sid.num_levels, [99] * sid.num_levels]).tolist() == [0, 0]

  (tmp_path / 'junk.npz').write_bytes(b'not an npz')
  with pytest.raises(DataError):
    SemanticIds.load(tmp_path / 'junk.npz')
  dup = np.array([[-1, -1], [0, 1], [0, 1]])
  with pytest.raises(DataError, match='unique'):
    SemanticIds(codes=dup, codebook_sizes=(2, 2), num_rq_levels=2)


# ----------------------------------------------------------------------------- trie


def test_trie_allowed_mask_matches_item_prefixes():
  sid = rq_kmeans(np.random.default_rng(4).normal(size=(61, 5)), num_levels=2, codebook_size=4)
  trie, items = sid.trie(), sid.codes[1:]
  nodes = np.zeros(sid.num_items, np.int32)  # each item's prefix node, walked level by level
  for level in range(sid.num_levels):
    mask = np.asarray(trie.allowed_mask(level, jnp.asarray(nodes)))  # [items, codebook]
    for i in range(sid.num_items):
      same_prefix = np.all(items[:, :level] == items[i, :level], axis=1)
      expected = np.zeros(sid.codebook_sizes[level], bool)
      expected[items[same_prefix, level]] = True
      np.testing.assert_array_equal(mask[i], expected)
    nodes = np.asarray(trie.next_nodes(level, jnp.asarray(nodes)))[np.arange(sid.num_items),
                                                                  items[:, level]]
    assert np.all(nodes >= 0)
  np.testing.assert_array_equal(nodes, np.arange(1, sid.num_items + 1))  # leaves are item ids
  assert not np.asarray(trie.allowed_mask(0, jnp.array([-1]))).any()  # a dead prefix allows nothing


# ----------------------------------------------------------------------------- beam search


def test_beam_search_untrained_head_returns_only_valid_items():
  sid = rq_kmeans(np.random.default_rng(5).normal(size=(31, 6)), num_levels=2, codebook_size=4)
  head = SemanticIdHead(16, sid.codebook_sizes, rngs=nnx.Rngs(7))
  hidden = jax.random.normal(jax.random.key(0), (4, 16))
  for beam, k in [(3, 5), (64, 10), (50, 40)]:  # narrow; wider than the catalog; top_k > items
    items, scores = beam_search(head, hidden, sid.trie(), beam_size=beam, top_k=k)
    items, scores = np.asarray(items), np.asarray(scores)
    assert items.shape == scores.shape == (4, k)
    assert np.all(scores[:, :-1] >= scores[:, 1:])  # best first (-inf padding last)
    real = np.isfinite(scores)
    assert np.all((items[real] >= 1) & (items[real] <= sid.num_items))
    assert np.all(items[~real] == 0)
    for row in items:
      assert len(set(row[row > 0].tolist())) == np.sum(row > 0)  # no item twice
  assert np.all(real.sum(1) == sid.num_items)  # top_k=40 > 30 items: 30 found, 10 padded


def test_wide_beam_search_is_exact_top_k():
  sid = rq_kmeans(np.random.default_rng(6).normal(size=(13, 4)), num_levels=2, codebook_size=3)
  head = SemanticIdHead(8, sid.codebook_sizes, rngs=nnx.Rngs(1))
  hidden = 2.0 * jax.random.normal(jax.random.key(1), (5, 8))
  item_codes = jnp.asarray(sid.codes[1:])
  exact = np.asarray(brute_force_log_probs(head, hidden, item_codes))  # [5, 12]
  np.testing.assert_allclose(exact, np.asarray(teacher_forced_total(head, hidden, item_codes)),
                             rtol=1e-5, atol=1e-5)
  # The loss is the weighted mean negative total log-prob; padding rows (codes -1) weigh nothing.
  targets = np.array([3, 7, 0, 12, 1])
  loss = nnx.jit(semantic_id_loss)(head, hidden, jnp.asarray(sid.codes[targets]),
                                   jnp.asarray(targets > 0, jnp.float32))
  real = targets > 0
  assert float(loss) == pytest.approx(-exact[real, targets[real] - 1].mean(), rel=1e-5)

  exclude = np.zeros((5, 16), bool)  # wider than the catalog, like a padded vocabulary
  items, scores = beam_search(head, hidden, sid.trie(), beam_size=12, top_k=6,
                              exclude=jnp.asarray(exclude))
  order = np.argsort(-exact, axis=1, kind='stable')[:, :6]
  np.testing.assert_array_equal(np.asarray(items), order + 1)
  np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(exact, order, 1), rtol=1e-5)

  exclude[np.arange(5), order[:, 0] + 1] = True  # ban every row's best item
  items, scores = beam_search(head, hidden, sid.trie(), beam_size=12, top_k=6,
                              exclude=jnp.asarray(exclude))
  masked = np.where(exclude[:, 1:13], -np.inf, exact)
  order = np.argsort(-masked, axis=1, kind='stable')[:, :6]
  np.testing.assert_array_equal(np.asarray(items), order + 1)
  assert not np.any(np.take_along_axis(exclude, np.asarray(items), 1))


def test_training_head_lowers_loss_and_beam_search_recovers_items():
  num_items, d = 40, 16
  rng = np.random.default_rng(7)
  sid = rq_kmeans(rng.normal(size=(num_items + 1, 8)), num_levels=2, codebook_size=6)
  prototypes = rng.normal(size=(num_items + 1, d)).astype(np.float32)  # item i <- around proto i
  targets = np.tile(np.arange(1, num_items + 1), 8)  # [320]
  hidden = prototypes[targets] + 0.1 * rng.normal(size=(len(targets), d)).astype(np.float32)
  codes, weights = jnp.asarray(sid.codes[targets]), jnp.ones(len(targets))
  hidden = jnp.asarray(hidden)

  head = SemanticIdHead(d, sid.codebook_sizes, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(head, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(head, opt):
    loss, grads = nnx.value_and_grad(semantic_id_loss)(head, hidden, codes, weights)
    opt.update(head, grads)
    return loss

  losses = [float(step(head, opt)) for _ in range(300)]
  assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])

  test_targets = np.arange(1, num_items + 1)
  test_hidden = prototypes[test_targets] + 0.1 * rng.normal(size=(num_items, d)).astype(np.float32)
  items, _ = beam_search(head, jnp.asarray(test_hidden), sid.trie(), beam_size=4, top_k=3)
  assert np.mean(np.asarray(items)[:, 0] == test_targets) >= 0.9


def test_semantic_id_head_trains_evaluates_and_serves(tmp_path):
  """model.head='semantic_id' end to end: codes saved with the workdir, beam-search ranking, serving."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import serving  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config(**{'model.head': 'semantic_id', 'semantic_ids.codebook_size': 8})
  r = trainer.train_and_evaluate(c, tmp_path)
  sid = SemanticIds.load(tmp_path / workdir_lib.SEMANTIC_IDS)
  assert sid.num_items == 120 and len(set(map(tuple, sid.codes[1:].tolist()))) == 120
  assert 0.0 <= r['test']['ndcg@10'] <= r['test']['hr@10'] <= 1.0
  again = trainer.evaluate(c, tmp_path)  # reuses the saved codes: same ranking
  assert again['test'] == r['test']
  rec = serving.recommend(tmp_path, ['i3', 'i5'], top_k=5)
  items = [x['item'] for x in rec['recommendations']]
  assert len(set(items)) == 5 and not {'i3', 'i5'} & set(items)
