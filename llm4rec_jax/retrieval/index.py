"""A ScaNN maximum-inner-product index over item embeddings, tied to the checkpoint it came from.

:class:`ItemIndex` wraps a ScaNN searcher (``scann.scann_ops_pybind``): a k-means tree over the
items, anisotropic (AH) quantised scoring inside the searched leaves, then exact re-ordering of the
best candidates. Small catalogs use ScaNN's exact brute-force scorer instead. The tree, quantisation
and re-order settings follow from the catalog size (:func:`default_params`) unless
``config.retrieval`` overrides them.

Items are addressed by their integer ids (the model's vocabulary ids, or user ids for a user index);
ScaNN keeps them as string docids so :meth:`ItemIndex.upsert` / :meth:`ItemIndex.delete` can change
the index in place (ScaNN 1.4 supports both; an upsert of an existing id replaces its vector).

Every index records :class:`IndexMeta`: the checkpoint step, which embedding it holds
(``'item_table'``: the model's item representation, the one its output head scores), and a
fingerprint of the vectors it was built from. :meth:`ItemIndex.load` refuses an index whose step or
vectors do not match the checkpoint it is loaded against (:class:`IndexMismatchError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from llm4rec_jax.errors import ConfigError, Llm4RecError

META_FILE = 'index_meta.json'
SKETCH_FILE = 'index_sketch.npy'
SKETCH_DIM = 8


class IndexMismatchError(Llm4RecError):
  """An index that was built from a different checkpoint or embedding than the one in use."""


@dataclasses.dataclass(frozen=True)
class IndexParams:
  """ScaNN settings. ``num_leaves == 0`` means brute force (exact scoring, no tree)."""
  num_leaves: int
  leaves_to_search: int
  dims_per_block: int = 2  # AH: dimensions per 4-bit code (lut16)
  anisotropic_threshold: float = 0.2  # AH noise shaping for inner product (ScaNN's recommendation)
  reorder: int = 100  # candidates re-scored exactly (float32) before the final top-k
  training_sample_size: int = 100_000


def default_params(num_items: int, dim: int, overrides: Mapping[str, Any] | None = None
                   ) -> IndexParams:
  """Settings chosen from the catalog size; non-zero fields of ``overrides`` (``config.retrieval``)
  win.

  Below ``brute_force_below`` items (default 50,000) exact brute force: at that size it takes well
  under a millisecond per query and decoder-state queries lose recall in a tree. Above,
  ~sqrt(n) leaves (ScaNN's rule of thumb; 1,000 at a million items), searching 5% of them (at least
  32), 2 dimensions per AH block, and 100 candidates re-ordered exactly.
  """
  o = dict(overrides or {})
  brute_below = int(o.get('brute_force_below', 0) or 50_000)
  if num_items < brute_below:
    return IndexParams(num_leaves=0, leaves_to_search=0)
  leaves = int(o.get('num_leaves', 0) or max(16, round(math.sqrt(num_items))))
  # k-means wants a few dozen points per leaf.
  leaves = max(1, min(leaves, num_items // 32))
  # 5% of the leaves, but at least 32: a query from another distribution than the items (a
  # decoder state) needs the wider search on small catalogs.
  search = int(o.get('leaves_to_search', 0) or min(leaves, max(32, math.ceil(0.05 * leaves))))
  dpb = int(o.get('dims_per_block', 0) or 2)
  threshold = o.get('anisotropic_threshold', None)
  params = IndexParams(
      num_leaves=leaves, leaves_to_search=min(search, leaves), dims_per_block=min(dpb, dim),
      anisotropic_threshold=0.2 if threshold is None else float(threshold),
      reorder=int(o.get('reorder', 0) or 100),
      training_sample_size=min(num_items, int(o.get('training_sample_size', 0) or 100_000)))
  if params.leaves_to_search <= 0 or params.reorder <= 0:
    raise ConfigError('retrieval', f'invalid index parameters {params}')
  return params


def fingerprint(vectors: np.ndarray) -> str:
  """sha256 of the float32 vectors and their shape: which embedding an index holds."""
  v = np.ascontiguousarray(vectors, np.float32)
  h = hashlib.sha256(repr(v.shape).encode())
  h.update(v.tobytes())
  return h.hexdigest()[:32]


def sketch(vectors: np.ndarray) -> np.ndarray:
  """float32 [n, SKETCH_DIM]: every row through a fixed random projection, to tell float noise
  (a recomputation on other hardware) from a changed row without storing the vectors twice."""
  v = np.asarray(vectors, np.float32)
  proj = np.random.default_rng(0).normal(size=(v.shape[1], SKETCH_DIM)).astype(np.float32)
  return v @ proj / np.sqrt(v.shape[1])


@dataclasses.dataclass
class IndexMeta:
  """What an index holds: ``step`` of the checkpoint, ``embedding`` name, the built vectors'
  ``fingerprint``/``shape``; ``upserts``/``deletes`` count later edits (the fingerprint stays that
  of the checkpoint's vectors)."""
  step: int | None
  embedding: str
  fingerprint: str
  shape: tuple[int, int]
  params: dict[str, Any]
  upserts: int = 0
  deletes: int = 0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> IndexMeta:
    d = dict(d)
    d['shape'] = tuple(d['shape'])
    return cls(**d)


def check_matches(meta: IndexMeta, *, step: int | None, vectors: np.ndarray | None,
                  built_sketch: np.ndarray | None = None, where: str = 'index') -> None:
  """Raises :class:`IndexMismatchError` unless ``meta`` was built at ``step`` from ``vectors``.

  Identical vectors match by fingerprint; otherwise every row's :func:`sketch` must agree with
  ``built_sketch`` to float noise (a recomputation on other hardware), so a different checkpoint
  or embedding is refused.
  """
  if step is not None and meta.step != step:
    raise IndexMismatchError(f'{where}: built from checkpoint step {meta.step}, but step {step} is '
                             'loaded; rebuild it (llm4rec index --workdir=...)')
  if vectors is None:
    return
  if tuple(vectors.shape) != tuple(meta.shape):
    raise IndexMismatchError(f'{where}: holds {meta.embedding} of shape {tuple(meta.shape)}, the '
                             f'checkpoint gives {tuple(vectors.shape)}; rebuild it')
  if fingerprint(vectors) == meta.fingerprint:
    return
  current = sketch(vectors)
  scale = float(np.abs(built_sketch).max()) if built_sketch is not None else 0.0
  if built_sketch is None or not np.allclose(current, built_sketch, rtol=1e-4,
                                             atol=1e-5 * (scale or 1.0)):
    raise IndexMismatchError(f'{where}: its {meta.embedding} vectors (fingerprint '
                             f'{meta.fingerprint}) differ from the checkpoint\'s; rebuild it')


@contextlib.contextmanager
def _local_folder(directory: epath.Path, upload: bool = False) -> Iterator[str]:
  """A local folder for ScaNN, which reads and writes local files only: ``directory`` itself when
  local; else a temporary copy of its files (``upload``: a temporary folder whose files are copied
  into ``directory`` afterwards)."""
  if '://' not in os.fspath(directory):
    yield os.fspath(directory)
    return
  with tempfile.TemporaryDirectory() as tmp:
    if not upload:
      for f in directory.iterdir():
        if f.is_file():
          pathlib.Path(tmp, f.name).write_bytes(f.read_bytes())
    yield tmp
    if upload:
      for f in pathlib.Path(tmp).iterdir():
        (directory / f.name).write_bytes(f.read_bytes())


class ItemIndex:
  """ScaNN inner-product index over ``(id, vector)`` pairs.

  Use :meth:`build`, then :meth:`search` / :meth:`search_batched`; :meth:`upsert` and
  :meth:`delete` edit it in place; :meth:`save` / :meth:`load` persist it with its
  :class:`IndexMeta`.
  """

  def __init__(self, searcher, params: IndexParams, meta: IndexMeta):
    self._searcher = searcher
    self.params = params
    self.meta = meta
    self._sketch: np.ndarray | None = None  # of the built vectors (saved for the mismatch check)
    self._refresh_ids()

  def _refresh_ids(self) -> None:
    # Position in the ScaNN dataset -> our integer id (ScaNN's wrapper keeps the docid list in
    # position order, also after its swap-with-last deletes).
    self._ids = np.asarray([int(d) for d in self._searcher.docids], np.int64)

  @classmethod
  def build(cls, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None, *,
            params: IndexParams | None = None, step: int | None = None,
            embedding: str = 'item_table', num_threads: int = 0) -> ItemIndex:
    """Indexes ``vectors`` [n, d] (float32) under integer ``ids`` [n] (default 0..n-1).

    ``params`` default to :func:`default_params` of ``n``; ``step``/``embedding`` are recorded for
    the mismatch check. ``num_threads`` > 0 caps ScaNN's training/search threads.
    """
    import scann  # pylint: disable=import-outside-toplevel
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.ndim != 2 or not len(vectors):
      raise ValueError(f'vectors must be a non-empty [n, d] matrix, got shape {vectors.shape}')
    ids = np.arange(len(vectors)) if ids is None else np.asarray(ids, np.int64)
    if ids.shape != (len(vectors),) or len(np.unique(ids)) != len(ids):
      raise ValueError(f'ids must be {len(vectors)} distinct integers, got shape {ids.shape}')
    n, d = vectors.shape
    params = params or default_params(n, d)
    k = min(10, n)
    b = scann.scann_ops_pybind.builder(vectors, k, 'dot_product')
    if num_threads:
      b = b.set_n_training_threads(num_threads)
    if params.num_leaves:
      b = b.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.leaves_to_search,
                 training_sample_size=min(n, params.training_sample_size))
      b = b.score_ah(params.dims_per_block,
                     anisotropic_quantization_threshold=params.anisotropic_threshold)
      b = b.reorder(params.reorder)
    else:
      b = b.score_brute_force()
    searcher = b.build(docids=[str(int(i)) for i in ids])
    if num_threads:
      searcher.set_num_threads(num_threads)
    meta = IndexMeta(step=step, embedding=embedding, fingerprint=fingerprint(vectors),
                     shape=(n, d), params=dataclasses.asdict(params))
    index = cls(searcher, params, meta)
    index._sketch = sketch(vectors)
    return index

  def __len__(self) -> int:
    return int(self._searcher.size())

  @property
  def ids(self) -> np.ndarray:
    """int64 [len(self)]: the ids currently in the index."""
    return self._ids.copy()

  def search_batched(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
                     reorder: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` by inner product for each of ``queries`` [b, d].

    Returns ``(ids int64 [b, k], scores float32 [b, k])``, best first; when fewer than ``k`` items
    exist the tail is id -1 with score -inf. ``leaves_to_search``/``reorder`` override the built
    defaults for this call (more = higher recall, slower).
    """
    q = np.ascontiguousarray(queries, np.float32)
    if q.ndim != 2 or q.shape[1] != self.meta.shape[1]:
      raise ValueError(f'queries must be [b, {self.meta.shape[1]}], got {q.shape}')
    b = len(q)
    if not b or not len(self):
      return np.full((b, k), -1, np.int64), np.full((b, k), -np.inf, np.float32)
    leaves = leaves_to_search or -1
    pre = max(reorder or self.params.reorder, k) if self.params.num_leaves else -1
    # The raw pybind searcher returns position arrays; map them to ids here (vectorised) instead of
    # through the wrapper's per-element docid lists.
    pos, dist = self._searcher.searcher.search_batched(q, k, pre, leaves, b >= 64, 256)
    pos = np.asarray(pos, np.int64).reshape(b, -1)
    dist = np.asarray(dist, np.float32).reshape(b, -1)
    ids = np.full((b, k), -1, np.int64)
    scores = np.full((b, k), -np.inf, np.float32)
    m = min(k, pos.shape[1])
    # ScaNN pads a short result with position 0 and a NaN distance.
    ok = (pos[:, :m] >= 0) & np.isfinite(dist[:, :m])
    ids[:, :m] = np.where(ok, self._ids[np.clip(pos[:, :m], 0, None)], -1)
    scores[:, :m] = np.where(ok, dist[:, :m], -np.inf)
    return ids, scores

  def search(self, query: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One query [d] -> ``(ids [k], scores [k])``; see :meth:`search_batched`."""
    ids, scores = self.search_batched(np.asarray(query, np.float32)[None], k, **kwargs)
    return ids[0], scores[0]

  def upsert(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
    """Inserts new ids, or replaces the vectors of existing ones; findable immediately."""
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
    if vectors.shape != (len(ids), self.meta.shape[1]):
      raise ValueError(f'upsert of {len(ids)} ids needs vectors [{len(ids)}, {self.meta.shape[1]}]'
                       f', got {vectors.shape}')
    self._searcher.upsert([str(int(i)) for i in ids], vectors, batch_size=max(1, len(ids)))
    self.meta.upserts += len(ids)
    self._refresh_ids()

  def delete(self, ids: Sequence[int] | np.ndarray) -> None:
    """Removes ids from the index (KeyError for an id it does not hold)."""
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    missing = np.setdiff1d(ids, self._ids)
    if len(missing):
      raise KeyError(f'ids not in the index: {missing[:10].tolist()}')
    self._searcher.delete([str(int(i)) for i in ids])
    self.meta.deletes += len(ids)
    self._refresh_ids()

  def save(self, directory: str | os.PathLike) -> epath.Path:
    """Writes the ScaNN assets and ``index_meta.json`` into ``directory`` (created; local or any
    ``etils.epath`` path)."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _local_folder(directory, upload=True) as local:
      self._searcher.serialize(local)
    (directory / META_FILE).write_text(json.dumps(self.meta.to_json()))
    if self._sketch is not None:
      with (directory / SKETCH_FILE).open('wb') as f:
        np.save(f, self._sketch)
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike, *, step: int | None = None,
           vectors: np.ndarray | None = None) -> ItemIndex:
    """Loads an index saved by :meth:`save`.

    With ``step`` and/or ``vectors`` (the embedding the current checkpoint gives), refuses an
    index built from anything else (:class:`IndexMismatchError`); see :func:`check_matches`.
    """
    import scann  # pylint: disable=import-outside-toplevel
    directory = epath.Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
      raise IndexMismatchError(f'{meta_path} not found: not an index directory (build one with '
                               'llm4rec index --workdir=...)')
    meta = IndexMeta.from_json(json.loads(meta_path.read_text()))
    sketch_path = directory / SKETCH_FILE
    built = None
    if sketch_path.exists():
      with sketch_path.open('rb') as f:
        built = np.load(f)
    check_matches(meta, step=step, vectors=vectors, built_sketch=built, where=str(directory))
    with _local_folder(directory) as local:
      searcher = scann.scann_ops_pybind.load_searcher(local)
    index = cls(searcher, IndexParams(**meta.params), meta)
    index._sketch = built
    return index

  def memory_bytes(self) -> int:
    """Bytes of the serialized index (its in-memory footprint is of the same order)."""
    import tempfile  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
      self._searcher.serialize(tmp)
      return sum(f.stat().st_size for f in pathlib.Path(tmp).iterdir())
