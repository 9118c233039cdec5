"""The ScaNN index of a trained workdir: ``llm4rec index`` builds it, ``recommend`` serves with it.

``WORKDIR/index/`` holds the index over the item table of one checkpoint (the vectors the softmax
head scores, so inner-product search ranks exactly as the model would). :func:`build_index` writes
it; :func:`load_index` opens it for a :class:`~llm4rec_jax.serving.recommender.Recommender` and refuses an index
built from another checkpoint. :func:`top_k_with_index` is the serving path: the model's hidden state
after the history is the query, ScaNN returns ``config.retrieval.candidates`` candidates, and those
are re-scored exactly (hidden . item vector, the model's own logits) before the final top-k. The
catalog encoding (item table and content tokens) is computed once per loaded checkpoint, so a request
costs one decoder pass over the history, an ANN search and ``candidates`` dot products.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.fusion import CatalogEncoding
from llm4rec_jax.retrieval import context as context_lib
from llm4rec_jax.retrieval.index import ItemIndex, default_params
from llm4rec_jax.train import restore


def index_dir(workdir: workdir_lib.PathLike) -> epath.Path:
  return workdir_lib.path(workdir, workdir_lib.INDEX)


def _catalog_table(rec) -> np.ndarray:
  """float32 [num_items + 1, d]: the item vectors the head of ``rec`` (a ``Recommender`` or a
  ``restore.TrainedModel``) scores (row 0 = pad)."""
  table = context_lib.item_table(rec.spec.graphdef, rec.params, rec.content)
  return table[:len(rec.raw_ids)]


def build_index(workdir: workdir_lib.PathLike, *,
                checkpoint: str = workdir_lib.AUTO) -> dict[str, Any]:
  """Builds ``WORKDIR/index`` for a checkpoint (default: the one serving uses, 'auto': the refit
  when the workdir has one, else the best); returns a summary."""
  rec = restore.load_model(workdir, checkpoint)
  if rec.spec.cfg.head != 'softmax':
    raise ConfigError('model.head', 'the item index serves the softmax head (item vectors); the '
                      'semantic-ID head generates codes instead')
  table = _catalog_table(rec)
  vectors = table[1:]
  params = default_params(len(vectors), vectors.shape[1], rec.config.retrieval)
  t0 = time.perf_counter()
  index = ItemIndex.build(vectors, np.arange(1, len(table)), params=params, step=rec.step)
  build_s = time.perf_counter() - t0
  path = index.save(index_dir(workdir))
  return {'index': str(path), 'checkpoint_step': rec.step, 'num_items': len(vectors),
          'dim': int(vectors.shape[1]), 'params': index.meta.params,
          'fingerprint': index.meta.fingerprint, 'build_s': round(build_s, 3)}


def load_index(rec) -> tuple[ItemIndex | None, np.ndarray | None]:
  """(index, item table) for a Recommender when ``WORKDIR/index`` exists, else (None, None).

  Raises IndexMismatchError when the index was built from another checkpoint or embedding.
  """
  path = index_dir(rec.workdir)
  if not path.exists() or rec.spec.cfg.head != 'softmax':
    return None, None
  table = _catalog_table(rec)
  return ItemIndex.load(path, step=rec.step, vectors=table[1:]), table


@functools.lru_cache(maxsize=4)
def _encode_fn(graphdef: nnx.GraphDef):
  @jax.jit
  def encode(params, content):
    c = nnx.merge(graphdef, params).encode_catalog(content)
    return c.table, c.tokens, c.token_mask
  return encode


@functools.lru_cache(maxsize=4)
def _hidden_fn(graphdef: nnx.GraphDef):
  @jax.jit
  def hidden(params, inputs, encoded, context):
    model = nnx.merge(graphdef, params)
    catalog = CatalogEncoding(*encoded)
    return model(inputs, catalog, context=context)[:, -1]  # [b, d_model]
  return hidden


def top_k_with_index(rec, inputs: np.ndarray, seen: np.ndarray, k: int,
                     context: np.ndarray | None = None, *, score_bias=None,
                     extra_candidates=()) -> tuple[np.ndarray, np.ndarray]:
  """(scores [1, k], items [1, k]): ANN candidates after the history, re-scored exactly.

  ``seen`` [1, n] are excluded (0 = none); ``context`` is the RAG context of the history (if the
  model was trained with retrieval). ``score_bias`` [1, vocab] is added to the exact scores;
  ``extra_candidates`` (ids) join the ANN's, e.g. the items a transition blend lifts.
  """
  if getattr(rec, 'ann_encoded', None) is None:
    # Parameters are fixed while serving: encode the catalog (fusion of every item's content) once.
    rec.ann_encoded = _encode_fn(rec.spec.graphdef)(rec.params, rec.content)
  hidden = np.asarray(jax.device_get(_hidden_fn(rec.spec.graphdef)(
      rec.params, inputs, rec.ann_encoded, context)), np.float32)  # [1, d_model]
  exclude = set(np.asarray(seen).ravel().tolist()) - {0}
  num = max(k, int(rec.config.retrieval.candidates)) + len(exclude)
  ids, _ = rec.ann_index.search_batched(hidden, min(num, len(rec.ann_index)))
  found = [i for i in ids[0] if i > 0 and i not in exclude]
  known = set(found)
  found += [int(i) for i in extra_candidates if i > 0 and i not in exclude and i not in known]
  cand = np.asarray(found, np.int64)
  if len(cand) < k:  # the history covers the candidates: score the whole catalog instead
    cand = np.asarray([i for i in range(1, len(rec.ann_table)) if i not in exclude], np.int64)
  exact = rec.ann_table[cand] @ hidden[0]  # the model's logits of the candidates
  if score_bias is not None:  # serving's popularity adjustment and transition blend
    exact = exact + np.asarray(score_bias)[0, cand]
  order = np.argsort(-exact, kind='stable')[:k]
  return exact[order][None], cand[order][None]


def serving_retriever(rec) -> context_lib.Retriever:
  """The RAG retriever of a model trained with ``config.retrieval.rag`` (items source only: serving
  has no training histories to find similar users in)."""
  rcfg = rec.config.retrieval
  if rcfg.source != 'items':
    raise ConfigError('retrieval.source', f'serving retrieves context from the item index only; '
                      f'this model was trained with source={rcfg.source!r}')
  retriever = context_lib.Retriever(rcfg, len(rec.raw_ids) - 1, rec.spec.cfg.max_len, [], [])
  retriever.refresh(_catalog_table(rec), rec.step)
  return retriever
