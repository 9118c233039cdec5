"""TIGER-style semantic IDs: residual k-means codes per item and a dense prefix trie over them.

:func:`rq_kmeans` turns item embeddings into a short tuple of codes per item (level 0 clusters the
embeddings, each later level clusters what the earlier centroids left over). Items that end up with
the same tuple get one extra level that numbers them ``0, 1, 2, ...`` within their group, so every
item's full tuple is unique and maps back to exactly one item id.

:class:`PrefixTrie` stores the valid tuples as one dense ``[nodes at level l, codebook l]`` table
per level, so constrained decoding is a gather inside ``jit`` (see ``semantic_head``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from llm4rec_jax.errors import ConfigError, DataError

FORMAT_VERSION = 1
PAD_CODE = -1  # every level of row 0 (the padding item)


# ----------------------------------------------------------------------------- k-means


def _sq_dists(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Squared distances [n, k] (clipped at 0: the expansion can go slightly negative)."""
  d = x @ centroids.T  # [n, k]; in place below: no [n, k] temporaries in the Lloyd loop
  d *= -2.0
  d += (centroids * centroids).sum(1)[None]
  d += (x * x).sum(1)[:, None]
  return np.maximum(d, 0.0, out=d)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ seeding: each next centroid drawn with probability ~ squared distance."""
  n = x.shape[0]
  centroids = np.empty((k, x.shape[1]), x.dtype)
  centroids[0] = x[rng.integers(n)]
  closest = ((x - centroids[0]) ** 2).sum(1)  # [n]
  for i in range(1, k):
    cdf = np.cumsum(closest, dtype=np.float64)  # [n]
    # All points already sit on a centroid (duplicates): any pick is as good as another.
    idx = rng.integers(n) if cdf[-1] <= 0 else np.searchsorted(cdf, rng.random() * cdf[-1], 'right')
    centroids[i] = x[min(idx, n - 1)]
    np.minimum(closest, ((x - centroids[i]) ** 2).sum(1), out=closest)
  return centroids


def kmeans(x: np.ndarray, k: int, *, iters: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding; returns (centroids [k, d], assignment int32 [n]).

  An emptied cluster is re-seeded with the point farthest from its centroid, so all ``k`` codes stay
  in use while there are at least ``k`` distinct points. Requires ``1 <= k <= n``.
  """
  centroids = _kmeans_pp(x, k, rng)  # [k, d]
  assign = np.full(x.shape[0], -1, np.int64)
  for _ in range(iters):
    dists = _sq_dists(x, centroids)  # [n, k]
    new_assign = dists.argmin(1)
    if np.array_equal(new_assign, assign):
      break
    assign = new_assign
    counts = np.bincount(assign, minlength=k)  # [k]
    dim = x.shape[1]
    # One flat bincount: per-cluster sums of every coordinate, [k, d].
    sums = np.bincount((assign[:, None] * dim + np.arange(dim)).ravel(), weights=x.ravel(),
                       minlength=k * dim).reshape(k, dim)
    filled = counts > 0
    centroids[filled] = (sums[filled] / counts[filled, None]).astype(centroids.dtype)
    empty = np.flatnonzero(~filled)
    if empty.size:
      far = np.argsort(-dists[np.arange(x.shape[0]), assign], kind='stable')[:empty.size]
      centroids[empty] = x[far]
  assign = _sq_dists(x, centroids).argmin(1)
  return centroids, assign.astype(np.int32)


def _rank_within_groups(codes: np.ndarray) -> tuple[np.ndarray, int]:
  """Rows of ``codes`` [n, L] numbered 0, 1, 2, ... within each tuple; and the largest group."""
  _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind='stable')
  starts = np.cumsum(counts) - counts  # first sorted position of each group
  rank = np.empty(codes.shape[0], np.int32)
  rank[order] = np.arange(codes.shape[0]) - starts[inverse[order]]
  return rank, int(counts.max())


