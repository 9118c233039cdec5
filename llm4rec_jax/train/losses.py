"""Next-item losses over the item catalog, computed from decoder hidden states.

Sequences are left-padded, so many positions carry no target. Both losses first gather the positions
that do (at most ``max_targets`` per batch, a static size) and only score those, which on short-
sequence datasets like Amazon Beauty skips most of the ``[batch, seq, vocab]`` logits. Targets beyond
``max_targets`` are dropped and counted in the ``dropped_targets`` metric (the trainer sizes the
budget from the data so this stays at zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gather_targets(hidden: jax.Array, targets: jax.Array, max_targets: int,
                   weights: jax.Array | None = None):
  """Selects the positions with a target (id > 0).

  Returns hidden [K, d_model], targets [K], weights [K] (0 on unused slots), dropped count.
  """
  d = hidden.shape[-1]
  flat_t = targets.reshape(-1)  # [batch * seq]
  idx, slot_ok, dropped = _target_slots(flat_t, max_targets)
  w = jnp.ones_like(flat_t, jnp.float32) if weights is None else weights.reshape(-1)
  h = hidden.reshape(-1, d)[idx]  # [K, d_model]
  return h, jnp.where(slot_ok, flat_t[idx], 0), jnp.where(slot_ok, w[idx], 0.0), dropped


def _target_slots(flat_targets: jax.Array, max_targets: int):
  """Flat indices of the first ``max_targets`` positions with a target, which slots are used,
  and how many targets did not fit."""
  valid = flat_targets > 0
  k = min(max_targets, flat_targets.shape[0]) if max_targets > 0 else flat_targets.shape[0]
  (idx,) = jnp.nonzero(valid, size=k, fill_value=0)
  return idx, jnp.arange(k) < jnp.sum(valid), jnp.maximum(jnp.sum(valid) - k, 0)


def seen_items(inputs: jax.Array, targets: jax.Array, max_targets: int) -> jax.Array:
  """For each gathered target slot (same order as :func:`gather_targets`), the items the user had
  seen by then: ``inputs`` up to and including the target's position, 0 elsewhere. [K, seq]."""
  seq = targets.shape[-1]
  idx, slot_ok, _ = _target_slots(targets.reshape(-1), max_targets)
  row, pos = idx // seq, idx % seq
  hist = inputs[row]  # [K, seq]
  keep = (jnp.arange(seq)[None, :] <= pos[:, None]) & slot_ok[:, None]
  return jnp.where(keep, hist, 0)


def full_softmax_loss(hidden, table, targets, *, catalog: jax.Array, max_targets: int = 0,
                      weights=None, logit_bias=None, exclude_seen_of=None, chunk_targets: int = 0):
  """Cross-entropy of the next item against every catalog item.

  Args:
    hidden: [batch, seq, d_model]; table: [vocab, d_model]; targets: int [batch, seq], 0 = none.
    catalog: bool [vocab], True for real items (padding ids get no probability mass).
    weights: optional [batch, seq] per-target weights (e.g. inverse propensities).
    logit_bias: optional [vocab] added to every logit (e.g. a popularity confounder term).
    exclude_seen_of: optional input items [batch, seq]. Trains the ranking that evaluation with
      seen items excluded measures: each target's softmax leaves out the items already in its
      history, and targets that repeat a history item (certain misses there) get weight 0.
    chunk_targets: > 0 scores the gathered targets this many at a time, recomputing each chunk's
      logits in the backward pass, so memory holds [chunk_targets, vocab] logits instead of
      [max_targets, vocab] (MovieLens-25M: 12,800 x 59k floats = 3 GB, twice for the gradient).
      The loss is the same up to float summation order.
  Returns: (mean loss over targets, metrics dict).
  """
  h, t, w, dropped = gather_targets(hidden, targets, max_targets, weights)
  # A target outside the catalog has no probability to learn (its logit is the -1e30 floor): it
  # gets weight 0 instead of adding ~1e30 to the loss. Training targets are always in the catalog;
  # the refit on what is known at test (train/refit.py) meets validation targets that training never
  # had, which a content model holds out of its training catalog.
  w = jnp.where(catalog[t], w, 0.0)
  seen = (seen_items(exclude_seen_of, targets, max_targets) if exclude_seen_of is not None
          else None)  # [K, seq]

  def chunk_nll(h, t, seen):
    logits = (h @ table.T.astype(h.dtype)).astype(jnp.float32)  # [k, vocab]
    if logit_bias is not None:
      logits = logits + logit_bias
    logits = jnp.where(catalog, logits, -1e30)
    if seen is not None:
      # Row 0 (padding) is already masked; seen ids are set to the same floor.
      logits = logits.at[jnp.arange(seen.shape[0])[:, None], seen].set(-1e30)
    target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit

  k = t.shape[0]
  if 0 < chunk_targets < k:
    n = -(-k // chunk_targets)
    pad = n * chunk_targets - k
    padded = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
        (n, chunk_targets) + x.shape[1:])
    rematted = jax.checkpoint(chunk_nll)
    nll = jax.lax.map(lambda c: rematted(*c),
                      (padded(h), padded(t), None if seen is None else padded(seen)))
    nll = nll.reshape(-1)[:k]
  else:
    nll = chunk_nll(h, t, seen)
  if seen is not None:
    w = jnp.where(jnp.any((seen == t[:, None]) & (t[:, None] > 0), axis=1), 0.0, w)
  denom = jnp.maximum(jnp.sum(w), 1e-9)
  return jnp.sum(nll * w) / denom, {'num_targets': jnp.sum(w > 0), 'dropped_targets': dropped}


def auto_chunk_targets(max_targets: int, vocab: int, budget_bytes: int = 256 * 2**20) -> int:
  """Targets per chunk so one chunk's float32 logits fit ``budget_bytes`` (0 = no chunking needed:
  the whole [max_targets, vocab] block fits, as on every catalog below ~5k items)."""
  if max_targets * vocab * 4 <= budget_bytes:
    return 0
  return max(128, budget_bytes // (4 * vocab) // 128 * 128)


def sampled_softmax_loss(hidden, table, targets, *, rng: jax.Array, num_items: int,
                         num_negatives: int, max_targets: int = 0, weights=None):
  """Softmax over the target and ``num_negatives`` items drawn uniformly, shared by the batch.

  For catalogs too large for a full softmax. Negatives that equal a row's target are masked out
  (accidental hits); with uniform sampling the logQ correction is a constant and cancels.
  """
  h, t, w, dropped = gather_targets(hidden, targets, max_targets, weights)
  neg = jax.random.randint(rng, (num_negatives,), 1, num_items + 1)  # [N]
  tbl = table.astype(h.dtype)
  pos_logit = jnp.sum(h * tbl[t], axis=-1, keepdims=True)  # [K, 1]
  neg_logit = h @ tbl[neg].T  # [K, N]
  neg_logit = jnp.where(neg[None, :] == t[:, None], -1e30, neg_logit)
  logits = jnp.concatenate([pos_logit, neg_logit], axis=-1).astype(jnp.float32)
  nll = jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]
  denom = jnp.maximum(jnp.sum(w), 1e-9)
  return jnp.sum(nll * w) / denom, {'num_targets': jnp.sum(w > 0), 'dropped_targets': dropped}
