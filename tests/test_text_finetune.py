"""Fine-tuning the text encoder inside the recommender (config.text_finetune), with a tiny random
BERT written by the test in the Hugging Face layout (config.json + model.safetensors + vocab)."""

import json
import string

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import read_log, tiny_config
from flax import nnx
from jax.sharding import PartitionSpec as P

from llm4rec_jax import config_base, serving
from llm4rec_jax.model import text_encoder
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import optimizer as optimizer_lib
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import export, text_finetune, trainer
from llm4rec_jax.train import experiment

BERT = dict(model_type='bert', hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64, type_vocab_size=2,
            hidden_act='gelu', layer_norm_eps=1e-12, pad_token_id=0)


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  """A random 2-layer BERT with a character-level WordPiece vocabulary."""
  directory = tmp_path_factory.mktemp('tiny-bert')
  chars = string.ascii_lowercase + string.digits
  vocab = (['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + list(chars) + ['##' + c for c in chars]
           + list(';,.&-'))
  (directory / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  (directory / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'BertTokenizer', 'do_lower_case': True, 'model_max_length': 64}))
  (directory / 'config.json').write_text(json.dumps(dict(BERT, vocab_size=len(vocab))))
  cfg = text_encoder.BertConfig(**{k: v for k, v in BERT.items() if k != 'model_type'},
                                vocab_size=len(vocab), initializer_range=0.2)
  text_encoder.save_pretrained(text_encoder.BertEncoder(cfg, rngs=nnx.Rngs(0)), directory)
  return directory


def test_saved_encoder_loads_back_identically(tmp_path):
  cfg = text_encoder.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=12,
                                max_position_embeddings=16, initializer_range=0.5)
  model = text_encoder.BertEncoder(cfg, rngs=nnx.Rngs(3))
  text_encoder.save_pretrained(model, tmp_path)
  (tmp_path / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a']))
  loaded, _, loaded_cfg = text_encoder.load_pretrained(tmp_path)
  assert loaded_cfg == cfg
  want, got = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(got), nnx.to_pure_dict(want))


def _config(model_dir, cache_dir, **overrides):
  settings = {'content.text': 'title,description', 'content.text_model': str(model_dir),
              'content.cache_dir': str(cache_dir), 'content.text_max_length': 32,
              'model.item_repr': 'both', 'text_finetune.enabled': True,
              'text_finetune.max_items_per_step': 48}
  settings.update(overrides)
  return tiny_config(**settings)


def _experiment_state(config, tmp_path):
  exp = experiment.build_experiment(config, tmp_path)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 100, config.text_finetune)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  state = state_lib.init_train_state(exp.spec, tx, config.seed, shardings)
  if exp.spec.cfg.text_encoder is not None:
    state = text_finetune.init_state(state, config, exp.content, shardings)
  return exp, tx, schedule, shardings, state


def _batch(exp, config):
  from llm4rec_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  windows, users = pipeline.make_windows(exp.split.train, config.data.max_len)
  b = config.train.batch_size
  return {'inputs': windows[:b, :-1], 'targets': windows[:b, 1:], 'users': users[:b]}


def test_switch_off_keeps_the_encoder_out_of_the_state(tiny_bert, tmp_path):
  config = _config(tiny_bert, tmp_path / 'cache', **{'text_finetune.enabled': False})
  exp, _, _, shardings, state = _experiment_state(config, tmp_path / 'w')
  assert exp.spec.cfg.text_encoder is None and exp.content.text_tokens is None
  assert 'text_encoder' not in state['params'] and 'text_table' not in state
  assert exp.content.text.shape[1] == BERT['hidden_size']  # the frozen cached embeddings


