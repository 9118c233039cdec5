"""Natural-language explanations: the recommender's decoder blocks, conditioned on a prefix.

The prefix is ``[user, item, item feature words..., attributed history items...]``: the item's
content (its most frequent feature words in past reviews), and the user's history items ordered by
their attribution for this item, each embedding plus ``attribution share x`` a learned vector. The
explanation's WordPiece tokens (the ``transformers`` tokenizer of the offline text encoder) follow a
BOS token. Prefix positions see each other; text positions see the prefix and earlier text
(PETER's mask). The blocks are :class:`llm4rec_jax.model.decoder.Block` (RMSNorm, rotary GQA
attention, SwiGLU), so this is the same decoder architecture over a different vocabulary.

Training minimises the next-token cross-entropy (optionally label-smoothed) plus, with
``context_loss > 0``, PETER's context prediction: the item position's output predicts every word of
the explanation as a bag of words, which pushes the prefix to carry what this item's and user's
reviews talk about instead of the corpus's most generic sentence.

The output vocabulary is the set of WordPiece ids seen in training (``vocab_ids`` maps them back),
which keeps the softmax small. One jitted train step; greedy and beam-search decoding are jitted
over a static length.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from llm4rec_jax.model.decoder import Block, DecoderConfig
from llm4rec_jax.model.layers import RMSNorm, param

PAD, BOS, EOS = 0, 1, 2  # compact-vocabulary ids; the rest follow vocab_ids
SEGMENTS = 5  # user, item, feature, history, text


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  vocab_size: int  # compact text vocabulary (PAD, BOS, EOS, then training WordPieces)
  num_users: int
  num_items: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: int = 256
  dropout: float = 0.2
  num_features: int = 3
  history_len: int = 5
  max_text_len: int = 24  # generated tokens including EOS
  context_loss: float = 0.0  # weight of the bag-of-words context prediction (PETER); 0 = off
  label_smoothing: float = 0.0  # of the next-token targets (training only)

  @property
  def prefix_len(self) -> int:
    return 2 + self.num_features + self.history_len

  def block_config(self) -> DecoderConfig:
    return DecoderConfig(vocab_size=self.vocab_size, num_items=self.num_items,
                         max_len=self.prefix_len + self.max_text_len, d_model=self.d_model,
                         num_layers=self.num_layers, num_heads=self.num_heads,
                         mlp_dim=self.mlp_dim, dropout=self.dropout)


class ExplanationDecoder(nnx.Module):
  """Prefix-conditioned text decoder; logits over the compact vocabulary (tied embeddings)."""

  def __init__(self, cfg: GeneratorConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.normal(stddev=cfg.d_model ** -0.5)
    self.text_embed = param(rngs, init, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    self.user_embed = param(rngs, init, (cfg.num_users + 1, cfg.d_model), ('vocab', 'embed'))
    self.item_embed = param(rngs, init, (cfg.num_items + 1, cfg.d_model), ('vocab', 'embed'))
    self.segment_embed = param(rngs, init, (SEGMENTS, cfg.d_model), (None, 'embed'))
    self.attribution_vec = param(rngs, init, (cfg.d_model,), ('embed',))
    bcfg = cfg.block_config()
    self.blocks = nnx.List([Block(bcfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, rngs=rngs)
    self.embed_dropout = nnx.Dropout(cfg.dropout)

  def prefix(self, cond: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """cond: user [b], item [b], features [b, F] (compact text ids, 0 = none), history [b, H]
    (item ids, 0 = none), weights [b, H] -> (embeddings [b, P, d], valid [b, P])."""
    seg = self.segment_embed[...]
    u = jnp.take(self.user_embed[...], cond['user'], axis=0)[:, None] + seg[0]
    i = jnp.take(self.item_embed[...], cond['item'], axis=0)[:, None] + seg[1]
    f = jnp.take(self.text_embed[...], cond['features'], axis=0) + seg[2]  # [b, F, d]
    h = (jnp.take(self.item_embed[...], cond['history'], axis=0) + seg[3]
         + cond['weights'][..., None] * self.attribution_vec[...])  # [b, H, d]
    x = jnp.concatenate([u, i, f, h], axis=1)
    b = x.shape[0]
    valid = jnp.concatenate([jnp.ones((b, 2), bool), cond['features'] > 0, cond['history'] > 0],
                            axis=1)
    return x, valid

  def __call__(self, cond: dict[str, jax.Array], text_in: jax.Array, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               with_context: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """text_in int [b, T] (BOS first, PAD after the end) -> logits [b, T, vocab]; with
    ``with_context`` also the item position's bag-of-words logits [b, vocab]."""
    p, valid_p = self.prefix(cond)
    t = jnp.take(self.text_embed[...], text_in, axis=0) + self.segment_embed[...][4]
    x = jnp.concatenate([p, t], axis=1) * (self.cfg.d_model ** 0.5)
    plen, tlen = p.shape[1], text_in.shape[1]
    n = plen + tlen
    valid = jnp.concatenate([valid_p, jnp.ones_like(text_in, bool)], axis=1)  # [b, n]
    idx = jnp.arange(n)
    # Prefix keys are visible to every query; text keys causally to text queries only.
    sees = (idx[None, :] < plen) | ((idx[:, None] >= plen) & (idx[None, :] <= idx[:, None]))
    mask = (sees[None] & valid[:, None, :]) | jnp.eye(n, dtype=bool)[None]
    positions = jnp.broadcast_to(idx, (x.shape[0], n))
    x = self.embed_dropout(x, deterministic=deterministic, rngs=rngs)
    for block in self.blocks:
      x = block(x, positions, mask[:, None], deterministic=deterministic, rngs=rngs)
    if not with_context:
      h = self.final_norm(x[:, plen:]).astype(jnp.float32)
      return h @ self.text_embed[...].T
    h = self.final_norm(jnp.concatenate([x[:, 1:2], x[:, plen:]], axis=1)).astype(jnp.float32)
    logits = h @ self.text_embed[...].T  # [b, 1 + T, vocab]
    return logits[:, 1:], logits[:, 0]


