"""Exact inner-product top-k, jitted and sharded over the mesh.

The item table is split along the catalog over the mesh axes the ``vocab`` rule names; each shard
scores its rows in chunks (bounded memory: ``queries x chunk`` scores at a time), keeps a running
top-k, and the shards' candidates are gathered and merged. Used for small catalogs, to re-score ANN
candidates, and as the ground truth ANN recall is measured against.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm4rec_jax import partitioning


def _chunked_top_k(queries, table, valid, offset, k: int, chunk: int):
  """Top-k of ``queries @ table.T`` over one shard, scanning the rows in chunks."""
  n, d = table.shape
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n
  table = jnp.pad(table, ((0, pad), (0, 0))).reshape(num_chunks, chunk, d)
  valid = jnp.pad(valid, (0, pad)).reshape(num_chunks, chunk)
  b = queries.shape[0]
  kk = min(k, chunk)

  def body(carry, xs):
    best_s, best_i = carry
    rows, ok, start = xs
    s = queries @ rows.T  # [b, chunk]
    s = jnp.where(ok[None], s, -jnp.inf)
    cs, ci = jax.lax.top_k(s, kk)
    s_all = jnp.concatenate([best_s, cs], axis=1)
    i_all = jnp.concatenate([best_i, ci + start], axis=1)
    top_s, pos = jax.lax.top_k(s_all, k)
    return (top_s, jnp.take_along_axis(i_all, pos, axis=1)), None

  starts = offset + jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  init = (jnp.full((b, k), -jnp.inf, queries.dtype), jnp.full((b, k), -1, jnp.int32))
  (s, i), _ = jax.lax.scan(body, init, (table, valid, starts))
  return s, jnp.where(jnp.isfinite(s), i, -1)


def make_exact_top_k(mesh: Mesh, rules, k: int, *, chunk: int = 32768):
  """Jitted ``(queries [b, d], table [n, d], valid bool [n]) -> (scores [b, k], ids int32 [b, k])``.

  ``table``/``valid`` rows are sharded over the ``vocab`` mesh axes (``n`` must divide by their
  size; :func:`put_table` pads it); queries are replicated. Invalid rows never appear; missing
  results (fewer than ``k`` valid rows) are id -1, score -inf.
  """
  axes = tuple(a for a in partitioning.rule_axes(rules, 'vocab') if a in mesh.shape)

  def local(queries, table, valid):
    n_local = table.shape[0]
    shard = jax.lax.axis_index(axes) if axes else 0
    c = max(1, min(chunk, n_local))
    s, i = _chunked_top_k(queries, table, valid, shard * n_local, k, c)
    if not axes:
      return s, i
    s_all = jax.lax.all_gather(s, axes, axis=1, tiled=True)  # [b, shards * k]
    i_all = jax.lax.all_gather(i, axes, axis=1, tiled=True)
    top_s, pos = jax.lax.top_k(s_all, k)
    return top_s, jnp.take_along_axis(i_all, pos, axis=1)

  row_spec = P(axes if axes else None)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(*row_spec, None), row_spec),
                     out_specs=(P(), P()), check_vma=False)
  return jax.jit(fn)


def put_table(table: np.ndarray, valid: np.ndarray | None, mesh: Mesh, rules
              ) -> tuple[jax.Array, jax.Array]:
  """Pads ``table`` [n, d] to a multiple of the catalog shards and places it rows-sharded."""
  axes = tuple(a for a in partitioning.rule_axes(rules, 'vocab') if a in mesh.shape)
  shards = math.prod(mesh.shape[a] for a in axes)
  n = len(table)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
  pad = -n % shards
  table = np.pad(np.asarray(table, np.float32), ((0, pad), (0, 0)))
  valid = np.pad(valid, (0, pad))
  spec = P(axes if axes else None)
  return (jax.device_put(table, NamedSharding(mesh, P(*spec, None))),
          jax.device_put(valid, NamedSharding(mesh, spec)))


@functools.lru_cache(maxsize=8)
def _cached(mesh: Mesh, rules, k: int, chunk: int):
  return make_exact_top_k(mesh, rules, k, chunk=chunk)


def exact_top_k(queries: np.ndarray, table: jax.Array, valid: jax.Array, k: int, mesh: Mesh,
                rules, *, chunk: int = 32768) -> tuple[np.ndarray, np.ndarray]:
  """Host convenience: (ids int64 [b, k], scores float32 [b, k]) for ``queries`` [b, d]."""
  fn = _cached(mesh, rules, k, chunk)
  q = jax.device_put(np.asarray(queries, np.float32), NamedSharding(mesh, P()))
  s, i = jax.device_get(fn(q, table, valid))
  return np.asarray(i, np.int64), np.asarray(s, np.float32)
