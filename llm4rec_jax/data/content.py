"""Item content as fixed-shape arrays for the model: one row per vocabulary id (row 0 = padding).

:func:`build_item_content` turns a :class:`~llm4rec_jax.data.dataset.FeatureTable` into an
:class:`ItemContent` pytree (what the jitted step receives) and a hashable :class:`ContentSpec` (what
the model is built from). Every modality carries a presence mask, so a missing value is masked in the
model, never silently read as zero:

* categorical: each multi-valued field -> ``int32 [vocab, max_values]`` category ids (0 = none);
* numeric: all numeric fields -> z-scored ``float32 [vocab, fields]`` plus a mask (NaN = missing);
* dense: each matrix (e.g. image features) -> ``float32 [vocab, dim]`` plus a row mask;
* text: a precomputed sentence embedding per item (see :mod:`llm4rec_jax.content.text_cache`),
  plus the item's token ids when the text encoder is fine-tuned (``config.text_finetune``).

Beside the modalities, ``config.model.title_tokens`` adds each item's title as token rows of a
Hugging Face backbone's text embeddings (:mod:`llm4rec_jax.content.title_tokens`), which the decoder
reads in the input sequence before the item token.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from llm4rec_jax.content import text_cache
from llm4rec_jax.data.dataset import FeatureTable
from llm4rec_jax.errors import ConfigError, DataError

MODALITIES = ('text', 'categorical', 'numeric', 'dense')


@dataclasses.dataclass(frozen=True)
class ContentSpec:
  """Static shapes of the item content (hashable: it is part of the model config)."""
  categorical: tuple[tuple[str, int, int], ...] = ()  # (field, vocabulary size incl. pad, max values)
  numeric: tuple[str, ...] = ()
  dense: tuple[tuple[str, int], ...] = ()  # (field, dim)
  text_dim: int = 0  # 0 = no text modality

  @property
  def num_tokens(self) -> int:
    """Modality tokens per item: one per categorical field, one for numerics, one per dense
    matrix, one for text."""
    return (len(self.categorical) + (1 if self.numeric else 0) + len(self.dense)
            + (1 if self.text_dim else 0))

  @property
  def token_names(self) -> tuple[str, ...]:
    names = [f'categorical:{f}' for f, _, _ in self.categorical]
    names += ['numeric'] if self.numeric else []
    names += [f'dense:{f}' for f, _ in self.dense]
    names += ['text'] if self.text_dim else []
    return tuple(names)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> ContentSpec:
    return cls(categorical=tuple(tuple(x) for x in d.get('categorical', ())),
               numeric=tuple(d.get('numeric', ())),
               dense=tuple(tuple(x) for x in d.get('dense', ())),
               text_dim=int(d.get('text_dim', 0)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ItemContent:
  """Per-item content arrays, row ``i`` = item id ``i`` (rows past the catalog are padding)."""
  categorical: tuple[Any, ...] = ()  # int32 [vocab, max_values] per field
  numeric: Any = None  # float32 [vocab, fields] (0 where missing)
  numeric_mask: Any = None  # bool [vocab, fields]
  dense: tuple[Any, ...] = ()  # float32 [vocab, dim] per matrix (0 where missing)
  dense_mask: tuple[Any, ...] = ()  # bool [vocab] per matrix
  text: Any = None  # float32 [vocab, text_dim]
  text_mask: Any = None  # bool [vocab]
  # int32 [vocab, text_len] token ids of each item's text (config.text_finetune: the live encoder
  # re-reads them); None when the text encoder is frozen.
  text_tokens: Any = None
  # bool [vocab]: the item occurs in the training data, so its id embedding was trained.
  id_known: Any = None
  # int32 [vocab, levels] semantic-ID code tuple per item (-1 rows: padding), model.head=semantic_id.
  codes: Any = None
  # config.model.title_tokens (llm4rec_jax.content.title_tokens): int32 [vocab, T] each item's
  # title as rows of title_table (0 = padding), and float32 [rows, d_model] those rows of the
  # backbone's text embedding table (row 0 zero), frozen.
  title_tokens: Any = None
  title_table: Any = None

  def token_mask(self):
    """bool [vocab, num_tokens]: which modality tokens of each item are present (spec order)."""
    cols = [c[:, 0] > 0 for c in self.categorical]
    if self.numeric_mask is not None:
      cols.append(jnp.any(self.numeric_mask, axis=-1))
    cols += list(self.dense_mask)
    if self.text_mask is not None:
      cols.append(self.text_mask)
    return jnp.stack(cols, axis=-1)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the arrays as one ``.npz`` at ``path`` (local or any ``etils.epath`` path)."""
    arrays = {f'categorical_{i}': np.asarray(a) for i, a in enumerate(self.categorical)}
    arrays.update({f'dense_{i}': np.asarray(a) for i, a in enumerate(self.dense)})
    arrays.update({f'dense_mask_{i}': np.asarray(a) for i, a in enumerate(self.dense_mask)})
    for name in ('numeric', 'numeric_mask', 'text', 'text_mask', 'text_tokens', 'id_known',
                 'codes', 'title_tokens', 'title_table'):
      if getattr(self, name) is not None:
        arrays[name] = np.asarray(getattr(self, name))
    with epath.Path(path).open('wb') as f:
      np.savez_compressed(f, **arrays)

  @classmethod
  def load(cls, path: str | os.PathLike, spec: ContentSpec) -> ItemContent:
    path = epath.Path(path)
    if not path.exists():
      raise DataError('item content arrays missing; train in this workdir first', path=str(path))
    with path.open('rb') as f, np.load(f) as z:
      def get(name):
        return z[name] if name in z.files else None
      return cls(categorical=tuple(z[f'categorical_{i}'] for i in range(len(spec.categorical))),
                 numeric=get('numeric'), numeric_mask=get('numeric_mask'),
                 dense=tuple(z[f'dense_{i}'] for i in range(len(spec.dense))),
                 dense_mask=tuple(z[f'dense_mask_{i}'] for i in range(len(spec.dense))),
                 text=get('text'), text_mask=get('text_mask'), text_tokens=get('text_tokens'),
                 id_known=get('id_known'), codes=get('codes'),
                 title_tokens=get('title_tokens'), title_table=get('title_table'))