# --- training ---------------------------------------------------------------------------------

def loss_fn(model: ExplanationDecoder, batch: dict[str, jax.Array], *, deterministic: bool,
            rngs: nnx.Rngs | None = None, objective: bool = True) -> jax.Array:
  """Mean next-token cross-entropy over the text tokens; with ``objective`` (training) the
  config's label smoothing and context-prediction term are applied, without it (validation) the
  plain cross-entropy, comparable across configs."""
  cfg = model.cfg
  use_context = objective and cfg.context_loss > 0
  out = model(batch['cond'], batch['text_in'], deterministic=deterministic, rngs=rngs,
              with_context=use_context)
  logits, ctx_logits = out if use_context else (out, None)
  targets = batch['text_out']  # [b, T]
  w = (targets != PAD).astype(jnp.float32)
  if objective and cfg.label_smoothing > 0:
    labels = optax.smooth_labels(jax.nn.one_hot(targets, cfg.vocab_size), cfg.label_smoothing)
    ce = optax.softmax_cross_entropy(logits, labels)
  else:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
  if use_context:
    # Every word of the explanation (not EOS) from the one item-position output: a bag of words.
    words = (targets > EOS).astype(jnp.float32)
    logp = jax.nn.log_softmax(ctx_logits)  # [b, vocab]
    nll = -jnp.take_along_axis(logp, targets, axis=1)  # [b, T]
    loss = loss + cfg.context_loss * jnp.sum(nll * words) / jnp.maximum(jnp.sum(words), 1.0)
  return loss


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation):
  """The one jitted step ``(params, opt_state, batch, rng) -> (params, opt_state, loss)``."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch, rng):
    def f(p):
      model = nnx.merge(graphdef, p)
      return loss_fn(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=rng))
    loss, grads = jax.value_and_grad(f)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


@functools.lru_cache(maxsize=4)
def _eval_loss_fn(graphdef: nnx.GraphDef):
  @jax.jit
  def f(params, batch):
    return loss_fn(nnx.merge(graphdef, params), batch, deterministic=True, objective=False)
  return f


# --- decoding ---------------------------------------------------------------------------------

def _repeat(tree, k: int):
  return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), tree)


@functools.lru_cache(maxsize=8)
def make_decoder(graphdef: nnx.GraphDef, *, max_len: int, beam_size: int = 1,
                 length_penalty: float = 0.6) -> Any:
  """Jitted ``(params, cond) -> tokens int [b, max_len]`` (compact ids, PAD after EOS).

  ``beam_size=1`` is greedy decoding; otherwise beam search keeping ``beam_size`` hypotheses, a
  finished hypothesis extends only with PAD at no cost, and the best final hypothesis maximises
  ``log p / length ** length_penalty``.
  """

  def logprobs_at(model, cond, tokens, t):
    logits = model(cond, tokens[:, :max_len])[:, t]  # [n, V]
    logits = logits.at[:, PAD].set(-jnp.inf).at[:, BOS].set(-jnp.inf)
    return jax.nn.log_softmax(logits)

  @jax.jit
  def greedy(params, cond):
    model = nnx.merge(graphdef, params)
    b = cond['user'].shape[0]
    tokens = jnp.zeros((b, max_len + 1), jnp.int32).at[:, 0].set(BOS)
    done = jnp.zeros((b,), bool)

    def body(t, carry):
      tokens, done = carry
      nxt = jnp.argmax(logprobs_at(model, cond, tokens, t), axis=-1).astype(jnp.int32)
      nxt = jnp.where(done, PAD, nxt)
      return tokens.at[:, t + 1].set(nxt), done | (nxt == EOS)

    tokens, _ = jax.lax.fori_loop(0, max_len, body, (tokens, done))
    return tokens[:, 1:]

  @jax.jit
  def beam(params, cond):
    model = nnx.merge(graphdef, params)
    b, k = cond['user'].shape[0], beam_size
    cond_k = _repeat(cond, k)
    tokens = jnp.zeros((b, k, max_len + 1), jnp.int32).at[:, :, 0].set(BOS)
    score = jnp.full((b, k), -jnp.inf).at[:, 0].set(0.0)
    done = jnp.zeros((b, k), bool)

    def body(t, carry):
      tokens, score, done = carry
      lp = logprobs_at(model, cond_k, tokens.reshape(b * k, -1), t)
      v = lp.shape[-1]
      lp = lp.reshape(b, k, v)
      finished = jnp.full((v,), -jnp.inf).at[PAD].set(0.0)
      lp = jnp.where(done[..., None], finished, lp)
      cand = (score[..., None] + lp).reshape(b, k * v)
      score, flat = jax.lax.top_k(cand, k)  # [b, k]
      parent, tok = flat // v, (flat % v).astype(jnp.int32)
      tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, t + 1].set(tok)
      done = jnp.take_along_axis(done, parent, axis=1) | (tok == EOS)
      return tokens, score, done

    tokens, score, done = jax.lax.fori_loop(0, max_len, body, (tokens, score, done))
    length = jnp.maximum(jnp.sum(tokens[:, :, 1:] != PAD, axis=-1), 1)
    best = jnp.argmax(score / length ** length_penalty, axis=1)  # [b]
    return jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0, 1:]

  return greedy if beam_size == 1 else beam


# --- text <-> ids -----------------------------------------------------------------------------

@dataclasses.dataclass
class TextCodec:
  """WordPiece ids of the text encoder's tokenizer <-> the generator's compact vocabulary."""
  tokenizer: Any
  vocab_ids: np.ndarray  # int [V] WordPiece id of each compact id (PAD/BOS/EOS: -1)

  @classmethod
  def fit(cls, tokenizer, texts) -> TextCodec:
    seen = sorted({t for ids in _wordpieces(tokenizer, texts) for t in ids})
    return cls(tokenizer, np.asarray([-1, -1, -1] + seen, np.int64))

  @functools.cached_property
  def _index(self) -> dict[int, int]:
    return {int(w): i for i, w in enumerate(self.vocab_ids) if w >= 0}

  def encode(self, texts, max_len: int) -> np.ndarray:
    """[n, max_len] compact ids, EOS-terminated, PAD after; unknown WordPieces are dropped."""
    out = np.zeros((len(texts), max_len), np.int32)
    for r, ids in enumerate(_wordpieces(self.tokenizer, texts)):
      ids = [self._index[t] for t in ids if t in self._index][:max_len - 1] + [EOS]
      out[r, :len(ids)] = ids
    return out

  def word_ids(self, words) -> np.ndarray:
    """The compact id of each word's first WordPiece (0 where unknown)."""
    out = []
    for ids in _wordpieces(self.tokenizer, words):
      out.append(self._index.get(ids[0], PAD) if ids else PAD)
    return np.asarray(out, np.int32)

  def decode(self, tokens: np.ndarray) -> list[str]:
    texts = []
    for row in np.asarray(tokens):
      ids = []
      for t in row:
        if t == EOS or t == PAD:
          break
        if t > EOS:
          ids.append(int(self.vocab_ids[t]))
      texts.append(_detokenize(self.tokenizer, ids))
    return texts


