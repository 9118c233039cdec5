"""Hugging Face import checked against transformers' own PyTorch models (Llama, Mistral, Qwen2,
Qwen3, Gemma, Gemma 2, Gemma 3).

A tiny random model of each family is built with its transformers config class and
``AutoModelForCausalLM.from_config`` (CPU, float32, seeded), saved with ``save_pretrained``
(safetensors) and loaded by ``hf_import`` on the 8-device test mesh. The Python API
(``load_hf_decoder``) must give transformers' logits on the same text tokens; the training backbone
(``config.model.backbone``) must give transformers' final hidden states when the model is fed the
item decoder's item rows as ``inputs_embeds``. For every family also the next-token loss and its
gradients; for Gemma 2 a short training run from the transformers-saved checkpoint; for Llama and
Gemma 2 a LoRA run's merged export read back by transformers.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from llm4rec_jax import partitioning
from llm4rec_jax.config_base import DEFAULT_RULES
from llm4rec_jax.model import hf_import

torch = pytest.importorskip('torch', reason='the transformers reference tests need PyTorch '
                            '(installed by pip install -e ".[test]")')
transformers = pytest.importorskip('transformers')

VOCAB, NUM_ITEMS = 96, 11
CONFIG_CLASSES = {'llama': 'LlamaConfig', 'mistral': 'MistralConfig', 'qwen2': 'Qwen2Config',
                  'qwen3': 'Qwen3Config', 'gemma': 'GemmaConfig', 'gemma2': 'Gemma2Config',
                  'gemma3_text': 'Gemma3TextConfig'}
FAMILIES = list(CONFIG_CLASSES)
WINDOW = 4  # Mistral's and the Gemma 2/3 local layers' sliding window, shorter than the sequences
# Gemma 2/3: a local (sliding) and a global layer; caps and a query scale small enough to matter.
GEMMA23 = dict(layer_types=['sliding_attention', 'full_attention'], sliding_window=WINDOW,
               query_pre_attn_scalar=12, final_logit_softcapping=3.0)
# Gemma 3: each layer type its own rotary base; linear rope scaling on the global layer.
GEMMA3_ROPE = {'full_attention': dict(rope_type='linear', factor=4.0, rope_theta=500.0),
               'sliding_attention': dict(rope_type='default', rope_theta=50.0)}
TOL = dict(rtol=1e-4, atol=1e-4)


def hf_config(family: str, **overrides):
  """A transformers config of ``family``: 2 layers, width 32, 4 query / 2 key-value heads."""
  fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
                max_position_embeddings=256, rope_theta=500.0, tie_word_embeddings=False)
  if family == 'mistral':
    fields['sliding_window'] = WINDOW  # shorter than the test sequences, so the window matters
  if family == 'gemma':
    fields.update(tie_word_embeddings=True, hidden_activation='gelu_pytorch_tanh')
  if family == 'gemma2':
    fields.update(GEMMA23, attn_logit_softcapping=5.0)
  if family == 'gemma3_text':
    del fields['rope_theta']
    fields.update(GEMMA23, tie_word_embeddings=True, rope_parameters=GEMMA3_ROPE)
  fields.update(overrides)
  return getattr(transformers, CONFIG_CLASSES[family])(**fields)


def _randomize(model, seed: int):
  """Seeded weights far from transformers' init (norm scales around 1, biases non-zero), so every
  parameter, norms included, shows in the logits."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = 0.2 * torch.randn(p.shape, generator=gen)
      p.copy_(1 + noise if name.endswith('norm.weight') else noise)


def save_reference(path, family: str, *, seed: int = 0, dtype=None, max_shard_size=None,
                   **overrides):
  """Saves a tiny random ``family`` model to ``path`` (in ``dtype``, default float32) and returns
  the reference: transformers' own load of the saved files, in float32."""
  config = hf_config(family, **overrides)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation='eager')
  _randomize(model, seed)
  if dtype is not None:
    model = model.to(dtype)
  extra = {} if max_shard_size is None else {'max_shard_size': max_shard_size}
  model.save_pretrained(str(path), **extra)
  # Reloaded, not cast back: a cast would also round buffers (the rotary frequencies) that the
  # saved checkpoint does not hold.
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(path), dtype=torch.float32, attn_implementation='eager')
  return reference.eval(), config