def test_one_step_trains_the_encoder_sharded_with_frozen_lower_layer(tiny_bert, tmp_path):
  config = _config(tiny_bert, tmp_path / 'cache', **{'mesh.shape': (2, 2, 2),
                                                     'text_finetune.freeze_layers': 1})
  exp, tx, schedule, shardings, state = _experiment_state(config, tmp_path / 'w')
  enc = state['params']['text_encoder']
  # Logical axes -> mesh: ('embed', 'heads', 'head_dim') on fsdp x tensor; moments follow.
  assert enc['layers'][1]['attn']['wq'].sharding.spec == P('fsdp', 'tensor', None)
  assert state['text_table'].sharding.spec == P(('tensor', 'fsdp'), None)
  moments = [x for x in jax.tree.leaves(state['opt_state']) if x.shape == (16, 2, 8)]
  assert moments and all(m.sharding.spec == P('fsdp', 'tensor', None) for m in moments)
  # The cached (pretrained) table is what the live pretrained encoder computes.
  refresh = text_finetune.make_refresh(exp.spec.graphdef, shardings['text_table'], 64)
  np.testing.assert_allclose(refresh(state['params'], exp.content.text_tokens,
                                     exp.content.text_mask), state['text_table'], atol=2e-5)

  before = jax.tree.map(np.asarray, state)
  step = trainer.make_train_step(exp, tx, schedule, shardings, max_targets=512)
  batch = exp.put(_batch(exp, config))
  new, metrics = step(step(state, batch, exp.content)[0], batch, exp.content)  # step 0: lr 0
  after = new['params']['text_encoder']
  assert 0 < int(metrics['text_items']) <= 48 and int(metrics['text_items_skipped']) > 0
  old = before['params']['text_encoder']
  assert not np.allclose(after['layers'][1]['attn']['wq'], old['layers'][1]['attn']['wq'])
  assert not np.allclose(after['layers'][1]['mlp']['wi'], old['layers'][1]['mlp']['wi'])
  np.testing.assert_array_equal(after['word_embed'], old['word_embed'])  # frozen
  np.testing.assert_array_equal(after['layers'][0]['mlp']['wi'], old['layers'][0]['mlp']['wi'])
  # The table is refreshed at evaluations only, never by the step.
  np.testing.assert_array_equal(new['text_table'], before['text_table'])


def test_gradients_reach_the_encoder_only_through_batch_rows(tiny_bert, tmp_path):
  config = _config(tiny_bert, tmp_path / 'cache', **{'mesh.shape': (1, 1, 1),
                                                     'mesh.num_devices': 1})
  exp, _, _, _, state = _experiment_state(config, tmp_path / 'w')
  content, table = exp.content, state['text_table']
  batch = {k: jnp.asarray(v) for k, v in _batch(exp, config).items()}
  in_batch = np.zeros(table.shape[0], bool)
  in_batch[np.unique(np.concatenate([np.ravel(batch['inputs']), np.ravel(batch['targets'])]))] = 1
  in_batch &= np.asarray(content.text_mask)
  budget = 1000  # all of them
  graphdef = exp.spec.graphdef

  @jax.jit
  def rows(enc_params):
    params = dict(state['params'], text_encoder=enc_params)
    encoder = nnx.merge(graphdef, params).text_encoder
    out, aux = text_finetune.with_fresh_rows(encoder, content, table, batch, jax.random.key(0),
                                             budget=budget)
    return out.text, aux

  text, aux = rows(state['params']['text_encoder'])
  assert int(aux['text_items']) == in_batch.sum() and int(aux['text_items_skipped']) == 0
  np.testing.assert_array_equal(text[~in_batch], table[~in_batch])  # cached rows untouched
  encoder = nnx.merge(graphdef, state['params']).text_encoder
  live = text_encoder.embed_token_rows(encoder, content.text_tokens[np.flatnonzero(in_batch)])
  np.testing.assert_allclose(text[in_batch], live, atol=1e-6)

  weights = jax.random.normal(jax.random.key(1), table.shape)
  @jax.jit
  def grad_norm(rows_mask):
    g = jax.grad(lambda p: jnp.sum(rows(p)[0] * weights * rows_mask[:, None]))(
        state['params']['text_encoder'])
    return optax.global_norm(g)
  assert float(grad_norm(jnp.asarray(~in_batch))) == 0.0
  assert float(grad_norm(jnp.asarray(in_batch))) > 0.0

  # A budget below the batch's unique text items keeps a random subset of that size.
  small, aux = text_finetune.with_fresh_rows(encoder, content, table, batch, jax.random.key(3),
                                             budget=5)
  assert int(aux['text_items']) == 5 and int(aux['text_items_skipped']) == in_batch.sum() - 5
  assert int(np.sum(np.any(np.asarray(small.text) != np.asarray(table), axis=1))) == 5


