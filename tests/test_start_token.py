"""``model.bos_token`` without a backbone: a learned start token before every sequence. It is a
trained parameter (one d_model vector, with its Adam moments), read by the model (outputs change
with it), and a run trains, saves it and evaluates from the workdir alone. The Hugging Face start
token (its embedding row, against transformers) is checked in test_hf_reference.py and
test_title_tokens.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.model.decoder import DecoderConfig, ItemDecoder
from llm4rec_jax.train import restore, trainer
from llm4rec_jax.train import state as state_lib


def test_the_start_token_is_read_and_leaves_one_state_per_item():
  cfg = DecoderConfig(vocab_size=16, num_items=13, d_model=16, num_layers=2, num_heads=2,
                      dropout=0.0, bos_token=True)
  model = ItemDecoder(cfg, rngs=nnx.Rngs(params=0))
  items = jnp.asarray([[0, 0, 3, 11, 1], [9, 8, 7, 6, 5]])
  h = model(items)
  assert h.shape == (2, 5, 16)
  model.bos[...] = model.bos[...] + 1.0
  moved = model(items)
  assert float(jnp.abs(moved - h)[:, 2:].min()) > 0  # every item's state sees the start token
  # Left padding: the same items after two pads give the same states (the token sits before them).
  np.testing.assert_allclose(model(jnp.asarray([[0, 0, 9, 8, 7]]))[0, 2:], moved[1, :3],
                             rtol=1e-5, atol=1e-5)


def test_a_run_trains_the_start_token_and_evaluates_from_the_workdir(tmp_path):
  config = tiny_config(**{'model.bos_token': True, 'model.scan_layers': True,
                          'train.max_steps': 8, 'train.eval_every': 8})
  result = trainer.train_and_evaluate(config, tmp_path / 'wd')
  assert np.isfinite(result['test']['ndcg@10'])
  model = restore.load_model(tmp_path / 'wd', 'latest')
  assert model.spec.cfg.bos_token and model.params['bos'].shape == (config.model.d_model,)
  init = state_lib.init_params(model.spec, config.seed)['bos']
  assert not np.allclose(np.asarray(jax.device_get(init)),
                         np.asarray(jax.device_get(model.params['bos'])))  # trained
  again = trainer.evaluate(config_base.load(tmp_path / 'wd'), tmp_path / 'wd')
  assert again['test']['ndcg@10'] == pytest.approx(result['test']['ndcg@10'], abs=1e-6)
