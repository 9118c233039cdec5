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
  valid = flat_t > 0
  k = min(max_targets, flat_t.shape[0]) if max_targets > 0 else flat_t.shape[0]
  (idx,) = jnp.nonzero(valid, size=k, fill_value=0)
  slot_ok = jnp.arange(k) < jnp.sum(valid)
  w = jnp.ones_like(flat_t, jnp.float32) if weights is None else weights.reshape(-1)
  h = hidden.reshape(-1, d)[idx]  # [K, d_model]
  dropped = jnp.maximum(jnp.sum(valid) - k, 0)
  return h, jnp.where(slot_ok, flat_t[idx], 0), jnp.where(slot_ok, w[idx], 0.0), dropped


def full_softmax_loss(hidden, table, targets, *, catalog: jax.Array, max_targets: int = 0,
                      weights=None, logit_bias=None):
  """Cross-entropy of the next item against every catalog item.

  Args:
    hidden: [batch, seq, d_model]; table: [vocab, d_model]; targets: int [batch, seq], 0 = none.
    catalog: bool [vocab], True for real items (padding ids get no probability mass).
    weights: optional [batch, seq] per-target weights (e.g. inverse propensities).
    logit_bias: optional [vocab] added to every logit (e.g. a popularity confounder term).
  Returns: (mean loss over targets, metrics dict).
  """
  h, t, w, dropped = gather_targets(hidden, targets, max_targets, weights)
  logits = (h @ table.T.astype(h.dtype)).astype(jnp.float32)  # [K, vocab]
  if logit_bias is not None:
    logits = logits + logit_bias
  logits = jnp.where(catalog, logits, -1e30)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
  nll = lse - target_logit
  denom = jnp.maximum(jnp.sum(w), 1e-9)
  return jnp.sum(nll * w) / denom, {'num_targets': jnp.sum(w > 0), 'dropped_targets': dropped}


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