@pytest.mark.slow  # three short trainings, evaluate, serve and export
def test_resume_evaluate_and_serve_with_finetuned_encoder(tiny_bert, tmp_path):
  config = _config(tiny_bert, tmp_path / 'cache', **{
      'train.num_epochs': 2, 'train.eval_every': 4, 'text_finetune.learning_rate': 3e-3,
      'mesh.shape': (1, 1, 1), 'mesh.num_devices': 1})
  full = trainer.train_and_evaluate(config, tmp_path / 'full')
  stopped = trainer.train_and_evaluate(config, tmp_path / 'resumed', stop_after_steps=6)
  assert stopped == {'stopped': 'stop_after_steps', 'step': 6}
  resumed = trainer.train_and_evaluate(config, tmp_path / 'resumed')
  a, b = read_log(tmp_path / 'full'), read_log(tmp_path / 'resumed')
  assert sorted(a) == sorted(b) and len(a) > 6
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  assert _numbers(resumed['test']) == pytest.approx(_numbers(full['test']))

  # evaluate() and serving read the fine-tuned table saved with the checkpoint.
  again = trainer.evaluate(config, tmp_path / 'full')
  assert _numbers(again['test']) == pytest.approx(_numbers(full['test']))
  rec = serving.Recommender(tmp_path / 'full')
  assert rec.spec.cfg.text_encoder is not None
  cached = np.load(tmp_path / 'full' / 'content.npz')['text']  # the pretrained embeddings
  served = np.asarray(rec.content.text)
  assert not np.allclose(served, cached, atol=1e-4)
  encoder = nnx.merge(rec.spec.graphdef, rec.params).text_encoder
  rows = np.flatnonzero(np.asarray(rec.content.text_mask))[:8]
  np.testing.assert_allclose(
      served[rows], text_encoder.embed_token_rows(encoder, rec.content.text_tokens[rows]),
      atol=1e-5)
  assert len(rec.recommend(['i3', 'i5'], top_k=3)['recommendations']) == 3

  # The fine-tuned encoder exported in the HF layout reloads and reproduces the served rows.
  exported = export.export_encoder(tmp_path / 'full', tmp_path / 'exported')
  reloaded, tokenizer, _ = text_encoder.load_pretrained(exported)
  np.testing.assert_allclose(
      served[rows], text_encoder.embed_token_rows(reloaded, rec.content.text_tokens[rows]),
      atol=1e-5)
  assert tokenizer is not None


def _numbers(metrics):
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def test_config_errors(tiny_bert, tmp_path):
  c = tiny_config(**{'text_finetune.enabled': True, 'model.item_repr': 'both'})
  with pytest.raises(ConfigError, match='text_finetune.enabled.*content.text'):
    config_base.validate(c)
  c = _config(tiny_bert, tmp_path, **{'model.item_repr': 'id'})
  with pytest.raises(ConfigError, match='text_finetune.enabled.*does not read content'):
    config_base.validate(c)
  c = _config(tiny_bert, tmp_path, **{'text_finetune.freeze_layers': 2})
  with pytest.raises(ConfigError, match='text_finetune.freeze_layers.*all 2 layers'):
    text_finetune.encoder_config(c)
  c = _config(tiny_bert, tmp_path, **{'text_finetune.max_items_per_step': -1})
  with pytest.raises(ConfigError, match='text_finetune.max_items_per_step'):
    config_base.validate(c)
