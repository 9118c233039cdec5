"""Hugging Face LLM import: tiny random checkpoints written here in the HF layout must give the logits
of an independent numpy forward pass that follows the Hugging Face modelling code (rotate_half rotary,
repeat_kv grouped attention, RMSNorm, gated MLP), on a sharded 8-device mesh."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from llm4rec_jax import partitioning
from llm4rec_jax.config_base import DEFAULT_RULES
from llm4rec_jax.errors import DataError
from llm4rec_jax.model import hf_import

D, LAYERS, HEADS, KV, HD, FFN, VOCAB = 32, 2, 4, 2, 8, 48, 40
NUM_ITEMS = 11


def _hf_config(model_type):
  c = dict(model_type=model_type, hidden_size=D, num_hidden_layers=LAYERS,
           num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HD, intermediate_size=FFN,
           vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=500.0,
           tie_word_embeddings=model_type == 'gemma', hidden_act='silu')
  if model_type == 'qwen2':
    c['attention_bias'] = True
  if model_type == 'mistral':
    c['sliding_window'] = 3  # shorter than the test sequence, so the window matters
  if model_type == 'gemma':
    c['hidden_act'] = c['hidden_activation'] = 'gelu_pytorch_tanh'
  return c


def _hf_tensors(config, rng):
  w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)
  t = {'model.embed_tokens.weight': w(VOCAB, D), 'model.norm.weight': 1 + w(D)}
  if not config['tie_word_embeddings']:
    t['lm_head.weight'] = w(VOCAB, D)
  for i in range(LAYERS):
    p = f'model.layers.{i}.'
    t.update({p + 'input_layernorm.weight': 1 + w(D), p + 'post_attention_layernorm.weight': 1 + w(D),
              p + 'self_attn.q_proj.weight': w(HEADS * HD, D),
              p + 'self_attn.k_proj.weight': w(KV * HD, D),
              p + 'self_attn.v_proj.weight': w(KV * HD, D),
              p + 'self_attn.o_proj.weight': w(D, HEADS * HD),
              p + 'mlp.gate_proj.weight': w(FFN, D), p + 'mlp.up_proj.weight': w(FFN, D),
              p + 'mlp.down_proj.weight': w(D, FFN)})
    if config.get('attention_bias'):
      t.update({p + 'self_attn.q_proj.bias': w(HEADS * HD), p + 'self_attn.k_proj.bias': w(KV * HD),
                p + 'self_attn.v_proj.bias': w(KV * HD)})
  return t


def write_checkpoint(path, model_type, *, shards=1, seed=0):
  """config.json + model.safetensors (or N shards + model.safetensors.index.json) + a tokenizer."""
  path.mkdir(parents=True, exist_ok=True)
  config = _hf_config(model_type)
  tensors = _hf_tensors(config, np.random.default_rng(seed))
  (path / 'config.json').write_text(json.dumps(config))
  if shards == 1:
    save_file(tensors, str(path / 'model.safetensors'))
  else:
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
      fname = f'model-{s + 1:05d}-of-{shards:05d}.safetensors'
      part = names[s::shards]
      save_file({n: tensors[n] for n in part}, str(path / fname))
      weight_map.update({n: fname for n in part})
    (path / 'model.safetensors.index.json').write_text(
        json.dumps({'metadata': {}, 'weight_map': weight_map}))
  _write_tokenizer(path)
  return config, tensors


def _write_tokenizer(path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  words = ['<unk>', '<s>', 'user', 'bought', 'these', 'items', ':', 'recommend', 'next']
  vocab = {w: i for i, w in enumerate(words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  # Its own directory: next to config.json, transformers would pick the model type's tokenizer class.
  PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', bos_token='<s>').save_pretrained(
      str(path / 'tokenizer'))


# ---- the independent reference: Hugging Face semantics in numpy --------------------------------


def _rms(x, w, eps, plus_one):
  y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  return y * ((1 + w) if plus_one else w)


def _rotate_half(x):
  h = x.shape[-1] // 2
  return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def reference_logits(config, tensors, embed, head, tokens):
  """Full-vocabulary logits [seq, vocab] for one unpadded sequence.

  ``embed``/``head``: the model's [vocab, d] tables (text rows as in the checkpoint, item rows new).
  """
  gemma = config['model_type'] == 'gemma'
  eps = config['rms_norm_eps']
  t = tensors
  x = embed[tokens].astype(np.float64)  # [seq, d]
  if gemma:
    x = x * np.sqrt(D)
  seq = len(tokens)
  inv = 1.0 / (config['rope_theta'] ** (np.arange(0, HD, 2) / HD))  # [hd / 2]
  ang = np.arange(seq)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  for i in range(LAYERS):
    p = f'model.layers.{i}.'
    h = _rms(x, t[p + 'input_layernorm.weight'], eps, gemma)
    proj = lambda n: h @ t[p + f'self_attn.{n}_proj.weight'].T + (
        t[p + f'self_attn.{n}_proj.bias'] if config.get('attention_bias') else 0)
    q = proj('q').reshape(seq, HEADS, HD).transpose(1, 0, 2)  # [heads, seq, hd]
    k = proj('k').reshape(seq, KV, HD).transpose(1, 0, 2)
    v = proj('v').reshape(seq, KV, HD).transpose(1, 0, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k, v = np.repeat(k, HEADS // KV, axis=0), np.repeat(v, HEADS // KV, axis=0)  # repeat_kv
    s = q @ k.transpose(0, 2, 1) / np.sqrt(HD)
    allowed = np.tril(np.ones((seq, seq), bool))
    if config.get('sliding_window'):
      allowed &= np.subtract.outer(np.arange(seq), np.arange(seq)) < config['sliding_window']
    s = np.where(allowed, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(1, 0, 2).reshape(seq, HEADS * HD)
    x = x + o @ t[p + 'self_attn.o_proj.weight'].T
    h = _rms(x, t[p + 'post_attention_layernorm.weight'], eps, gemma)
    g = h @ t[p + 'mlp.gate_proj.weight'].T
    if gemma:
      g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    else:
      g = g / (1 + np.exp(-g))
    x = x + (g * (h @ t[p + 'mlp.up_proj.weight'].T)) @ t[p + 'mlp.down_proj.weight'].T
  x = _rms(x, t['model.norm.weight'], eps, gemma)
  return x @ head.T


@pytest.fixture(scope='module')
def mesh():
  return partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (2, 2, 2)})


@pytest.mark.parametrize('model_type,shards', [('llama', 3), ('qwen2', 1), ('gemma', 2),
                                               ('mistral', 1)])
def test_logits_match_numpy_reference(tmp_path, mesh, model_type, shards):
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  config, tensors = write_checkpoint(tmp_path, model_type, shards=shards)
  model, reader = hf_import.load_hf_decoder(tmp_path, num_items=NUM_ITEMS, mesh=mesh,
                                            rules=DEFAULT_RULES)
  cfg = model.cfg
  assert cfg.vocab_size % 256 == 0 and cfg.vocab_size > VOCAB + NUM_ITEMS
  tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / 'tokenizer'))
  tokens = hf_import.encode_history(tokenizer, 'user bought these items :', [3, 11, 1, 7], cfg)
  text = tokenizer('user bought these items :')['input_ids']
  assert tokens[:len(text)].tolist() == text and len(tokens) == len(text) + 4
  assert {2, 3, 4, 5, 6} <= set(text) and max(text) < VOCAB  # the words, as the tokenizer maps them
  assert tokens[-4:].tolist() == [VOCAB + 3, VOCAB + 11, VOCAB + 1, VOCAB + 7]

  # Parameters sit in their shardings: the catalog axis over (tensor, fsdp), heads over tensor.
  assert model.embed[...].sharding.spec == jax.sharding.PartitionSpec(('tensor', 'fsdp'), None)
  assert model.blocks[0].attn.wq[...].sharding.spec[1] == 'tensor'
  # ... and were read block by block: no read of a sharded tensor covers all of it.
  full = {n: int(np.prod(a.shape)) for n, a in tensors.items()}
  sharded = 'model.layers.0.self_attn.q_proj.weight'
  q_reads = [int(np.prod(s)) for n, s in reader.reads if n == sharded]
  assert q_reads and max(q_reads) < full[sharded]

  embed = np.asarray(jax.device_get(model.embed[...]), np.float64)
  head = embed if cfg.tie_embeddings else np.asarray(jax.device_get(model.lm_head[...]), np.float64)
  # Text rows are the checkpoint's; item rows are new (mean text embedding + noise), padding zero.
  np.testing.assert_array_equal(embed[:VOCAB], tensors['model.embed_tokens.weight'])
  items = embed[VOCAB + 1:VOCAB + NUM_ITEMS + 1]
  assert np.abs(items - tensors['model.embed_tokens.weight'].mean(0)).max() > 0
  assert np.all(embed[VOCAB + NUM_ITEMS + 1:] == 0) and np.all(embed[VOCAB] == 0)

  forward = nnx.jit(lambda m, t, v: (m.logits(m(t, v)), m.item_scores(m(t, v))))
  logits, scores = forward(model, jax.numpy.asarray(tokens[None]), None)
  logits, scores = np.asarray(logits)[0], np.asarray(scores)[0]
  ref = reference_logits(config, tensors, embed, head, tokens)  # [seq, vocab]
  real = np.r_[0:VOCAB, VOCAB + 1:VOCAB + NUM_ITEMS + 1]
  np.testing.assert_allclose(logits[:, real], ref[:, real], rtol=2e-4, atol=2e-4)
  assert np.all(np.isneginf(logits[:, VOCAB])) and np.all(np.isneginf(logits[:, -1]))
  # The ranking head: item scores are the item-token logits, column = item id.
  np.testing.assert_allclose(scores[:, 1:], ref[:, VOCAB + 1:VOCAB + NUM_ITEMS + 1], rtol=2e-4,
                             atol=2e-4)

  # Left padding (valid=False) changes neither the positions nor the result of the real tokens.
  padded = np.concatenate([np.zeros(3, np.int32), tokens])[None]
  valid = padded > -1
  valid[0, :3] = False
  padded_logits, _ = forward(model, jax.numpy.asarray(padded), jax.numpy.asarray(valid))
  np.testing.assert_allclose(np.asarray(padded_logits)[0, 3:][:, real], ref[:, real],
                             rtol=2e-4, atol=2e-4)


def test_same_item_rows_on_any_mesh(tmp_path, mesh):
  write_checkpoint(tmp_path, 'llama')
  one = partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (1, 1, 1)},
                               devices=jax.devices()[:1])
  a, _ = hf_import.load_hf_decoder(tmp_path, num_items=NUM_ITEMS, mesh=mesh, rules=DEFAULT_RULES)
  b, _ = hf_import.load_hf_decoder(tmp_path, num_items=NUM_ITEMS, mesh=one, rules=DEFAULT_RULES,
                                   vocab_multiple=256)
  assert a.cfg.vocab_size == 512 and b.cfg.vocab_size == 256  # padded per catalog shards
  rows = VOCAB + NUM_ITEMS + 1
  np.testing.assert_array_equal(np.asarray(a.embed[...])[:rows], np.asarray(b.embed[...])[:rows])


def test_bad_checkpoints_fail_naming_file_and_field(tmp_path, mesh):
  write_checkpoint(tmp_path, 'llama', shards=2)
  load = lambda: hf_import.load_hf_decoder(tmp_path, num_items=3, mesh=mesh, rules=DEFAULT_RULES)
  cfg_path = tmp_path / 'config.json'
  good = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps({**good, 'model_type': 'gpt2'}))
  with pytest.raises(DataError, match=r"config.json: field model_type='gpt2' is not supported"):
    load()
  cfg_path.write_text(json.dumps({k: v for k, v in good.items() if k != 'hidden_size'}))
  with pytest.raises(DataError, match=r"config.json: field 'hidden_size' missing"):
    load()
  cfg_path.write_text(json.dumps({**good, 'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}))
  with pytest.raises(DataError, match=r"config.json: field rope_scaling.rope_type='yarn' is not "):
    load()
  cfg_path.write_text(json.dumps({**good, 'rope_parameters': {'rope_type': 'dynamic'}}))
  with pytest.raises(DataError, match=r"field rope_parameters.rope_type='dynamic' is not "):
    load()
  cfg_path.write_text(json.dumps({**good, 'rope_scaling': {'type': 'llama3', 'factor': 8.0}}))
  with pytest.raises(DataError, match=r'field rope_scaling.low_freq_factor missing'):
    load()
  refused = [({'use_sliding_window': True, 'model_type': 'qwen2'}, 'use_sliding_window=true'),
             ({'layer_types': ['sliding_attention', 'full_attention']}, 'layer_types='),
             ({'attention_bias': True}, 'attention_bias=true is not supported for llama'),
             ({'mlp_bias': True}, 'mlp_bias=true')]
  for change, message in refused:
    cfg_path.write_text(json.dumps({**good, **change}))
    with pytest.raises(DataError, match=f'config.json: field {message}'):
      load()
  cfg_path.write_text(json.dumps({**good, 'hidden_size': 64}))
  with pytest.raises(DataError, match=r'embed_tokens.weight has shape \(40, 32\)'):
    load()
  cfg_path.write_text(json.dumps(good))
  index = tmp_path / 'model.safetensors.index.json'
  wm = json.loads(index.read_text())
  del wm['weight_map']['model.layers.1.mlp.up_proj.weight']
  index.write_text(json.dumps(wm))
  with pytest.raises(DataError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' not found"):
    load()
  del wm['weight_map']['lm_head.weight']
  wm['weight_map']['model.layers.1.mlp.up_proj.weight'] = 'model-00001-of-00002.safetensors'
  index.write_text(json.dumps(wm))
  with pytest.raises(DataError, match='field tie_word_embeddings=false, but the checkpoint has no '
                     'lm_head.weight'):
    load()


@pytest.mark.parametrize('model_type', ['llama', 'mistral'])
def test_backbone_switch_gives_the_item_decoder_the_checkpoint_blocks(tmp_path, model_type):
  """config.model.backbone: the trainer's own model starts from the checkpoint's blocks; its logits
  over item tokens equal the numpy reference fed the same item rows (Mistral: with its sliding
  window of 3 over 6 items)."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  hf_config, tensors = write_checkpoint(tmp_path / 'llm', model_type, shards=2)
  config = tiny_config(**{'model.backbone': str(tmp_path / 'llm'), 'model.dropout': 0.0,
                          'mesh.shape': (2, 2, 2)})
  exp = experiment.build_experiment(config, tmp_path / 'wd')
  cfg = exp.spec.cfg
  assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
          cfg.ffn_dim) == (D, LAYERS, HEADS, KV, HD, FFN)
  assert (cfg.rms_eps, cfg.rope_theta, cfg.embed_scale) == (1e-5, 500.0, False)
  # The validated config is not modified; what training saves records the architecture, so
  # evaluation re-reads no checkpoint.
  assert config.model.backbone_type == '' and exp.config.model.backbone_type == ''
  assert state_lib.recorded_config(exp.config, cfg).model.backbone_type == model_type
  assert cfg.sliding_window == (3 if model_type == 'mistral' else 0)
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  state = state_lib.init_train_state(exp.spec, tx, 0, shardings, backbone=config.model.backbone)
  params = state['params']
  assert params['blocks'][0]['attn']['wq'].sharding.spec[1] == 'tensor'  # placed sharded
  model = nnx.merge(exp.spec.graphdef, params)
  table = np.asarray(jax.device_get(params['item_embed']), np.float64)
  # Item rows start around the text embeddings (their mean plus noise), not at random scale.
  text = tensors['model.embed_tokens.weight']
  assert abs(np.linalg.norm(table[1:11], axis=1).mean() / np.linalg.norm(text, axis=1).mean()
             - 1) < 0.6
  items = np.array([3, 11, 1, 7, 42, 5], np.int32)
  logits = np.asarray(model.logits(model(jax.numpy.asarray(items[None]))))[0]
  ref = reference_logits(hf_config, tensors, table, table, items)
  real = np.arange(1, cfg.num_items + 1)
  np.testing.assert_allclose(logits[:, real], ref[:, real], rtol=2e-4, atol=2e-4)