def hf_logits(model, tokens: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """transformers' logits [batch, seq, vocab]; left padding gets the positions of real tokens."""
  ids = torch.as_tensor(tokens, dtype=torch.long)
  kwargs = {}
  if valid is not None:
    mask = torch.as_tensor(valid, dtype=torch.long)
    kwargs = dict(attention_mask=mask, position_ids=torch.clamp(mask.cumsum(-1) - 1, min=0))
  with torch.no_grad():
    return model(input_ids=ids, **kwargs).logits.numpy()


def hf_hidden(model, embeds: np.ndarray) -> np.ndarray:
  """transformers' final (normed) hidden states [batch, seq, d] for input embeddings."""
  with torch.no_grad():
    out = model.model(inputs_embeds=torch.as_tensor(embeds, dtype=torch.float32))
  return out.last_hidden_state.numpy()


def our_logits(path, mesh, tokens, valid=None, dtype='float32') -> np.ndarray:
  """``load_hf_decoder``'s text-token logits [batch, seq, VOCAB]."""
  model, _ = hf_import.load_hf_decoder(path, num_items=NUM_ITEMS, mesh=mesh, rules=DEFAULT_RULES,
                                       dtype=dtype)
  forward = nnx.jit(lambda m, t, v: m.logits(m(t, v)))
  v = None if valid is None else jax.numpy.asarray(valid)
  return np.asarray(forward(model, jax.numpy.asarray(tokens), v))[..., :VOCAB]


def left_padded(tokens: np.ndarray, pads: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """One row per entry of ``pads``: ``tokens`` cut short by that many and left-padded with 0."""
  seq = len(tokens)
  rows = np.zeros((len(pads), seq), np.int32)
  valid = np.zeros((len(pads), seq), bool)
  for r, pad in enumerate(pads):
    rows[r, pad:], valid[r, pad:] = tokens[:seq - pad], True
  return rows, valid


@pytest.fixture(scope='module')
def mesh():
  return partitioning.make_mesh({'axes': ('data', 'fsdp', 'tensor'), 'shape': (2, 2, 2)})


def text_tokens(seq: int = 12, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, seq).astype(np.int32)


def check_text_logits(path, mesh, model, *, seq: int = 12, seed: int = 1, **tol):
  """Our logits equal transformers' on random text tokens, unpadded and left-padded; returns
  transformers' unpadded logits [1, seq, VOCAB]."""
  tokens = text_tokens(seq, seed)
  want = hf_logits(model, tokens[None])
  np.testing.assert_allclose(our_logits(path, mesh, tokens[None]), want, **(tol or TOL))
  rows, valid = left_padded(tokens, (0, 3, 5))
  ours = our_logits(path, mesh, rows, valid)
  theirs = hf_logits(model, rows, valid)
  for r, pad in enumerate((0, 3, 5)):
    np.testing.assert_allclose(ours[r, pad:], theirs[r, pad:], **(tol or TOL))
    np.testing.assert_allclose(ours[r, pad:], want[0, :seq - pad], **(tol or TOL))
  return want


def check_family_parts(model, family):
  """The parts that set the family apart are there in transformers' model (and so tested)."""
  attn = model.model.layers[0].self_attn
  assert (attn.q_proj.bias is not None) == (family == 'qwen2')
  assert hasattr(attn, 'q_norm') == (family in ('qwen3', 'gemma3_text'))
  layer = model.model.layers[0]
  assert hasattr(layer, 'post_feedforward_layernorm') == (family in ('gemma2', 'gemma3_text'))
  if family in ('gemma2', 'gemma3_text'):  # a local and a global layer
    assert [l.self_attn.sliding_window for l in model.model.layers] == [WINDOW, None]
    assert attn.scaling == 12 ** -0.5 and model.config.final_logit_softcapping == 3.0
  if family == 'gemma2':
    assert attn.attn_logit_softcapping == 5.0
  if family == 'gemma3_text':
    rope = model.model.rotary_emb
    assert rope.rope_type == {'full_attention': 'linear', 'sliding_attention': 'default'}


@pytest.mark.parametrize('family', FAMILIES)
def test_text_logits_match_transformers(tmp_path, mesh, family):
  model, _ = save_reference(tmp_path, family)
  check_family_parts(model, family)
  check_text_logits(tmp_path, mesh, model)


def test_sharded_checkpoint_matches_transformers(tmp_path, mesh):
  model, _ = save_reference(tmp_path, 'llama', max_shard_size='20KB')
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 2
  assert not (tmp_path / 'model.safetensors').exists()
  check_text_logits(tmp_path, mesh, model)


def test_bfloat16_checkpoint_matches_transformers(tmp_path, mesh):
  """bfloat16 weights (how most checkpoints ship) are read exactly: float32 compute matches the
  reference run in float32 on the same weights. Computing in bfloat16 errs about as much as
  transformers itself in bfloat16 (root-mean-square error within twice its own)."""
  model, _ = save_reference(tmp_path, 'llama', dtype=torch.bfloat16)
  header = (tmp_path / 'model.safetensors').read_bytes()[:4096]
  assert b'"BF16"' in header and b'"F32"' not in header
  want = check_text_logits(tmp_path, mesh, model)
  tokens = text_tokens()[None]
  theirs_bf16 = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.bfloat16, attn_implementation='eager').eval()
  with torch.no_grad():
    theirs = theirs_bf16(input_ids=torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
  ours = our_logits(tmp_path, mesh, tokens, dtype='bfloat16')
  rms = lambda x: float(np.sqrt(np.mean((x - want) ** 2)))
  assert 0 < rms(ours) <= 2 * rms(theirs), (rms(ours), rms(theirs))
  assert np.abs(ours - want).max() < 0.1 * np.abs(want).max()


def backbone_hidden(tmp_path, ckpt, **overrides):
  """The trainer's item decoder started from ``ckpt`` (config.model.backbone): its config, as
  recorded in the saved workdir config, its item table and items [batch, seq] -> hidden states."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.model import decoder  # pylint: disable=import-outside-toplevel
  config = tiny_config(**{'model.backbone': str(ckpt), 'model.dropout': 0.0,
                          'mesh.shape': (2, 2, 2), **overrides})
  exp = experiment.build_experiment(config, tmp_path / 'wd')
  (tmp_path / 'wd').mkdir(exist_ok=True)
  # What training saves (the architecture recorded); evaluation rebuilds the model from it alone.
  config_base.save(state_lib.recorded_config(exp.config, exp.spec.cfg), tmp_path / 'wd')
  saved = config_base.load(tmp_path / 'wd').model
  cfg = decoder.from_config(saved, num_items=exp.spec.cfg.num_items, vocab_multiple=1)
  assert dataclasses.replace(cfg, max_len=exp.spec.cfg.max_len) == exp.spec.cfg
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, 10)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  state = state_lib.init_train_state(exp.spec, tx, 0, shardings, backbone=str(ckpt))
  model = nnx.merge(exp.spec.graphdef, state['params'])
  table = np.asarray(jax.device_get(state['params']['item_embed']), np.float32)
  return cfg, table, lambda items: np.asarray(model(jax.numpy.asarray(items)))


def check_backbone_hidden(tmp_path, ckpt, model, *, seq: int = 12, seed: int = 2):
  """The item decoder's hidden states equal transformers' fed the same item rows, also when the
  item sequence is left-padded (item id 0); returns the decoder's config."""
  cfg, table, ours = backbone_hidden(tmp_path, ckpt)
  items = np.random.default_rng(seed).integers(1, 100, seq).astype(np.int32)
  # Gemma's embedding module scales by sqrt(d_model); inputs_embeds bypass it.
  scale = cfg.d_model ** 0.5 if cfg.embed_scale else 1.0
  want = hf_hidden(model, scale * table[items][None])[0]
  np.testing.assert_allclose(ours(items[None])[0], want, **TOL)
  rows, _ = left_padded(items, (0, 4))
  got = ours(rows)
  np.testing.assert_allclose(got[1, 4:], want[:seq - 4], **TOL)
  return cfg


@pytest.mark.parametrize('family', FAMILIES)
def test_backbone_hidden_states_match_transformers(tmp_path, family):
  """The item decoder takes every family's blocks; windows (4) are shorter than the 12 items."""
  model, _ = save_reference(tmp_path / 'llm', family)
  check_family_parts(model, family)
  cfg = check_backbone_hidden(tmp_path, tmp_path / 'llm', model)
  gemma = family.startswith('gemma')
  assert cfg.attention_bias == (family == 'qwen2')
  assert cfg.qk_norm == (family in ('qwen3', 'gemma3_text'))
  assert (cfg.embed_scale, cfg.activation) == (gemma, 'gelu_tanh' if gemma else 'silu')
  assert cfg.post_norms == (family in ('gemma2', 'gemma3_text'))
  windowed = {'mistral': ('sliding_attention',) * 2,
              'gemma2': tuple(GEMMA23['layer_types']), 'gemma3_text': tuple(GEMMA23['layer_types'])}
  assert cfg.layer_types == windowed.get(family, ())
  assert cfg.sliding_window == (WINDOW if cfg.layer_types else 0)
  assert cfg.attn_softcap == (5.0 if family == 'gemma2' else 0.0)
  if family == 'gemma3_text':
    assert (cfg.rope_theta, cfg.rope_scaling) == (500.0, ('linear', 4.0))
    assert (cfg.local_rope_theta, cfg.local_rope_scaling) == (50.0, ())


@pytest.mark.parametrize('family', ['llama', 'gemma2'])
def test_start_token_hidden_states_match_transformers(tmp_path, family):
  """``model.bos_token``: the item decoder puts the checkpoint's start token before the items;
  its hidden states at the items equal transformers' fed [BOS row, item rows], also left padded
  (Gemma 2: embeddings scaled, a window of 4 over 12 items that counts the start token)."""
  model, _ = save_reference(tmp_path / 'llm', family)
  bos_id = model.config.bos_token_id
  cfg, table, ours = backbone_hidden(tmp_path, tmp_path / 'llm', **{'model.bos_token': True})
  assert cfg.bos_token and 0 <= bos_id < VOCAB
  text = model.get_input_embeddings().weight.detach().numpy()
  items = np.random.default_rng(4).integers(1, 100, 12).astype(np.int32)
  scale = cfg.d_model ** 0.5 if cfg.embed_scale else 1.0
  embeds = scale * np.concatenate([text[bos_id][None], table[items]])[None]
  want = hf_hidden(model, embeds)[0, 1:]
  np.testing.assert_allclose(ours(items[None])[0], want, **TOL)
  rows, _ = left_padded(items, (0, 4))
  np.testing.assert_allclose(ours(rows)[1, 4:], want[:8], **TOL)
  # The start token is read: without it transformers gives other states.
  assert np.abs(hf_hidden(model, embeds[:, 1:])[0] - want).max() > 100 * TOL['atol']


LLAMA3 = dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)


def test_llama3_rope_scaling_matches_transformers(tmp_path, mesh):
  """Llama 3.x's rope_scaling over 40 positions (original_max_position_embeddings=16), in
  transformers 5's layout (rope_parameters) and in transformers 4's (rope_theta + rope_scaling, as
  published Llama 3.x checkpoints have it); the training backbone takes it too."""
  ckpt = tmp_path / 'llm'
  model, _ = save_reference(ckpt, 'llama', rope_scaling=dict(LLAMA3))
  want = check_text_logits(ckpt, mesh, model, seq=40)
  path = ckpt / 'config.json'
  raw = json.loads(path.read_text())
  params = raw.pop('rope_parameters', None) or raw.pop('rope_scaling')
  old_layout = dict(raw, rope_theta=params.pop('rope_theta', raw.get('rope_theta')),
                    rope_scaling=params)
  path.write_text(json.dumps(old_layout))
  np.testing.assert_allclose(our_logits(ckpt, mesh, text_tokens(40)[None]), want, **TOL)
  # The scaling matters here: without it the logits are far off.
  path.write_text(json.dumps(dict(old_layout, rope_scaling=None)))
  assert np.abs(our_logits(ckpt, mesh, text_tokens(40)[None]) - want).max() > 1e-2
  path.write_text(json.dumps(old_layout))
  cfg = check_backbone_hidden(tmp_path, ckpt, model)
  assert cfg.rope_scaling == ('llama3', 8.0, 1.0, 4.0, 16.0)


def rewrite_config(ckpt, **changes):
  """Rewrites ``ckpt``'s config.json with fields changed (None removes a field)."""
  path = ckpt / 'config.json'
  raw = json.loads(path.read_text())
  raw.update(changes)
  path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))