def _select(available: Sequence[str], wanted: Any, field: str) -> list[str]:
  """``wanted`` is 'all', '' / () for none, or a comma list / sequence of field names."""
  if wanted == 'all':
    return list(available)
  names = [w for w in (wanted.split(',') if isinstance(wanted, str) else wanted) if w]
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ConfigError(field, f'unknown field(s) {unknown}; this dataset has {list(available)}')
  return names


def _pad_rows(a: np.ndarray, vocab: int) -> np.ndarray:
  out = np.zeros((vocab,) + a.shape[1:], a.dtype)
  out[:len(a)] = a
  return out


def build_item_content(table: FeatureTable, vocab_size: int, content_cfg: Any,
                       text_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
                       train_items: np.ndarray | None = None) -> tuple[ItemContent, ContentSpec]:
  """Arrays and spec for the fields that ``content_cfg`` selects.

  Args:
    table: item features, row ``i`` = item id ``i``.
    vocab_size: rows of the output (the model's padded vocabulary).
    content_cfg: ``config.content`` (``categorical``/``numeric``/``dense`` field selections,
      ``max_values``); text is used when ``text_embeddings`` is given.
    text_embeddings: ``(float32 [rows, dim], bool [rows] has_text)`` for the table's rows.
    train_items: item ids that occur in training (sets ``id_known``; default: every item).
  """
  if table.num_rows > vocab_size:
    raise ConfigError('model.vocab_size', f'{vocab_size} rows cannot hold {table.num_rows} items')
  max_values = int(content_cfg.max_values)
  cat_arrays, cat_spec = [], []
  for f in _select(sorted(table.categorical), content_cfg.categorical, 'content.categorical'):
    field = table.categorical[f]
    lengths = np.diff(field.offsets)
    width = max(1, min(max_values, int(lengths.max(initial=0))))
    if lengths.max(initial=0) > width:
      logging.info('content: %d items have more than %d %s values; keeping the first %d',
                   int((lengths > width).sum()), width, f, width)
    ids = np.zeros((vocab_size, width), np.int32)
    for i in range(field.num_rows):
      row = field.row(i)[:width]
      ids[i, :len(row)] = row
    cat_arrays.append(ids)
    cat_spec.append((f, len(field.vocab), width))

  num_fields = _select(sorted(table.numeric), content_cfg.numeric, 'content.numeric')
  numeric = numeric_mask = None
  if num_fields:
    cols, masks = [], []
    for f in num_fields:
      v = table.numeric[f].astype(np.float64)
      present = np.isfinite(v)
      present[0] = False
      mu = v[present].mean() if present.any() else 0.0
      sd = v[present].std() if present.any() else 1.0
      cols.append(np.where(present, (v - mu) / (sd if sd > 0 else 1.0), 0.0).astype(np.float32))
      masks.append(present)
    numeric = _pad_rows(np.stack(cols, -1), vocab_size)
    numeric_mask = _pad_rows(np.stack(masks, -1), vocab_size)

  dense_arrays, dense_masks, dense_spec = [], [], []
  for f in _select(sorted(table.dense), content_cfg.dense, 'content.dense'):
    m = table.dense[f].astype(np.float32)
    present = np.isfinite(m).all(axis=1)
    present[0] = False
    # Standardise per dimension so matrices of any scale enter the model alike.
    mu, sd = m[present].mean(0), m[present].std(0) + 1e-6
    dense_arrays.append(_pad_rows(np.where(present[:, None], (m - mu) / sd, 0.0).astype(np.float32),
                                  vocab_size))
    dense_masks.append(_pad_rows(present, vocab_size))
    dense_spec.append((f, m.shape[1]))

  text = text_mask = None
  text_dim = 0
  if text_embeddings is not None:
    emb, has = text_embeddings
    if len(emb) != table.num_rows:
      raise DataError(f'text embeddings have {len(emb)} rows, the catalog {table.num_rows}',
                      field='content.text')
    has = np.asarray(has, bool).copy()
    has[0] = False
    text = _pad_rows(np.where(has[:, None], emb, 0.0).astype(np.float32), vocab_size)
    text_mask = _pad_rows(has, vocab_size)
    text_dim = emb.shape[1]

  spec = ContentSpec(categorical=tuple(cat_spec), numeric=tuple(num_fields),
                     dense=tuple(dense_spec), text_dim=text_dim)
  content = ItemContent(categorical=tuple(cat_arrays), numeric=numeric, numeric_mask=numeric_mask,
                        dense=tuple(dense_arrays), dense_mask=tuple(dense_masks), text=text,
                        text_mask=text_mask, id_known=_id_known(table.num_rows, vocab_size,
                                                                train_items))
  return content, spec