def test_backbone_trains_and_evaluates_without_the_checkpoint(tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  write_checkpoint(tmp_path / 'llm', 'llama')
  config = tiny_config(**{'model.backbone': str(tmp_path / 'llm'), 'train.max_steps': 6,
                          'train.eval_every': 6})
  result = trainer.train_and_evaluate(config, tmp_path / 'wd')
  assert np.isfinite(result['test']['ndcg@10'])
  shutil.rmtree(tmp_path / 'llm')  # the saved config holds the architecture, the checkpoint weights
  again = trainer.evaluate(config_base.load(tmp_path / 'wd'), tmp_path / 'wd')
  assert again['test']['ndcg@10'] == pytest.approx(result['test']['ndcg@10'], abs=1e-6)


@pytest.mark.parametrize('model_type,change,message', [
    ('qwen2', {'use_sliding_window': True}, 'use_sliding_window=true'),
    ('llama', {'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}},
     "rope_scaling.rope_type='yarn'"),
    ('gemma', {'use_bidirectional_attention': True}, 'use_bidirectional_attention=true')])
def test_backbone_refuses_what_it_cannot_apply_naming_the_field(tmp_path, model_type, change,
                                                                message):
  """config.model.backbone refuses the config.json features the item decoder has no place for."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  config, _ = write_checkpoint(tmp_path / 'llm', model_type)
  (tmp_path / 'llm' / 'config.json').write_text(json.dumps({**config, **change}))
  with pytest.raises(DataError, match=f'config.json: field {message}'):
    experiment.build_experiment(tiny_config(**{'model.backbone': str(tmp_path / 'llm')}), tmp_path)
