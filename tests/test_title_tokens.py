"""Item titles as text tokens in the item decoder's input (config.model.title_tokens).

A tiny transformers model (test_hf_reference.save_reference) gets a word-level tokenizer built here
with the ``tokenizers`` library over the words of the synthetic catalog's text. Checked: the
decoder's hidden state at every item token equals transformers' final hidden state fed the same
sequence as ``inputs_embeds`` (each item's title rows from transformers' own embedding module,
padding removed, then its item row); a short run trains and evaluates, also without the checkpoint
files; the title table adds no parameter and no optimizer moment; bad settings name their field.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from test_hf_reference import hf_hidden, left_padded, save_reference
from llm4rec_jax import config_base
from llm4rec_jax.content import title_tokens as titles
from llm4rec_jax.data import registry
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import experiment, optimizer as optimizer_lib
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import trainer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

TOL = dict(rtol=1e-4, atol=1e-4)


def write_backbone(path, family: str, **overrides):
  """A tiny ``family`` checkpoint whose text vocabulary is the synthetic catalog's words (plus
  [PAD], [UNK]), with a tokenizer AutoTokenizer loads; returns transformers' model."""
  pre = tokenizers.pre_tokenizers.Whitespace()
  items = registry.load(tiny_config().data).items
  words = {w for field in ('title', 'description') for text in items.text[field] if text
           for w, _ in pre.pre_tokenize_str(text)}
  vocab = {'[PAD]': 0, '[UNK]': 1, **{w: i + 2 for i, w in enumerate(sorted(words))}}
  model, _ = save_reference(path, family, vocab_size=len(vocab), **overrides)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre
  tok.save(str(path / 'tokenizer.json'))
  (path / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'PreTrainedTokenizerFast', 'pad_token': '[PAD]', 'unk_token': '[UNK]'}))
  return model


def _config(backbone, **overrides):
  return tiny_config(**{'model.backbone': str(backbone), 'model.title_tokens': 4,
                        'mesh.shape': (2, 2, 2), **overrides})


@pytest.fixture(scope='module')
def llama(tmp_path_factory):
  path = tmp_path_factory.mktemp('title') / 'llm'
  return path, write_backbone(path, 'llama')


@pytest.mark.parametrize('family,fields,length,bos', [('llama', 'title', 4, False),
                                                      ('gemma2', 'title,description', 6, True)])
def test_item_token_states_match_transformers(tmp_path, family, fields, length, bos):
  """Llama with 3-4 word titles in 4 slots (title padding inside the sequence); Gemma 2 (embedding
  scale, a sliding window of 4 shorter than one item's tokens, soft-capping) with titles and
  descriptions cut to 6 tokens, after the checkpoint's start token (``model.bos_token``). Also
  left-padded histories."""
  reference = write_backbone(tmp_path / 'llm', family)
  config = _config(tmp_path / 'llm', **{'model.title_tokens': length, 'model.title_fields': fields,
                                        'model.dropout': 0.0, 'model.bos_token': bos})
  exp = experiment.build_experiment(config, tmp_path / 'wd')
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  state = state_lib.init_train_state(exp.spec, tx, 0, shardings, backbone=config.model.backbone)
  table = np.asarray(jax.device_get(state['params']['item_embed']), np.float32)
  forward = nnx.jit(lambda m, items, content: m(items, m.encode_catalog(content)))
  model = nnx.merge(exp.spec.graphdef, state['params'])

  items = np.random.default_rng(3).integers(1, exp.spec.cfg.num_items + 1, 7).astype(np.int32)
  texts = titles.title_texts(exp.dataset.items, fields)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'llm'))
  scale = exp.spec.cfg.d_model ** 0.5 if exp.spec.cfg.embed_scale else 1.0
  embeds, at, counts = [], [], []
  with torch.no_grad():
    if bos:  # transformers' embedding of the start token (scaled by Gemma's module)
      embeds.append(reference.model.embed_tokens(
          torch.as_tensor([reference.config.bos_token_id])).numpy())
    for i in items:
      ids = tok(texts[i], add_special_tokens=False)['input_ids'][:length]
      counts.append(len(ids))
      # transformers' own embedding of the tokens (Gemma's module scales them), then the item row.
      embeds += [reference.model.embed_tokens(torch.as_tensor(ids)).numpy(), scale * table[[i]]]
      at.append(sum(len(e) for e in embeds) - 1)
  if length == 4:
    assert min(counts) < length  # title padding between items
  else:
    assert set(counts) == {length}  # every text cut
  want = hf_hidden(reference, np.concatenate(embeds)[None])[0][at]  # [items, d]
  rows, _ = left_padded(items, (0, 3))
  got = np.asarray(forward(model, jnp.asarray(rows), exp.content))
  np.testing.assert_allclose(got[0], want, **TOL)
  # Left padding: the first 4 items alone, as transformers sees them.
  short = hf_hidden(reference, np.concatenate(embeds[:8 + bos])[None])[0][at[:4]]
  np.testing.assert_allclose(got[1, 3:], short, **TOL)
  # Without the titles the states differ: they are read.
  bare = dataclasses.replace(exp.content, title_tokens=jnp.zeros_like(exp.content.title_tokens))
  assert np.abs(np.asarray(forward(model, jnp.asarray(rows), bare))[0] - want).max() > 1e-2