def _detokenize(tokenizer, ids: list[int]) -> str:
  if hasattr(tokenizer, 'encode_batch'):  # a raw tokenizers.Tokenizer
    text = tokenizer.decode(ids, skip_special_tokens=True)
  else:
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
  # WordPiece decoding spaces out contractions and punctuation ("i ' ve", "it ."): join them back
  # so the text reads normally and word-level metrics see "i've" as the reference does.
  text = re.sub(r" ' (?=\w)", "'", text)
  return re.sub(r' ([.,!?;:])', r'\1', text).strip()


def _wordpieces(tokenizer, texts) -> list[list[int]]:
  texts = list(texts)
  if not texts:
    return []
  if hasattr(tokenizer, 'encode_batch'):  # a raw tokenizers.Tokenizer
    return [[i for i, s in zip(e.ids, e.special_tokens_mask) if not s]
            for e in tokenizer.encode_batch(texts)]
  return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                   return_token_type_ids=False)['input_ids']


def text_batch(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """EOS-terminated targets [n, T] -> (inputs BOS + targets[:-1], targets)."""
  text_in = np.concatenate([np.full((len(tokens), 1), BOS, np.int32), tokens[:, :-1]], axis=1)
  text_in = np.where(text_in == EOS, PAD, text_in)  # nothing is predicted after EOS
  return text_in, tokens


# --- save / load ------------------------------------------------------------------------------

CONFIG, PARAMS, VOCAB_IDS = 'config.json', 'params.npz', 'vocab_ids.npy'  # a saved generator


def save(directory: str | os.PathLike, cfg: GeneratorConfig, params: Any, codec: TextCodec,
         extra: dict | None = None) -> None:
  """``config.json``, ``params.npz`` (flattened pure dict) and ``vocab_ids.npy`` in
  ``directory`` (local or any ``etils.epath`` path)."""
  d = epath.Path(directory)
  d.mkdir(parents=True, exist_ok=True)
  (d / CONFIG).write_text(json.dumps({'generator': dataclasses.asdict(cfg), **(extra or {})},
                                     indent=2))
  flat = {'/'.join(map(str, k)): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
          for k in [[getattr(p, 'key', getattr(p, 'idx', p)) for p in k]]}
  with (d / PARAMS).open('wb') as f:
    np.savez(f, **flat)
  with (d / VOCAB_IDS).open('wb') as f:
    np.save(f, codec.vocab_ids)


def is_saved(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds a generator written by :func:`save`."""
  return (epath.Path(directory) / PARAMS).exists()


def load(directory: str | os.PathLike, tokenizer) -> tuple[ExplanationDecoder, TextCodec, dict]:
  """The saved generator as an NNX model (with its codec and the saved extras)."""
  d = epath.Path(directory)
  meta = json.loads((d / CONFIG).read_text())
  cfg = GeneratorConfig(**meta.pop('generator'))
  model = ExplanationDecoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  with (d / PARAMS).open('rb') as f, np.load(f) as z:
    def fill(path, _):
      return jnp.asarray(z['/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)])
    pure = jax.tree_util.tree_map_with_path(fill, pure)
  nnx.replace_by_pure_dict(state, pure)
  with (d / VOCAB_IDS).open('rb') as f:
    vocab_ids = np.load(f)
  return nnx.merge(graphdef, state), TextCodec(tokenizer, vocab_ids), meta
