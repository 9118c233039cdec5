"""The causal frequency filter beside attention: reference values, causality, padding, training."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import popularity_ndcg, tiny_config
from flax import nnx

from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import decoder as decoder_lib
from llm4rec_jax.model.layers import CausalFilter
from llm4rec_jax.train import trainer
from llm4rec_jax.train import experiment


def _reference(x, valid, tau, gain, lags):
  """Loop form of the filter: a decaying weighted mean of the valid items up to each position."""
  b, s, d = x.shape
  out = np.zeros_like(x)
  for i in range(b):
    for t in range(s):
      if not valid[i, t]:
        continue
      num = np.zeros(d)
      den = np.zeros(d)
      for j in range(min(lags, t + 1)):
        if valid[i, t - j]:
          w = np.exp(-j / tau)
          num += w * x[i, t - j]
          den += w
      low = num / den
      out[i, t] = low + gain * (x[i, t] - low)
  return out


def test_filter_matches_loop_reference_and_is_causal():
  rng = np.random.default_rng(0)
  layer = CausalFilter(6, 5, window=3.0, rngs=nnx.Rngs(0))
  layer.log_tau[...] = jnp.asarray(rng.normal(1.0, 0.5, 6), jnp.float32)
  layer.gain[...] = jnp.asarray(rng.normal(0.5, 0.3, 6), jnp.float32)
  x = rng.normal(size=(3, 9, 6)).astype(np.float32)
  valid = np.ones((3, 9), bool)
  valid[0, :4] = False  # left padding
  valid[1, :8] = False  # a history of one item: the low-pass part is the item itself
  got = np.asarray(layer(jnp.asarray(x), jnp.asarray(valid)))
  want = _reference(x, valid, np.exp(np.asarray(layer.log_tau[...])), np.asarray(layer.gain[...]),
                    5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1, -1], x[1, -1], rtol=1e-5)
  assert not got[0, :4].any()
  # Changing a later item leaves every earlier position unchanged.
  x2 = x.copy()
  x2[:, 6] += 3.0
  got2 = np.asarray(layer(jnp.asarray(x2), jnp.asarray(valid)))
  np.testing.assert_allclose(got2[:, :6], got[:, :6], rtol=1e-6)
  assert not np.allclose(got2[:, 6:], got[:, 6:])


def test_decoder_with_filter_is_causal_and_padding_invariant():
  c = tiny_config(**{'model.filter_mix': 0.6})
  cfg = decoder_lib.from_config(c.model, num_items=100, vocab_multiple=128)
  model = decoder_lib.ItemDecoder(cfg, rngs=nnx.Rngs(0))
  assert all(b.filter is not None for b in model.blocks)
  plain = decoder_lib.ItemDecoder(decoder_lib.from_config(tiny_config().model, num_items=100,
                                                          vocab_multiple=128), rngs=nnx.Rngs(0))
  assert all(b.filter is None for b in plain.blocks)
  items = np.random.default_rng(1).integers(1, 100, (2, 10)).astype(np.int32)
  items[:, :3] = 0
  h = np.asarray(model(jnp.asarray(items)))
  assert not np.allclose(h, np.asarray(plain(jnp.asarray(items))), atol=1e-3)
  later = items.copy()
  later[:, -1] = (later[:, -1] % 99) + 1
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(later)))[:, :-1], h[:, :-1], rtol=1e-5,
                             atol=1e-5)
  # Two more slots of left padding change nothing at the real positions.
  wider = np.concatenate([np.zeros((2, 2), np.int32), items], axis=1)
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(wider)))[:, 2:][:, 3:], h[:, 3:],
                             rtol=1e-5, atol=1e-5)


def test_filter_config_is_checked():
  for key, value in (('model.filter_mix', 1.5), ('model.filter_lags', -1),
                     ('model.filter_window', 0.0)):
    with pytest.raises(ConfigError, match='filter'):
      config_base.validate(tiny_config(**{key: value}))


def test_training_with_filter_learns_its_parameters(tmp_path):
  c = tiny_config(**{'model.filter_mix': 0.5, 'train.num_epochs': 10,
                     'optimizer.learning_rate': 1e-2})
  metrics = trainer.train_and_evaluate(c, tmp_path)
  assert metrics['test']['ndcg@10'] > 1.3 * popularity_ndcg(c, tmp_path)
  _, params = experiment.restore_params(experiment.build_experiment(c, tmp_path), 'latest')
  taus = [np.asarray(params['blocks'][i]['filter']['log_tau']) for i in params['blocks']]
  assert all(not np.allclose(t, np.log(4.0)) for t in taus)  # the cut-offs moved from their init