def _id_known(rows: int, vocab_size: int, train_items: np.ndarray | None) -> np.ndarray:
  known = np.zeros(vocab_size, bool)
  if train_items is None:
    known[1:rows] = True
  else:
    known[np.asarray(train_items, np.int64)] = True
  known[0] = False
  return known


def coverage(content: ItemContent, spec: ContentSpec, num_items: int) -> dict[str, float]:
  """Fraction of catalog items (ids 1..num_items) that have each modality token."""
  mask = np.asarray(content.token_mask())[1:num_items + 1]
  return {name: float(mask[:, j].mean()) for j, name in enumerate(spec.token_names)}


def load_item_content(config: Any, table: FeatureTable, vocab_size: int,
                      train_items: np.ndarray | None = None,
                      ) -> tuple[ItemContent | None, ContentSpec | None]:
  """The content arrays ``config.content`` selects (text is encoded once and cached on disk).

  Returns ``(None, None)`` when no content field is selected.
  """
  cc = config.content
  if not any(cc[k] for k in ('categorical', 'numeric', 'dense', 'text')):
    return None, None
  text = tokens = None
  if cc.text:
    fields = _select(list(table.text), cc.text, 'content.text')
    text = text_cache.table_text_embeddings(
        table, fields=fields, model_dir=cc.text_model or None, cache_dir=cache_dir(cc),
        max_length=cc.text_max_length, batch_size=cc.text_batch_size)
    if config.get('text_finetune', {}).get('enabled', False):
      tokens = text_cache.item_text_tokens(text_cache.item_texts(table, fields)[0],
                                           model_dir=cc.text_model or None,
                                           max_length=cc.text_max_length)
  content, spec = build_item_content(table, vocab_size, cc, text, train_items)
  if tokens is not None:
    content = dataclasses.replace(content, text_tokens=_pad_rows(tokens, vocab_size))
  return content, spec


def cache_dir(content_cfg: Any) -> pathlib.Path:
  """Where encoded item texts are cached: ``content.cache_dir``, else ``$LLM4REC_CACHE_DIR``, else
  ``~/.cache/llm4rec_jax``."""
  root = content_cfg.cache_dir or os.environ.get('LLM4REC_CACHE_DIR') or '~/.cache/llm4rec_jax'
  return pathlib.Path(root).expanduser() / 'text'
