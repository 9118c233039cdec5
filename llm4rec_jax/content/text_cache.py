"""Item-text embeddings, encoded once by the pretrained text encoder and cached as ``.npy``.

The cache file is named by a hash of everything that changes the numbers: the model (its
``config.json`` bytes plus the weights file's size and modification time), pooling, normalisation,
``max_length`` and the texts in order. A second call with the same inputs reads the file and does
not load the model at all.

Row 0 is the padding row (``FeatureTable`` convention) and is always all-zero; so is every row whose
text is empty, which :func:`item_texts` reports as ``has_text == False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from llm4rec_jax.model import text_encoder
from llm4rec_jax.data.dataset import PAD_ID, FeatureTable
from llm4rec_jax.errors import ConfigError

CACHE_VERSION = 1
_SENTENCE_END = ('.', '!', '?')


def item_texts(table: FeatureTable, fields: Sequence[str] | None = None
               ) -> tuple[list[str], np.ndarray]:
  """One string per row of ``table``: the non-empty values of ``fields`` (default: every text
  field, in table order), stripped and joined as sentences with ``'. '``.

  Plain values, no ``field:`` labels: sentence encoders are trained on natural text, and a title
  followed by a description reads as two sentences (a value already ending in ``.!?`` is joined with
  a space only). Returns ``(texts, has_text bool [rows])``; row 0 (padding) is ``''`` / False.
  """
  fields = list(table.text) if fields is None else list(fields)
  unknown = [f for f in fields if f not in table.text]
  if unknown:
    raise ConfigError('content.text', f'{unknown} are not text fields of the item table '
                      f'(available: {sorted(table.text)})')
  texts = []
  for row in range(table.num_rows):
    text = ''
    for value in (str(table.text[f][row] or '').strip() for f in fields):
      if value:
        text = value if not text else text + (' ' if text.endswith(_SENTENCE_END) else '. ') + value
    texts.append('' if row == PAD_ID else text)
  has_text = np.array([bool(t) for t in texts], dtype=bool)  # [rows]
  return texts, has_text


def _model_fingerprint(model_dir: pathlib.Path) -> dict[str, object]:
  weights = (model_dir / 'model.safetensors').stat()
  config = hashlib.sha256((model_dir / 'config.json').read_bytes()).hexdigest()
  return {'config_sha256': config, 'weights_size': weights.st_size,
          'weights_mtime_ns': weights.st_mtime_ns}


def cache_key(texts: Sequence[str], model_dir: pathlib.Path, *, pooling: str, normalize: bool,
              max_length: int) -> str:
  """sha256 over the model fingerprint, the encoding options and the texts (length-prefixed)."""
  h = hashlib.sha256()
  meta = {'version': CACHE_VERSION, 'model': _model_fingerprint(model_dir), 'pooling': pooling,
          'normalize': normalize, 'max_length': max_length, 'count': len(texts)}
  h.update(json.dumps(meta, sort_keys=True).encode())
  for t in texts:
    b = t.encode('utf-8')
    h.update(len(b).to_bytes(8, 'little'))
    h.update(b)
  return h.hexdigest()


def item_text_embeddings(texts: Sequence[str], *, cache_dir: str | os.PathLike | None,
                         model_dir: str | os.PathLike | None = None, pooling: str = 'mean',
                         normalize: bool = True, max_length: int = 128, batch_size: int = 256,
                         progress: bool = True) -> np.ndarray:
  """float32 [len(texts), hidden]: ``texts[i]`` encoded, zero for ``i == 0`` and for empty texts.

  Args:
    texts: one string per row; row 0 is the padding row.
    cache_dir: where ``text-emb-<hash>.npy`` files live (created if missing); None disables caching.
    model_dir: a model directory or Hub id (default :func:`text_encoder.default_model_dir`).
    pooling, normalize, max_length, batch_size, progress: as for
      :func:`text_encoder.encode_texts`.
  """
  texts = [str(t) for t in texts]
  local = text_encoder.resolve_model_dir(model_dir or text_encoder.default_model_dir())
  path = None
  if cache_dir is not None:
    key = cache_key(texts, local, pooling=pooling, normalize=normalize, max_length=max_length)
    path = pathlib.Path(cache_dir) / f'text-emb-{key[:32]}.npy'
    if path.is_file():
      try:
        cached = np.load(path)
        if cached.ndim == 2 and len(cached) == len(texts):
          return cached.astype(np.float32, copy=False)
        logging.warning('%s has shape %s for %d texts; re-encoding', path, cached.shape, len(texts))
      except (OSError, ValueError) as e:
        logging.warning('unreadable text-embedding cache %s (%s); re-encoding', path, e)

  rows = [i for i, t in enumerate(texts) if i != PAD_ID and t.strip()]
  model, tokenizer, cfg = text_encoder.load_pretrained(local)
  out = np.zeros((len(texts), cfg.hidden_size), np.float32)  # [rows, hidden]
  if rows:
    out[rows] = text_encoder.encode_texts(model, tokenizer, [texts[i] for i in rows],
                                          batch_size=batch_size, max_length=max_length,
                                          pooling=pooling, normalize=normalize, progress=progress)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.stem}.{os.getpid()}.tmp.npy')
    np.save(tmp, out)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
  return out


def table_text_embeddings(table: FeatureTable, *, fields: Sequence[str] | None = None,
                          cache_dir: str | os.PathLike | None,
                          model_dir: str | os.PathLike | None = None, **kwargs
                          ) -> tuple[np.ndarray, np.ndarray]:
  """``(float32 [rows, hidden], has_text bool [rows])`` for an item :class:`FeatureTable`;
  ``kwargs`` go to :func:`item_text_embeddings`."""
  texts, has_text = item_texts(table, fields)
  emb = item_text_embeddings(texts, cache_dir=cache_dir, model_dir=model_dir, **kwargs)
  return emb, has_text


def item_text_tokens(texts: Sequence[str], *, model_dir: str | os.PathLike | None = None,
                     max_length: int = 128) -> np.ndarray:
  """int32 [len(texts), length]: each text's token ids ([CLS] ... [SEP], truncated to
  ``max_length``), right padded with the model's pad id to the longest row (at most
  ``max_length``). Row 0 (padding) and empty texts are all padding.

  These fixed-length rows are what the text encoder re-reads when it is fine-tuned inside the
  recommender (``config.text_finetune``); only the tokenizer is loaded, not the weights.
  """
  local = text_encoder.resolve_model_dir(model_dir or text_encoder.default_model_dir())
  cfg = text_encoder.BertConfig.from_json(local / 'config.json')
  if max_length > cfg.max_position_embeddings:
    raise ConfigError('content.text_max_length', f'{max_length} exceeds the model\'s '
                      f'{cfg.max_position_embeddings} positions')
  rows = [i for i, t in enumerate(texts) if i != PAD_ID and str(t).strip()]
  ids = text_encoder.tokenize(text_encoder.load_tokenizer(local), [str(texts[i]) for i in rows],
                              max_length) if rows else []
  length = max([len(t) for t in ids] + [1])
  out = np.full((len(texts), length), cfg.pad_token_id, np.int32)  # [rows, length]
  for r, t in zip(rows, ids):
    out[r, :len(t)] = t
  return out
