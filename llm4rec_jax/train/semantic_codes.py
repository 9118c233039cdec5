"""Item semantic IDs for ``model.head='semantic_id'``: which embeddings are quantised, and where the
codes live (``WORKDIR/semantic_ids.npz``, written once and reused on resume, evaluation and serving,
so a model is always paired with the codes it was trained on).

Sources (``config.semantic_ids.source``):
  * ``'features'``: the item's raw content features (multi-hot categorical fields, z-scored numerics,
    standardised dense matrices, text embeddings when ``content.text`` is set), reduced by PCA;
  * ``'text'``: sentence embeddings of the item text (all text fields);
  * a path to a trained workdir: that model's item table, i.e. its fused id+content embeddings.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.content import text_cache
from llm4rec_jax.data import content as content_lib
from llm4rec_jax.data.dataset import FeatureTable
from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.model.semantic_ids import SemanticIds, rq_kmeans
from llm4rec_jax.train import restore

PCA_DIM = 64


def _pca(x: np.ndarray, dim: int) -> np.ndarray:
  x = x - x.mean(0)
  if x.shape[1] <= dim:
    return x
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:dim].T


def feature_matrix(table: FeatureTable, config: Any) -> np.ndarray:
  """[rows, <= PCA_DIM] item vectors from the raw content features (row 0 = pad, zeros)."""
  cc = config.content
  parts = []
  for name, field in table.categorical.items():
    multi_hot = np.zeros((table.num_rows, len(field.vocab)), np.float32)
    for i in range(1, field.num_rows):
      row = field.row(i)
      if len(row):
        multi_hot[i, row] = 1.0 / np.sqrt(len(row))
    parts.append(multi_hot)
    logging.info('semantic ids: categorical %s (%d values)', name, len(field.vocab))
  for name, v in table.numeric.items():
    ok = np.isfinite(v)
    z = np.where(ok, (v - np.nanmean(v)) / (np.nanstd(v) + 1e-6), 0.0)
    parts.append(z[:, None].astype(np.float32))
  for name, m in table.dense.items():
    ok = np.isfinite(m).all(1)
    z = np.where(ok[:, None], (m - m[ok].mean(0)) / (m[ok].std(0) + 1e-6), 0.0)
    parts.append(z.astype(np.float32) / np.sqrt(m.shape[1]))
  if cc.text:
    text = _text_embeddings(table, config, cc.text)
    parts.append(text)
  if not parts:
    raise ConfigError('semantic_ids.source', "'features' needs item content; this dataset has none "
                      "(use 'text' or a trained workdir)")
  x = np.concatenate(parts, axis=1)
  out = np.zeros((table.num_rows, min(PCA_DIM, x.shape[1])), np.float32)
  out[1:] = _pca(x[1:], PCA_DIM)
  return out


def _text_embeddings(table: FeatureTable, config: Any, fields: Any) -> np.ndarray:
  names = list(table.text) if fields in ('all', True) else [f for f in str(fields).split(',') if f]
  emb, _ = text_cache.table_text_embeddings(
      table, fields=names, model_dir=config.content.text_model or None,
      cache_dir=content_lib.cache_dir(config.content), max_length=config.content.text_max_length,
      batch_size=config.content.text_batch_size)
  return emb


def source_embeddings(config: Any, table: FeatureTable) -> np.ndarray:
  """[rows, d] embeddings of the items (row 0 = pad) from ``config.semantic_ids.source``."""
  source = config.semantic_ids.source
  if source == 'features':
    return feature_matrix(table, config)
  if source == 'text':
    return _text_embeddings(table, config, 'all')
  path = source if '://' in source else os.path.expanduser(source)
  if not workdir_lib.path(path, workdir_lib.CONFIG).exists():
    raise ConfigError('semantic_ids.source', f"{source!r} is not 'features', 'text' or a trained "
                      'workdir (no config.json there)')
  rec = restore.load_model(path)
  if len(rec.raw_ids) != table.num_rows or any(
      str(a) != str(b) for a, b in zip(rec.raw_ids, table.raw_ids)):
    raise DataError('the workdir was trained on a different item catalog', path=str(path),
                    field='semantic_ids.source')
  return rec.item_table()[:table.num_rows]


def load_or_build(config: Any, workdir: workdir_lib.PathLike, table: FeatureTable,
                  write: bool = True) -> SemanticIds:
  """The workdir's codes if present (checked against the catalog), else computed and saved."""
  sid = workdir_lib.read_semantic_ids(workdir)
  if sid is not None:
    if sid.num_items != table.num_rows - 1:
      raise DataError(f'codes for {sid.num_items} items, catalog has {table.num_rows - 1}',
                      path=str(workdir_lib.path(workdir, workdir_lib.SEMANTIC_IDS)))
    return sid
  sc = config.semantic_ids
  sid = rq_kmeans(source_embeddings(config, table), num_levels=sc.num_levels,
                  codebook_size=sc.codebook_size, iters=sc.iters, seed=config.seed)
  logging.info('semantic ids: levels %s, collision rate %.4f', sid.codebook_sizes,
               sid.collision_rate)
  if write:
    workdir_lib.root(workdir).mkdir(parents=True, exist_ok=True)
    workdir_lib.write_semantic_ids(workdir, sid)
  return sid


def code_rows(sid: SemanticIds, vocab_size: int) -> np.ndarray:
  """int32 [vocab, levels]: the codes padded with -1 rows to the model's vocabulary."""
  out = np.full((vocab_size, sid.num_levels), -1, np.int32)
  out[:len(sid.codes)] = sid.codes
  return out
