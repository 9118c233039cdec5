"""Fairness objectives on user representations: an adversary behind gradient reversal, and a
demographic-parity penalty between user groups.

Adversarial (Ganin & Lempitsky, ICML 2015; Beutel et al. 2017 for recommendation): a small head
predicts the sensitive attribute from the user representation; the head minimises its loss, while
the gradient that reaches the representation is multiplied by ``-scale``, so the encoder learns to
make the attribute unpredictable. With the reversal off the gradient reaches the encoder unchanged
(plain multi-task training: the representation is pushed to carry the attribute).

Demographic parity: the mean next-item distribution of each group should equal the overall mean;
the penalty is the mean total-variation distance between them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.adversary import AdversaryHead


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def reverse_gradient(x: jax.Array, scale: float) -> jax.Array:
  """Identity forward; the backward pass multiplies the cotangent by ``-scale``."""
  return x


def _reverse_fwd(x, scale):
  return x, None


def _reverse_bwd(scale, _, g):
  return (jax.tree.map(lambda t: -scale * t, g),)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def adversary_input(x: jax.Array, reverse: bool, scale: float = 1.0) -> jax.Array:
  """The representation as the adversary sees it: its gradient reversed (times ``-scale``) or,
  with ``reverse`` off, unchanged."""
  return reverse_gradient(x, float(scale)) if reverse else x


def adversarial_loss(head: AdversaryHead, user_repr: jax.Array, labels: jax.Array, *,
                     reverse: bool = True, scale: float = 1.0
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy of the head over users with a known label (``labels >= 0``).

  Returns (loss, {'adv_loss', 'adv_accuracy'}); minimising the loss trains the head, and the reversed
  gradient pushes ``user_repr`` to hide the attribute.
  """
  logits = head(adversary_input(user_repr, reverse, scale))  # [batch, classes]
  known = labels >= 0
  safe = jnp.where(known, labels, 0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), safe[:, None], axis=-1)[:, 0]
  n = jnp.maximum(jnp.sum(known), 1)
  loss = jnp.sum(jnp.where(known, nll, 0.0)) / n
  acc = jnp.sum(jnp.where(known, jnp.argmax(logits, -1) == safe, False)) / n
  return loss, {'adv_loss': loss, 'adv_accuracy': acc}


def parity_penalty(logits: jax.Array, groups: jax.Array, num_groups: int) -> jax.Array:
  """Mean total-variation distance between each group's mean next-item distribution and the
  batch's mean; ``logits`` [batch, vocab] (-inf or very negative off the catalog), ``groups`` int
  [batch] (-1 = unknown, ignored). Groups absent from the batch contribute 0."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [batch, vocab]
  known = groups >= 0
  overall = jnp.sum(jnp.where(known[:, None], probs, 0.0), 0) / jnp.maximum(jnp.sum(known), 1)
  onehot = jax.nn.one_hot(groups, num_groups) * known[:, None]  # [batch, G]; -1 -> zeros
  sizes = jnp.sum(onehot, 0)  # [G]
  means = (onehot.T @ probs) / jnp.maximum(sizes, 1)[:, None]  # [G, vocab]
  tv = 0.5 * jnp.sum(jnp.abs(means - overall[None]), axis=-1)  # [G]
  present = sizes > 0
  return jnp.sum(jnp.where(present, tv, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def activity_terciles(sequences) -> np.ndarray:
  """int32 [num_users + 1]: 0 / 1 / 2 = low / middle / high training activity (-1 for user 0 and
  users without training items)."""
  lengths = np.asarray([len(s) for s in sequences], np.float64)
  groups = np.full(len(lengths), -1, np.int32)
  active = np.arange(len(lengths)) > 0
  active &= lengths > 0
  if active.any():
    cuts = np.quantile(lengths[active], [1 / 3, 2 / 3])
    groups[active] = np.searchsorted(cuts, lengths[active], side='right').astype(np.int32)
  return groups


def user_groups(users, sequences, attribute: str = '') -> tuple[np.ndarray, list[str]]:
  """Group label per internal user id (int32 [num_users + 1], -1 = unknown) and the group names.

  ``attribute`` names a categorical user feature (its first value is the group, e.g. MovieLens
  ``gender`` or ``age_group``); '' uses training-activity terciles (``sequences``: training items per
  user), which every dataset has.
  """
  if not attribute:
    return activity_terciles(sequences), ['low_activity', 'mid_activity', 'high_activity']
  if attribute not in users.categorical:
    raise ConfigError('debias.group_attribute',
                      f'{attribute!r} is not a categorical user feature of this dataset '
                      f'(known: {sorted(users.categorical) or "none"}); use \'\' for activity '
                      'terciles')
  field = users.categorical[attribute]
  labels = np.full(field.num_rows, -1, np.int32)
  for u in range(1, field.num_rows):
    row = field.row(u)
    if len(row):
      labels[u] = row[0] - 1
  return labels, list(field.vocab[1:])