def test_gemma2_features_each_matter(tmp_path, mesh):
  """Gemma 2 over 12 tokens: attention and final soft-capping, the local window and the query
  scale each change the logits, so matching transformers (test_text_logits_match_transformers)
  checks every one of them; a config.json without layer_types (older checkpoints) alternates
  sliding and full layers as transformers does."""
  model, _ = save_reference(tmp_path, 'gemma2')
  want = hf_logits(model, text_tokens()[None])
  ours = lambda: our_logits(tmp_path, mesh, text_tokens()[None])
  rewrite_config(tmp_path, layer_types=None)
  np.testing.assert_allclose(ours(), want, **TOL)
  for change in [dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None),
                 dict(layer_types=['full_attention'] * 2), dict(query_pre_attn_scalar=8)]:
    original = {k: json.loads((tmp_path / 'config.json').read_text()).get(k) for k in change}
    rewrite_config(tmp_path, **change)
    assert np.abs(ours() - want).max() > 1e-2, change
    rewrite_config(tmp_path, **original)
  # Missing caps take transformers' Gemma 2 defaults (50, 30), not "off".
  rewrite_config(tmp_path, attn_logit_softcapping=None, final_logit_softcapping=None)
  cfg = hf_import.read_config(tmp_path, num_items=1)
  assert (cfg.attn_softcap, cfg.final_softcap, cfg.layer_types) == (
      50.0, 30.0, ('sliding_attention', 'full_attention'))