def rq_kmeans(embeddings: np.ndarray, *, num_levels: int = 3, codebook_size: int = 256,
              iters: int = 20, seed: int = 0) -> SemanticIds:
  """Residual k-means semantic IDs for items 1..n from ``embeddings`` [n + 1, d] (row 0: pad).

  Each level runs k-means with ``min(codebook_size, n)`` centroids on the current residuals and
  subtracts the assigned centroid. If two items share the full tuple, one extra level is appended
  that numbers the items of each group (its size is the largest group); without collisions there is
  no extra level. Deterministic for a given ``seed``.
  """
  if num_levels < 1:
    raise ConfigError('model.semantic_ids.num_levels', f'must be >= 1, got {num_levels}')
  if codebook_size < 1:
    raise ConfigError('model.semantic_ids.codebook_size', f'must be >= 1, got {codebook_size}')
  emb = np.asarray(embeddings)
  if emb.ndim != 2 or emb.shape[0] < 2:
    raise DataError(f'item embeddings must be [num_items + 1, d] with >= 1 item, got {emb.shape}')
  if not np.all(np.isfinite(emb)):
    raise DataError('item embeddings contain NaN or Inf')
  residual = emb[1:].astype(np.float32)  # [n, d]
  n = residual.shape[0]
  k = min(codebook_size, n)
  rng = np.random.default_rng(seed)
  levels = []
  for _ in range(num_levels):
    centroids, assign = kmeans(residual, k, iters=iters, rng=rng)
    levels.append(assign)
    residual = residual - centroids[assign]
  codes = np.stack(levels, axis=1)  # [n, num_levels]
  sizes = [k] * num_levels
  rank, largest = _rank_within_groups(codes)
  if largest > 1:
    codes = np.concatenate([codes, rank[:, None]], axis=1)
    sizes.append(largest)
  pad_row = np.full((1, codes.shape[1]), PAD_CODE, np.int32)
  return SemanticIds(codes=np.concatenate([pad_row, codes]).astype(np.int32),
                     codebook_sizes=tuple(sizes), num_rq_levels=num_levels)