def test_trains_and_evaluates_with_the_title_table_frozen_outside_the_state(llama, tmp_path):
  """A short run: finite metrics; the title table is a content array, so the model has exactly the
  parameters (and AdamW the moments) of the same model without titles; evaluation from the workdir
  alone (checkpoint deleted) reads the saved title arrays and gives the same metrics."""
  path, _ = llama
  ckpt = tmp_path / 'llm'
  shutil.copytree(path, ckpt)
  config = _config(ckpt, **{'train.max_steps': 6, 'train.eval_every': 6})
  exp = experiment.build_experiment(config, tmp_path / 'probe')
  plain = experiment.build_experiment(_config(ckpt, **{'model.title_tokens': 0}), tmp_path / 'p0')
  assert exp.spec.num_params() == plain.spec.num_params()
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10)
  moments = jax.eval_shape(tx.init, exp.spec.abstract_params)
  assert sum(x.size for x in jax.tree.leaves(moments) if x.ndim) == 2 * exp.spec.num_params()
  title_table = exp.content.title_table
  assert title_table.shape[0] % 128 == 0 and np.all(np.asarray(title_table)[0] == 0)
  assert exp.content.title_tokens.shape == (exp.spec.cfg.vocab_size, 4)

  result = trainer.train_and_evaluate(config, tmp_path / 'wd')
  assert np.isfinite(result['test']['ndcg@10'])
  saved = config_base.load(tmp_path / 'wd')
  assert saved.model.title_tokens == 4
  shutil.rmtree(ckpt)
  again = trainer.evaluate(saved, tmp_path / 'wd')
  assert again['test']['ndcg@10'] == pytest.approx(result['test']['ndcg@10'], abs=1e-6)


def test_sequence_budget_names_the_fields(llama, tmp_path):
  """max_position_embeddings is 256: 64 items x (3 + 1) fit, 64 x (4 + 1) do not."""
  path, _ = llama
  experiment.build_experiment(_config(path, **{'model.title_tokens': 3, 'data.max_len': 64}),
                              tmp_path / 'a')
  with pytest.raises(ConfigError, match=r'config.model.title_tokens: data.max_len=64 .* 320 '
                     r'positions exceed the max_position_embeddings=256'):
    experiment.build_experiment(_config(path, **{'data.max_len': 64}), tmp_path / 'b')
  with pytest.raises(ConfigError, match=r'64 items x \(3 title tokens \+ 1 item token\) \+ 1 '
                     r'start token = 257 positions exceed'):  # the start token counts too
    experiment.build_experiment(_config(path, **{'model.title_tokens': 3, 'data.max_len': 64,
                                                 'model.bos_token': True}), tmp_path / 'c')