def test_gemma3_rope_per_layer_type_and_older_config_layout(tmp_path, mesh):
  """Gemma 3 over 20 tokens: the global layer's linear rope scaling and the local layer's own
  rotary base each matter; the older config.json layout (rope_theta + rope_scaling for global
  layers, rope_local_base_freq, sliding_window_pattern instead of layer_types), as published
  Gemma 3 checkpoints have it, gives transformers' logits too, and so does the training backbone."""
  ckpt = tmp_path / 'llm'
  model, _ = save_reference(ckpt, 'gemma3_text')
  want = check_text_logits(ckpt, mesh, model, seq=20)
  ours = lambda: our_logits(ckpt, mesh, text_tokens(20)[None])
  rope = GEMMA3_ROPE
  rewrite_config(ckpt, rope_parameters=None, layer_types=None, sliding_window_pattern=2,
                 rope_theta=rope['full_attention']['rope_theta'],
                 rope_scaling=dict(rope_type='linear', factor=rope['full_attention']['factor']),
                 rope_local_base_freq=rope['sliding_attention']['rope_theta'])
  np.testing.assert_allclose(ours(), want, **TOL)
  cfg = check_backbone_hidden(tmp_path, ckpt, model)
  assert cfg.layer_types == ('sliding_attention', 'full_attention')
  for change in [dict(rope_scaling=None), dict(rope_local_base_freq=500.0)]:
    raw = json.loads((ckpt / 'config.json').read_text())
    rewrite_config(ckpt, **change)
    assert np.abs(ours() - want).max() > 1e-2, change
    (ckpt / 'config.json').write_text(json.dumps(raw))