# ----------------------------------------------------------------------------- SemanticIds


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticIds:
  """Unique code tuples of items 1..num_items.

  ``codes`` int32 [num_items + 1, num_levels]: row ``i`` is item ``i``'s tuple, row 0 (padding) is
  all ``PAD_CODE`` (-1). Level ``l`` codes lie in ``[0, codebook_sizes[l])``. The first
  ``num_rq_levels`` levels come from residual k-means; a further level, if present, only separates
  items whose k-means tuples collide.
  """
  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  num_rq_levels: int

  def __post_init__(self):
    codes = np.asarray(self.codes, np.int32)
    object.__setattr__(self, 'codes', codes)
    object.__setattr__(self, 'codebook_sizes', tuple(int(s) for s in self.codebook_sizes))
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] != len(self.codebook_sizes):
      raise DataError(f'codes {codes.shape} must be [num_items + 1, {len(self.codebook_sizes)}]')
    if not 1 <= self.num_rq_levels <= codes.shape[1]:
      raise DataError(f'num_rq_levels={self.num_rq_levels} outside 1..{codes.shape[1]}')
    if np.any(codes[0] != PAD_CODE):
      raise DataError(f'row 0 (padding) must be all {PAD_CODE}, got {codes[0].tolist()}')
    items = codes[1:]
    if np.any(items < 0) or np.any(items >= np.array(self.codebook_sizes)):
      raise DataError(f'codes outside [0, codebook size) for sizes {self.codebook_sizes}')
    if np.unique(items, axis=0).shape[0] != items.shape[0]:
      raise DataError('code tuples are not unique per item')

  @property
  def num_items(self) -> int:
    return self.codes.shape[0] - 1

  @property
  def num_levels(self) -> int:
    return self.codes.shape[1]

  @property
  def collision_rate(self) -> float:
    """Fraction of items whose k-means tuple was already taken (they need the extra level)."""
    if self.num_levels == self.num_rq_levels:
      return 0.0
    return float(np.mean(self.codes[1:, -1] > 0))

  def _keys(self, codes: np.ndarray) -> np.ndarray:
    """Mixed-radix integer key of each tuple [..., L] -> int64 [...] (-1 where out of range)."""
    radix = np.cumprod((self.codebook_sizes[1:] + (1,))[::-1])[::-1]  # [L]
    ok = np.all((codes >= 0) & (codes < np.array(self.codebook_sizes)), axis=-1)
    return np.where(ok, (codes.astype(np.int64) * radix).sum(-1), -1)

  def to_items(self, codes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Item ids of code tuples: int [..., num_levels] -> int32 [...]; 0 for unknown tuples."""
    if float(np.prod(self.codebook_sizes, dtype=np.float64)) >= 2.0 ** 62:
      raise DataError(f'codebook sizes {self.codebook_sizes} too large for integer keys')
    codes = np.asarray(codes)
    if codes.shape[-1:] != (self.num_levels,):
      raise DataError(f'code tuples must end in {self.num_levels} levels, got {codes.shape}')
    item_keys = self._keys(self.codes[1:])  # [n]
    order = np.argsort(item_keys)
    sorted_keys = item_keys[order]
    query = self._keys(codes)
    pos = np.clip(np.searchsorted(sorted_keys, query), 0, len(sorted_keys) - 1)
    hit = (sorted_keys[pos] == query) & (query >= 0)
    return np.where(hit, order[pos] + 1, 0).astype(np.int32)

  def trie(self) -> PrefixTrie:
    """The dense prefix trie of all item tuples (see :class:`PrefixTrie`)."""
    return PrefixTrie.build(self.codes[1:], self.codebook_sizes)

  def save(self, path: str | os.PathLike) -> None:
    """Writes an ``.npz`` at exactly ``path`` (meant to sit next to a model checkpoint; local or
    any ``etils.epath`` path)."""
    with epath.Path(path).open('wb') as f:
      np.savez(f, codes=self.codes, codebook_sizes=np.array(self.codebook_sizes, np.int64),
               num_rq_levels=np.int64(self.num_rq_levels), format_version=np.int64(FORMAT_VERSION))

  @classmethod
  def load(cls, path: str | os.PathLike) -> SemanticIds:
    """Reads a file written by :meth:`save`, validating it."""
    try:
      with epath.Path(path).open('rb') as raw, np.load(raw) as f:
        version = int(f['format_version'])
        if version != FORMAT_VERSION:
          raise DataError(f'format version {version}, expected {FORMAT_VERSION}', path=str(path))
        return cls(codes=f['codes'], codebook_sizes=tuple(f['codebook_sizes'].tolist()),
                   num_rq_levels=int(f['num_rq_levels']))
    except (OSError, KeyError, ValueError) as e:
      raise DataError(f'not a semantic-ID file: {e}', path=str(path)) from e


# ----------------------------------------------------------------------------- PrefixTrie


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixTrie:
  """All valid code tuples as dense per-level transition tables (a pytree: pass it into ``jit``).

  ``children[l]`` int32 [nodes at level l, codebook_sizes[l]]: the node reached from prefix node
  ``n`` by code ``c``, or -1 if no item has that prefix. Level 0 has the single root node 0. At the
  last level the "node" reached is the item id itself (1..num_items), so leaves need no extra table.
  Memory is ``sum_l nodes_l * codebook_sizes[l]`` int32s (nodes_l <= num_items).
  """
  children: tuple[jax.Array | np.ndarray, ...]
  codebook_sizes: tuple[int, ...]
  num_items: int

  @classmethod
  def build(cls, item_codes: np.ndarray, codebook_sizes: Sequence[int]) -> PrefixTrie:
    """From unique tuples ``item_codes`` [num_items, L] of items 1..num_items."""
    n, num_levels = item_codes.shape
    node = np.zeros(n, np.int64)  # each item's prefix node at the current level
    tables = []
    for level in range(num_levels):
      if level + 1 < num_levels:
        _, nxt = np.unique(item_codes[:, :level + 1], axis=0, return_inverse=True)
        nxt = nxt.reshape(-1)
      else:
        nxt = np.arange(1, n + 1)
      table = np.full((int(node.max()) + 1, codebook_sizes[level]), -1, np.int32)
      table[node, item_codes[:, level]] = nxt
      tables.append(table)
      node = nxt
    return cls(children=tuple(tables), codebook_sizes=tuple(int(s) for s in codebook_sizes),
               num_items=n)

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)

  def next_nodes(self, level: int, node_ids: jax.Array) -> jax.Array:
    """int [...] prefix nodes at ``level`` -> int32 [..., codebook_sizes[level]] (-1 = invalid).

    A node id of -1 (a dead prefix) has no children.
    """
    table = jnp.asarray(self.children[level])
    rows = jnp.take(table, jnp.maximum(node_ids, 0), axis=0)  # [..., codebook]
    return jnp.where((node_ids >= 0)[..., None], rows, -1)

  def allowed_mask(self, level: int, node_ids: jax.Array) -> jax.Array:
    """bool [..., codebook_sizes[level]]: which codes extend prefix ``node_ids`` to a real item."""
    return self.next_nodes(level, node_ids) >= 0


jax.tree_util.register_dataclass(PrefixTrie, data_fields=['children'],
                                 meta_fields=['codebook_sizes', 'num_items'])
