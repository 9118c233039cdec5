"""The Flax BERT text encoder against sentence-transformers' all-MiniLM-L6-v2, and its cache."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm4rec_jax.content import text_cache
from llm4rec_jax.model import text_encoder
from llm4rec_jax.data.dataset import FeatureTable
from llm4rec_jax.errors import ConfigError, DataError

REFERENCE_MAX_LENGTH = 256  # the reference pipeline's max_seq_length


@pytest.fixture(scope='module')
def model_dir():
  if importlib.util.find_spec(text_encoder.WEIGHTS_PACKAGE) is None:
    pytest.fail(f'offline text-encoder weights missing: run `{text_encoder.INSTALL_HINT}`')
  return text_encoder.default_model_dir()


@pytest.fixture(scope='module')
def pretrained(model_dir):
  return text_encoder.load_pretrained(model_dir)


@pytest.fixture(scope='module')
def reference(data_dir):
  with open(data_dir / 'text-encoder-reference.json', encoding='utf-8') as f:
    return json.load(f)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_token_ids_match_reference(pretrained, reference):
  _, tokenizer, _ = pretrained
  ids = text_encoder.tokenize(tokenizer, reference['sentences'][:3], REFERENCE_MAX_LENGTH)
  for got, want in zip(ids, reference['token_ids_first3']):
    assert got == [t for t in want if t != 0]


def test_hidden_states_match_reference(pretrained, reference):
  model, _, cfg = pretrained
  assert cfg.hidden_size == 384 and cfg.num_hidden_layers == 6
  ids = jnp.asarray(reference['token_ids_first3'], jnp.int32)  # [3, seq], right padded with 0
  hidden = nnx.jit(lambda m, i: m(i, (i != 0).astype(jnp.int32)))(model, ids)  # [3, seq, hidden]
  assert hidden.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(hidden[:, 0, :8]),
                             reference['last_hidden_state_first3_token0_first8'], atol=1e-4)


def test_embeddings_match_reference(pretrained, reference):
  model, tokenizer, _ = pretrained
  emb = text_encoder.encode_texts(model, tokenizer, reference['sentences'],
                                  max_length=REFERENCE_MAX_LENGTH, progress=False)
  assert emb.dtype == np.float32 and emb.shape == (len(reference['sentences']), 384)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  cosine = np.sum(_unit(emb) * _unit(reference['embeddings']), axis=1)
  assert cosine.min() >= 0.9999, cosine


def test_cache_round_trip(model_dir, reference, tmp_path, monkeypatch):
  sentences = reference['sentences']
  texts = ['', sentences[0], '  ', sentences[1]]
  first = text_cache.item_text_embeddings(texts, cache_dir=tmp_path, model_dir=model_dir,
                                          progress=False)
  assert first.shape == (4, 384) and first.dtype == np.float32
  assert not first[0].any() and not first[2].any()  # pad row and empty text
  cosine = np.sum(_unit(first[[1, 3]]) * _unit(reference['embeddings'][:2]), axis=1)
  assert cosine.min() >= 0.9999, cosine
  assert len(list(tmp_path.glob('text-emb-*.npy'))) == 1

  def fail(*args, **kwargs):
    raise AssertionError('the cache should have answered')
  monkeypatch.setattr(text_encoder, 'encode_texts', fail)
  monkeypatch.setattr(text_encoder, 'load_pretrained', fail)
  second = text_cache.item_text_embeddings(texts, cache_dir=tmp_path, model_dir=model_dir,
                                           progress=False)
  np.testing.assert_array_equal(first, second)
  with pytest.raises(AssertionError, match='cache should have answered'):  # options are in the key
    text_cache.item_text_embeddings(texts, cache_dir=tmp_path, model_dir=model_dir,
                                    max_length=64, progress=False)


def test_item_texts_from_feature_table():
  table = FeatureTable(raw_ids=np.array(['', 'a', 'b', 'c']),
                       text={'title': ['', ' Toy Story ', '', ''],
                             'description': ['', 'A toy.', 'Only a description', ' ']})
  texts, has_text = text_cache.item_texts(table)
  assert texts == ['', 'Toy Story. A toy.', 'Only a description', '']
  np.testing.assert_array_equal(has_text, [False, True, True, False])
  assert text_cache.item_texts(table, ['description'])[0][1] == 'A toy.'
  with pytest.raises(ConfigError, match='content.text'):
    text_cache.item_texts(table, ['genre'])


def test_missing_model_directory(tmp_path):
  missing = tmp_path / 'no-such-model'
  with pytest.raises(ConfigError, match='content.text_model.*no-such-model.*does not exist'):
    text_encoder.load_pretrained(missing)
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(ConfigError, match='model.safetensors not found'):
    text_encoder.load_pretrained(tmp_path)


TINY = dict(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=12, type_vocab_size=2,
            hidden_act='gelu', layer_norm_eps=1e-12)


def _write_tiny(directory, tensors):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  directory.mkdir()
  (directory / 'config.json').write_text(json.dumps(TINY))
  save_file(tensors, str(directory / 'model.safetensors'))


def _tiny_tensors(prefix='bert.'):
  rng = np.random.default_rng(0)
  shapes = text_encoder.hf_weight_shapes(text_encoder.BertConfig(**TINY))
  return {prefix + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_weight_names_checked(tmp_path):
  tensors = _tiny_tensors()
  del tensors['bert.encoder.layer.0.attention.self.key.bias']
  tensors['bert.encoder.layer.0.adapter.weight'] = np.zeros(3, np.float32)
  _write_tiny(tmp_path / 'bad', tensors)
  cfg = text_encoder.BertConfig.from_json(tmp_path / 'bad' / 'config.json')
  model = nnx.eval_shape(lambda: text_encoder.BertEncoder(cfg, rngs=nnx.Rngs(0)))
  with pytest.raises(DataError, match=r'missing .*attention\.self\.key\.bias.*unexpected '
                                      r'.*adapter\.weight'):
    text_encoder.load_weights(model, tmp_path / 'bad' / 'model.safetensors')


def test_weights_loaded_and_trainable(tmp_path):
  tensors = _tiny_tensors()
  _write_tiny(tmp_path / 'tiny', tensors)
  cfg = text_encoder.BertConfig.from_json(tmp_path / 'tiny' / 'config.json')
  model = nnx.eval_shape(lambda: text_encoder.BertEncoder(cfg, rngs=nnx.Rngs(0)))
  text_encoder.load_weights(model, tmp_path / 'tiny' / 'model.safetensors')
  x = np.arange(8, dtype=np.float32)  # torch Linear computes x @ weight.T + bias
  query = tensors['bert.encoder.layer.0.attention.self.query.weight']
  np.testing.assert_allclose(
      np.einsum('d,dhk->hk', x, np.asarray(model.layers[0].attn.wq[...])).reshape(-1), query @ x,
      rtol=1e-5, atol=1e-5)

  ids = jnp.array([[1, 5, 7, 2, 0, 0]], jnp.int32)  # [batch, seq]
  mask = (ids != 0).astype(jnp.int32)
  def loss(m):
    hidden = m(ids, mask)  # [batch, seq, hidden]
    return (jnp.sum(text_encoder.pool(hidden, mask, 'mean', normalize=True)[:, 0])
            + jnp.sum(text_encoder.pool(hidden, mask, 'cls')[:, 1]))
  grads = nnx.jit(nnx.grad(loss))(model)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 5 + 16
  word_grad = np.asarray(grads.word_embed[...])  # [vocab, hidden]
  assert np.abs(word_grad[5]).sum() > 0
  assert not word_grad[3].any()  # not in the input
  assert not word_grad[0].any()  # the padding id sits only at masked positions