@pytest.mark.parametrize('change,message', [
    (dict(attn_logit_softcapping=30.0), 'attn_logit_softcapping=30.0 is not supported for '
     'gemma3_text'),
    (dict(use_bidirectional_attention=True), 'use_bidirectional_attention=true'),
    (dict(layer_types=['sliding_attention']), r"layer_types=\['sliding_attention'\]: need one"),
    (dict(sliding_window=None), 'sliding_window=None: layer_types has sliding_attention'),
    (dict(rope_parameters={'rope_type': 'default', 'rope_theta': 10.0}),
     'rope_parameters: Gemma 3'),
    (dict(model_type='gemma3'), "model_type='gemma3' .*gemma3_text checkpoints"),
])
def test_gemma3_config_features_it_cannot_apply_fail_naming_the_field(tmp_path, mesh, change,
                                                                      message):
  """What transformers would apply (or, for the soft-capping, silently ignore) but these blocks
  cannot: an error naming config.json's field, from load_hf_decoder and from model.backbone."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  ckpt = tmp_path / 'llm'
  save_reference(ckpt, 'gemma3_text')
  raw = json.loads((ckpt / 'config.json').read_text())
  (ckpt / 'config.json').write_text(json.dumps({**raw, **change}))
  with pytest.raises(DataError, match=f'config.json: field {message}'):
    hf_import.load_hf_decoder(ckpt, num_items=NUM_ITEMS, mesh=mesh, rules=DEFAULT_RULES)
  with pytest.raises(DataError, match=f'config.json: field {message}'):
    experiment.build_experiment(tiny_config(**{'model.backbone': str(ckpt)}), tmp_path / 'wd')


def test_gemma2_backbone_trains_and_evaluates_without_the_checkpoint(tmp_path):
  """A few training steps from a transformers-saved Gemma 2 (model.backbone): finite metrics, and
  evaluation from the workdir alone (the checkpoint deleted) gives the same numbers."""
  import shutil  # pylint: disable=import-outside-toplevel
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  save_reference(tmp_path / 'llm', 'gemma2')
  config = tiny_config(**{'model.backbone': str(tmp_path / 'llm'), 'train.max_steps': 6,
                          'train.eval_every': 6})
  result = trainer.train_and_evaluate(config, tmp_path / 'wd')
  assert np.isfinite(result['test']['ndcg@10'])
  saved = config_base.load(tmp_path / 'wd')
  assert saved.model.backbone_type == 'gemma2' and saved.model.attn_softcap == 5.0
  assert tuple(saved.model.layer_types) == ('sliding_attention', 'full_attention')
  shutil.rmtree(tmp_path / 'llm')
  again = trainer.evaluate(saved, tmp_path / 'wd')
  assert again['test']['ndcg@10'] == pytest.approx(result['test']['ndcg@10'], abs=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_next_token_loss_and_gradients_match_transformers(tmp_path, mesh, family):
  """Training signal, not only the forward pass: transformers' next-token loss (labels=) and its
  gradients equal ours over the text vocabulary for every family: through Qwen2's biases, the
  windows (Mistral, Gemma 2/3), the soft-caps and post norms (Gemma 2/3) and the q/k norms (Qwen3,
  Gemma 3)."""
  model, _ = save_reference(tmp_path, family)
  tokens = text_tokens(12)[None]
  ids = torch.as_tensor(tokens, dtype=torch.long)
  out = model(input_ids=ids, labels=ids)
  out.loss.backward()
  theirs = dict(model.named_parameters())
  ours, _ = hf_import.load_hf_decoder(tmp_path, num_items=NUM_ITEMS, mesh=mesh, rules=DEFAULT_RULES)

  def loss_fn(m):
    logits = m.logits(m(jax.numpy.asarray(tokens)))[0, :-1, :VOCAB]  # [seq - 1, VOCAB]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jax.numpy.mean(jax.numpy.take_along_axis(logp, tokens[0, 1:, None], axis=-1))

  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(ours)
  np.testing.assert_allclose(float(loss), out.loss.item(), **TOL)
  g = lambda x: np.asarray(jax.device_get(x[...]), np.float32)
  grad = lambda name: theirs[name].grad.numpy()
  for i in range(2):  # the local layer and the global one
    pre, block = f'model.layers.{i}.', grads.blocks[i]
    np.testing.assert_allclose(g(block.attn.wq).reshape(32, -1).T,
                               grad(pre + 'self_attn.q_proj.weight'), **TOL)
    np.testing.assert_allclose(g(block.mlp.w_down).T, grad(pre + 'mlp.down_proj.weight'), **TOL)
    if family in ('gemma2', 'gemma3_text'):
      np.testing.assert_allclose(g(block.attn_post_norm.scale),
                                 grad(pre + 'post_attention_layernorm.weight'), **TOL)
      np.testing.assert_allclose(g(block.mlp_post_norm.scale),
                                 grad(pre + 'post_feedforward_layernorm.weight'), **TOL)
    if family in ('qwen3', 'gemma3_text'):
      np.testing.assert_allclose(g(block.attn.k_norm.scale), grad(pre + 'self_attn.k_norm.weight'),
                                 **TOL)
  np.testing.assert_allclose(g(grads.embed)[:VOCAB], grad('model.embed_tokens.weight'), **TOL)


@pytest.mark.parametrize('family,scan', [('llama', False), ('gemma2', False), ('mistral', True)])
def test_lora_run_exported_loads_in_transformers_with_the_trained_hidden_states(tmp_path, family,
                                                                               scan):
  """A LoRA run from a transformers-saved checkpoint, merged and exported in the Hugging Face
  layout (``train.export.export_backbone``), is read by transformers itself: fed the trained item
  rows, its final hidden states are the trained (adapted) decoder's, not the source model's. With
  ``scan`` the run stacks its blocks (``model.scan_layers``): loaded stacked, exported per layer."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import export, restore, trainer  # pylint: disable=import-outside-toplevel
  reference, _ = save_reference(tmp_path / 'llm', family)
  config = tiny_config(**{'model.backbone': str(tmp_path / 'llm'), 'model.dropout': 0.0,
                          'model.lora_rank': 4, 'model.lora_targets': 'q,k,v,o,gate,up,down',
                          'mesh.shape': (2, 2, 2), 'train.num_epochs': 1, 'train.eval_every': 4,
                          'optimizer.learning_rate': 1e-2, 'model.scan_layers': scan})
  trainer.train_and_evaluate(config, tmp_path / 'wd')
  model = restore.load_model(tmp_path / 'wd', 'best')
  cfg = model.spec.cfg
  assert cfg.lora_rank == 4 and cfg.scan_layers == scan
  if scan:  # one stacked tree, layer axis first
    assert model.params['blocks']['attn']['wq'].shape[0] == cfg.num_layers
  items = np.random.default_rng(3).integers(1, cfg.num_items + 1, 12).astype(np.int32)
  ours = np.asarray(nnx.merge(model.spec.graphdef, model.params)(jax.numpy.asarray(items[None])))[0]
  table = np.asarray(jax.device_get(model.params['item_embed']), np.float32)
  scale = cfg.d_model ** 0.5 if cfg.embed_scale else 1.0
  out = export.export_backbone(tmp_path / 'wd', tmp_path / 'hf')
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      str(out), dtype=torch.float32, attn_implementation='eager').eval()
  np.testing.assert_allclose(ours, hf_hidden(theirs, scale * table[items][None])[0], **TOL)
  # The adapters moved the model: the source checkpoint gives other hidden states.
  source = hf_hidden(reference, scale * table[items][None])[0]
  assert np.abs(source - ours).max() > 100 * TOL['atol']