def test_bad_settings_name_the_field(llama, tmp_path):
  path, _ = llama
  with pytest.raises(ConfigError, match='config.model.title_tokens: .*set model.backbone'):
    config_base.validate(tiny_config(**{'model.title_tokens': 4}))
  with pytest.raises(ConfigError, match='config.model.title_tokens: must be an integer'):
    config_base.validate(_config(path, **{'model.title_tokens': -1}))
  with pytest.raises(ConfigError, match=r"config.model.title_fields: \['subtitle'\]"):
    experiment.build_experiment(_config(path, **{'model.title_fields': 'subtitle'}), tmp_path / 'a')
  with pytest.raises(ConfigError, match='config.model.title_tokens: cannot be combined'):
    experiment.build_experiment(_config(path, **{'model.filter_mix': 0.5}), tmp_path / 'b')
  with pytest.raises(ConfigError, match='config.model.bos_token: cannot be combined'):
    experiment.build_experiment(tiny_config(**{'model.bos_token': True,
                                               'model.filter_mix': 0.5}), tmp_path / 'c')
  bare = tmp_path / 'no_tokenizer'
  shutil.copytree(path, bare)
  (bare / 'tokenizer.json').unlink()
  (bare / 'tokenizer_config.json').unlink()
  with pytest.raises(ConfigError, match='config.model.title_tokens: .* has no tokenizer'):
    experiment.build_experiment(_config(bare), tmp_path / 'c')


def test_the_online_learner_adapts_a_title_model(llama, tmp_path):
  """Online adaptation of a model that reads titles: known items keep their title tokens (read
  from the workdir, the checkpoint deleted), new items enter with none, growing the catalog pads
  the per-item title rows but not the token table, and the steps train the model."""
  from llm4rec_jax.data import events as events_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online.learner import OnlineLearner  # pylint: disable=import-outside-toplevel
  path, _ = llama
  ckpt = tmp_path / 'llm'
  shutil.copytree(path, ckpt)
  trainer.train_and_evaluate(_config(ckpt, **{'train.max_steps': 4, 'train.eval_every': 4}),
                             tmp_path / 'wd')
  shutil.rmtree(ckpt)
  learner = OnlineLearner(tmp_path / 'wd', overrides={'batch_size': 8, 'replay_batch': 8,
                                                      'learning_rate': 1e-2})
  saved = np.asarray(learner.content_np.title_tokens)
  table = np.asarray(learner.content_np.title_table)
  vocab = learner.catalog.vocab_size
  assert saved.shape == (vocab, 4) and saved[1:learner.catalog.num_trained + 1].any()
  before = jax.device_get(learner.state['params'])
  rng = np.random.default_rng(0)
  raw = [{'user': f'u{rng.integers(1, 40)}', 'item': f'new{k}' if k % 4 == 0 else
          f'i{rng.integers(1, 121)}', 'timestamp': 1000 + k} for k in range(16)]
  learner.learn([events_lib.parse_event(e) for e in raw])
  learner.sync()
  after = jax.device_get(learner.state['params'])
  assert not np.allclose(before['blocks'][0]['attn']['wq'], after['blocks'][0]['attn']['wq'])
  new = [learner.catalog.get(f'new{k}') for k in range(0, 16, 4)]
  tokens = np.asarray(jax.device_get(learner.content.title_tokens))
  np.testing.assert_array_equal(tokens[:learner.catalog.num_trained + 1],
                                saved[:learner.catalog.num_trained + 1])
  assert not tokens[new].any()
  # Past the reserved rows: the per-item arrays grow, the token table does not.
  learner.register_items([f'more{k}' for k in range(learner.catalog.free_rows + 1)])
  assert learner.catalog.vocab_size > vocab
  assert learner.content_np.title_tokens.shape == (learner.catalog.vocab_size, 4)
  np.testing.assert_array_equal(np.asarray(learner.content_np.title_table), table)
  assert len(learner.recommend('u1')) == 10
