"""Next-item losses against a numpy reference, including training with seen items excluded."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import losses, trainer


def _example(seed=0, batch=3, seq=6, vocab=13, d=5):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(batch, seq, d)).astype(np.float32)
  table = rng.normal(size=(vocab, d)).astype(np.float32)
  # Left-padded histories in which some targets repeat a history item.
  inputs = np.array([[0, 0, 4, 2, 9, 4],
                     [0, 3, 5, 1, 8, 6],
                     [7, 2, 7, 3, 10, 11]], np.int32)
  targets = np.array([[0, 0, 2, 9, 4, 5],
                      [0, 5, 1, 8, 6, 3],
                      [2, 7, 3, 10, 11, 2]], np.int32)
  catalog = np.arange(vocab) > 0
  catalog[-1] = False  # a padding row past the catalog
  return hidden, table, inputs, targets, catalog


def _reference(hidden, table, inputs, targets, catalog, exclude_seen):
  nll = []
  for b in range(targets.shape[0]):
    for p in range(targets.shape[1]):
      t = targets[b, p]
      if t == 0:
        continue
      allowed = catalog.copy()
      if exclude_seen:
        seen = set(inputs[b, :p + 1].tolist()) - {0}
        if t in seen:
          continue  # a repeat: a certain miss when seen items are excluded, so not trained
        allowed[list(seen)] = False
      logits = table @ hidden[b, p]
      z = logits[allowed]
      lse = np.log(np.exp(z - z.max()).sum()) + z.max()
      nll.append(lse - logits[t])
  return np.mean(nll), len(nll)


@pytest.mark.parametrize('chunk', [0, 4, 5])
@pytest.mark.parametrize('exclude_seen', [False, True])
@pytest.mark.parametrize('max_targets', [0, 16])
def test_full_softmax_matches_reference(exclude_seen, max_targets, chunk):
  hidden, table, inputs, targets, catalog = _example()
  loss, aux = losses.full_softmax_loss(hidden, table, targets, catalog=catalog,
                                       max_targets=max_targets, chunk_targets=chunk,
                                       exclude_seen_of=inputs if exclude_seen else None)
  want, n = _reference(hidden, table, inputs, targets, catalog, exclude_seen)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert int(aux['num_targets']) == n
  # Four repeat targets are skipped: item 4 (row 0), item 3 (row 1), items 7 and 2 (row 2).
  assert n == (11 if exclude_seen else 15)


def test_chunked_full_softmax_has_the_same_gradient():
  """Chunks (with the logits recomputed in the backward pass) change memory, not the gradient."""
  hidden, table, inputs, targets, catalog = _example(seed=1)
  weights = np.random.default_rng(2).uniform(0.5, 2.0, targets.shape).astype(np.float32)
  bias = np.linspace(-1, 1, table.shape[0]).astype(np.float32)

  def grads(chunk):
    fn = lambda h, tb: losses.full_softmax_loss(h, tb, targets, catalog=catalog, weights=weights,
                                                logit_bias=bias, exclude_seen_of=inputs,
                                                chunk_targets=chunk)[0]
    return jax.grad(fn, argnums=(0, 1))(hidden, table)

  for got, want in zip(grads(3), grads(0)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert losses.auto_chunk_targets(12_800, 1_792) == 0  # fits: no chunking on small catalogs
  assert losses.auto_chunk_targets(12_800, 58_752) == 1_024  # MovieLens-25M: 256 MiB chunks


def test_exclude_seen_trains_through_the_trainer(tmp_path):
  config = tiny_config(**{'train.max_steps': 4, 'loss.exclude_seen': True})
  result = trainer.train_and_evaluate(config, tmp_path)
  assert np.isfinite(result['test']['ndcg@10'])
  bad = tiny_config(**{'loss.exclude_seen': True, 'loss.type': 'sampled_softmax'})
  with pytest.raises(ConfigError, match='loss.exclude_seen'):
    config_base.validate(bad)


def test_a_target_outside_the_catalog_gets_no_weight():
  """Its logit is the -1e30 floor: it must not add ~1e30 to the loss (the refit meets validation
  targets a content model held out of training); the loss is the other targets'."""
  hidden, table, inputs, targets, catalog = _example()
  outside = catalog.copy()
  outside[9] = False  # item 9 is a target of row 0 and of row 2's inputs
  loss, aux = losses.full_softmax_loss(hidden, table, targets, catalog=outside)
  dropped = np.where(targets == 9, 0, targets)
  ref, ref_aux = losses.full_softmax_loss(hidden, table, dropped, catalog=outside)
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  assert int(aux['num_targets']) == int(ref_aux['num_targets']) == int(np.sum(dropped > 0))
