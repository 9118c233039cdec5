"""Item titles as text tokens of the Hugging Face backbone (``config.model.title_tokens``).

With ``model.title_tokens = T > 0`` (and ``model.backbone``) every history item enters the item
decoder as its title's first ``T`` text tokens followed by its item token, the way LLM-based
recommenders put item text in the prompt. At experiment build every catalog item's text
(``model.title_fields``, joined as :func:`text_cache.item_texts` joins them) is tokenized by the
checkpoint's own tokenizer (``transformers.AutoTokenizer``, local files only, no special tokens),
cut to ``T`` tokens and right padded. Only the text-embedding rows those tokens use are read from
the checkpoint (``model.embed_tokens.weight``), into a compact table whose row 0 (padding) is zero;
the per-item array holds indices into it. Both are constant content arrays
(``ItemContent.title_tokens`` / ``title_table``): never trained, not in the optimizer state, saved
with the workdir's content (serving reads them from there).

The sequence budget: the decoder runs ``data.max_len * (T + 1)`` positions, which must not exceed
the checkpoint's ``max_position_embeddings``. Title padding is masked out of attention and does
not advance the rotary positions, so sliding windows count real tokens, as transformers counts them
in the unpadded sequence.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4rec_jax.content import text_cache
from llm4rec_jax.data.dataset import PAD_ID, FeatureTable
from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model import hf_import

def sequence_length(max_len: int, title_tokens: int, bos_token: bool = False) -> int:
  """Positions the decoder runs for ``max_len`` history items of ``title_tokens`` title tokens
  (and the start token, ``model.bos_token``)."""
  return max_len * (title_tokens + 1) + int(bos_token)


def check_budget(max_len: int, title_tokens: int, llm: hf_import.LlmConfig,
                 checkpoint: str | pathlib.Path, bos_token: bool = False) -> None:
  """ConfigError when ``max_len * (title_tokens + 1)`` (+ 1 start token) exceeds the checkpoint's
  positions."""
  length = sequence_length(max_len, title_tokens, bos_token)
  if llm.max_positions and length > llm.max_positions:
    raise ConfigError('model.title_tokens', f'data.max_len={max_len} items x ({title_tokens} '
                      f'title tokens + 1 item token){" + 1 start token" if bos_token else ""} = '
                      f'{length} positions exceed the max_position_embeddings='
                      f'{llm.max_positions} of {checkpoint}; lower model.title_tokens or '
                      'data.max_len')


def load_tokenizer(checkpoint: str | pathlib.Path) -> Any:
  """The checkpoint's own ``transformers`` tokenizer, from its local files only."""
  import transformers  # pylint: disable=import-outside-toplevel
  try:
    return transformers.AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
  except (OSError, ValueError) as e:
    raise ConfigError('model.title_tokens', f'{checkpoint} has no tokenizer transformers can '
                      f'load (tokenizer.json / tokenizer_config.json): {e}') from e


def title_texts(table: FeatureTable, fields: str | Sequence[str]) -> list[str]:
  """One text per row of ``table``: the ``fields`` joined (row 0 and rows without text: '')."""
  names = [f for f in (fields.split(',') if isinstance(fields, str) else fields) if f]
  if not table.text:
    raise ConfigError('model.title_fields', 'the dataset has no item text fields; title tokens '
                      'need item titles')
  unknown = [f for f in names if f not in table.text]
  if unknown or not names:
    raise ConfigError('model.title_fields', f'{unknown or names} are not text fields of the item '
                      f'table (available: {sorted(table.text)})')
  texts, has_text = text_cache.item_texts(table, names)
  if not has_text.any():
    raise ConfigError('model.title_fields', f'no item has text in {names}')
  return texts


def tokenize_titles(tokenizer: Any, texts: Sequence[str], length: int) -> np.ndarray:
  """int64 [len(texts), length] token ids of each text (no special tokens), cut to ``length``
  tokens, right padded with -1; row 0 and empty texts are all padding."""
  out = np.full((len(texts), length), -1, np.int64)
  rows = [i for i, t in enumerate(texts) if i != PAD_ID and t]
  if rows:
    ids = tokenizer([texts[i] for i in rows], add_special_tokens=False, truncation=True,
                    max_length=length)['input_ids']
    for r, tokens in zip(rows, ids):
      out[r, :len(tokens)] = tokens[:length]
  return out


def build_title_tokens(model_cfg: Any, max_len: int, table: FeatureTable, vocab_size: int,
                       row_multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [vocab_size, T] indices into the title table (0 = padding), float32 [rows, d_model]
  the checkpoint's text-embedding rows they use, row 0 zero, rows padded to ``row_multiple``) for
  ``model_cfg`` (``config.model``: ``backbone``, ``title_tokens``, ``title_fields``)."""
  length, checkpoint = int(model_cfg.title_tokens), pathlib.Path(model_cfg.backbone)
  llm = hf_import.read_config(checkpoint, num_items=1)
  check_budget(max_len, length, llm, checkpoint, bool(model_cfg.get('bos_token', False)))
  ids = tokenize_titles(load_tokenizer(checkpoint), title_texts(table, model_cfg.title_fields),
                        length)  # [rows, T]
  if ids.max(initial=-1) >= llm.text_vocab:
    raise DataError(f'the tokenizer gives token id {int(ids.max())}, the text embedding has '
                    f'{llm.text_vocab} rows (config.json vocab_size)', path=str(checkpoint))
  used = np.unique(ids[ids >= 0])  # sorted text token ids
  tokens = np.zeros((vocab_size, length), np.int32)  # [vocab, T]
  tokens[:len(ids)] = np.where(ids >= 0, np.searchsorted(used, ids) + 1, 0)
  rows = -(-(len(used) + 1) // row_multiple) * row_multiple
  embed = np.zeros((rows, llm.d_model), np.float32)  # [rows, d_model]
  if len(used):
    embed[1:len(used) + 1] = hf_import.text_embedding_rows(checkpoint, used)
  lengths = (ids[1:] >= 0).sum(axis=1)
  logging.info('title tokens: %d of %d items have text, %.1f tokens per item (%d at the limit of '
               '%d); %d distinct text tokens', int((lengths > 0).sum()), len(lengths),
               lengths.mean(), int((lengths == length).sum()), length, len(used))
  return tokens, embed
