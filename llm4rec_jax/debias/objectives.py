"""Debiasing objectives for the next-item loss, selected by ``config.debias``.

  * ``ips`` / ``snips``: each target is weighted by its inverse propensity (clipped, globally
    normalised to mean 1 over the training interactions). ``propensity`` picks the estimator:
    ``popularity`` (the item's count), ``windowed`` (the item's count in the time window of the
    interaction, ``num_windows`` equal-count windows; the weights travel with each batch as
    ``target_weights``) or ``learned`` (a logistic model of exposure from the item's categorical
    features). SNIPS divides the batch loss by
    the sum of the weights (``losses.full_softmax_loss`` does this with ``weights=``); IPS divides by
    the number of targets instead, so batches of rare items weigh more.
  * ``pda``: popularity as a confounder (Zhang et al., SIGIR 2021, in softmax form): training logits
    are ``f(u, i) + gamma * log pop_i``, so ``f`` need not learn popularity; at inference ``f`` is used
    alone (PD), and ``adjust_strength`` re-weights popularity on top.
  * ``adjust_strength`` (any method, inference only): scores ``-= adjust_strength * log pop_i``; on a
    naive model this removes the popularity the model absorbed, with a tunable strength.
  * fairness ``adversarial`` / ``parity``: extra loss terms on the user representation (the last
    position's hidden state), see :mod:`llm4rec_jax.debias.fairness`.

The trainer builds one :class:`DebiasObjective` per experiment and calls :meth:`target_weights` and
:meth:`finish_loss` inside its jitted step; arrays are closed over as constants.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm4rec_jax.debias import fairness, propensity
from llm4rec_jax.debias.mf import one_hot_features
from llm4rec_jax.errors import ConfigError

METHODS = ('none', 'ips', 'snips', 'pda')
PROPENSITIES = ('popularity', 'windowed', 'learned')
FAIRNESS = ('none', 'adversarial', 'parity')


def ips_target_weights(targets: jax.Array, item_weights: jax.Array) -> jax.Array:
  """[batch, seq] weight of every target (0 where there is none)."""
  return jnp.where(targets > 0, item_weights[targets], 0.0)


def ips_scale(targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Turns the self-normalised loss ``sum(w l) / sum(w)`` into IPS's ``sum(w l) / n``."""
  n = jnp.maximum(jnp.sum(targets > 0), 1)
  return jnp.sum(weights) / n


def log_popularity(counts: np.ndarray, vocab_size: int, *, smoothing: float) -> np.ndarray:
  """float32 [vocab_size]: log of the smoothed popularity; 0 at padding and ids past the catalog."""
  out = np.zeros(vocab_size, np.float32)
  out[:len(counts)] = np.log(propensity.popularity(counts, smoothing=smoothing))
  out[0] = 0.0
  return out


def validate(c: Any) -> None:
  """Checks ``config`` fields the debiasing objectives read; raises ConfigError naming them."""
  d = c.debias
  if d.method not in METHODS:
    raise ConfigError('debias.method', f'{d.method!r} is not one of {METHODS}')
  if d.fairness not in FAIRNESS:
    raise ConfigError('debias.fairness', f'{d.fairness!r} is not one of {FAIRNESS}')
  if (d.method != 'none' or d.fairness != 'none') and (
      c.loss.type != 'full_softmax' or c.model.get('head', 'softmax') != 'softmax'):
    raise ConfigError('debias.method', 'debiasing objectives need loss.type=full_softmax and '
                      'model.head=softmax')
  if d.adjust_strength and c.model.get('head', 'softmax') != 'softmax':
    raise ConfigError('debias.adjust_strength', 'the popularity adjustment needs model.head=softmax')
  if not 0.0 < d.clip <= 1.0:
    raise ConfigError('debias.clip', f'must lie in (0, 1], got {d.clip}')
  if d.smoothing <= 0:
    raise ConfigError('debias.smoothing', f'must be > 0, got {d.smoothing}')
  if d.power < 0:
    raise ConfigError('debias.power', f'must be >= 0, got {d.power}')
  if d.reversal < 0:
    raise ConfigError('debias.reversal', f'must be >= 0, got {d.reversal}')
  if d.get('propensity', 'popularity') not in PROPENSITIES:
    raise ConfigError('debias.propensity', f'{d.propensity!r} is not one of {PROPENSITIES}')
  if d.get('num_windows', 1) < 1:
    raise ConfigError('debias.num_windows', f'must be >= 1, got {d.num_windows}')


@dataclasses.dataclass
class DebiasObjective:
  """Everything the train step and the ranking need from ``config.debias``, as device arrays."""
  method: str
  fairness: str
  item_weights: jax.Array | None = None  # [vocab] inverse propensities (ips / snips)
  # propensity='windowed': per-interaction weights of the training sequences (host arrays, one per
  # user), fed through the pipeline as batch['target_weights']; item_weights then holds the latest
  # window's weights (for batches without them, e.g. online updates).
  sequence_weights: list[np.ndarray] | None = None
  train_bias: jax.Array | None = None  # [vocab] added to training logits (pda)
  inference_bias: jax.Array | None = None  # [vocab] added to ranking scores
  user_labels: jax.Array | None = None  # int32 [num_users + 1] sensitive group, -1 = unknown
  num_groups: int = 0
  adversary_weight: float = 1.0
  reverse: bool = True
  reversal: float = 1.0
  parity_weight: float = 1.0

  @property
  def changes_training(self) -> bool:
    return self.method != 'none' or self.fairness != 'none'

  def target_weights(self, targets: jax.Array,
                     batch_weights: jax.Array | None = None) -> jax.Array | None:
    """Per-target loss weights [batch, seq] (None = unweighted); ``batch_weights`` [batch, seq]
    (the pipeline's per-interaction weights) take precedence over the per-item ones."""
    if batch_weights is not None:
      return jnp.where(targets > 0, batch_weights, 0.0)
    if self.item_weights is None:
      return None
    return ips_target_weights(targets, self.item_weights)

  def finish_loss(self, loss: jax.Array, aux: dict, model: Any, hidden: jax.Array,
                  batch: dict, table: jax.Array, catalog: jax.Array,
                  weights: jax.Array | None) -> tuple[jax.Array, dict]:
    """The step's loss after the next-item term: IPS scaling and the fairness terms."""
    aux = dict(aux)
    if self.method == 'ips':
      loss = loss * ips_scale(batch['targets'], weights)
    if self.fairness == 'none':
      return loss, aux
    user_repr = hidden[:, -1]  # [batch, d_model]; left-padded, so the latest position is last
    labels = self.user_labels[batch['users']]  # [batch]
    if self.fairness == 'adversarial':
      adv, metrics = fairness.adversarial_loss(model.adversary, user_repr, labels,
                                               reverse=self.reverse, scale=self.reversal)
      aux.update(metrics)
      return loss + self.adversary_weight * adv, aux
    logits = user_repr @ table.T.astype(user_repr.dtype)  # [batch, vocab]
    logits = jnp.where(catalog, logits, -1e30)
    penalty = fairness.parity_penalty(logits, labels, self.num_groups)
    aux['parity_gap'] = penalty
    return loss + self.parity_weight * penalty, aux


def build(config: Any, dataset: Any, train_sequences, vocab_size: int) -> DebiasObjective | None:
  """The objective of ``config.debias`` for this data (None when debiasing is off).

  With a fairness term, ``num_groups`` is the number of user groups found in the data; training
  records it in the saved config (``train.state.recorded_config``), so serving builds the same
  model, adversary head included.
  """
  d = config.debias
  validate(config)
  counts = propensity.item_counts(train_sequences, dataset.num_items)
  obj = DebiasObjective(method=d.method, fairness=d.fairness,
                        adversary_weight=float(d.adversary_weight), reverse=bool(d.reverse),
                        reversal=float(d.reversal),
                        parity_weight=float(d.parity_weight))
  if d.method in ('ips', 'snips'):
    source = d.get('propensity', 'popularity')
    if source == 'learned':
      p = propensity.learned_item_propensity(one_hot_features(dataset.items), counts,
                                             dataset.num_users)
    elif source == 'windowed':
      p = _windowed_weights(obj, d, dataset, train_sequences)
    else:
      p = propensity.popularity_propensity(counts, power=d.power, smoothing=d.smoothing)
    # Mean weight 1 over the training interactions, so the loss keeps its scale.
    w = propensity.inverse_weights(p, clip_min=d.clip, self_normalize=True, counts=counts)
    full = np.zeros(vocab_size, np.float32)
    full[:len(w)] = w
    full[0] = 0.0
    obj.item_weights = jnp.asarray(full)
  log_pop = log_popularity(counts, vocab_size, smoothing=d.smoothing)
  if d.method == 'pda':
    obj.train_bias = jnp.asarray(d.pda_gamma * log_pop)
  if d.adjust_strength:
    obj.inference_bias = jnp.asarray(-d.adjust_strength * log_pop)
  if d.fairness != 'none':
    labels, names = fairness.user_groups(dataset.users, train_sequences, d.sensitive_attribute)
    obj.user_labels = jnp.asarray(labels)
    obj.num_groups = len(names)
  if not obj.changes_training and obj.inference_bias is None:
    return None
  return obj


def _windowed_weights(obj: DebiasObjective, d: Any, dataset: Any, train_sequences) -> np.ndarray:
  """Fills ``obj.sequence_weights`` (inverse per-window propensities of every training interaction,
  mean 1) and returns the latest window's item propensities (the per-item fallback)."""
  if not dataset.has_timestamps:
    raise ConfigError('debias.propensity', f"'windowed' needs timestamps; dataset "
                      f'{dataset.name!r} has none')
  times = propensity.interaction_timestamps(train_sequences, dataset.sequences(),
                                            dataset.timestamp_sequences())
  flat_items = np.concatenate([np.asarray(s, np.int64) for s in train_sequences])
  flat_times = np.concatenate(times)
  wp = propensity.windowed_popularity_propensity(flat_items, flat_times, dataset.num_items,
                                                 num_windows=int(d.num_windows), power=d.power,
                                                 smoothing=d.smoothing)
  w = propensity.inverse_weights(wp.lookup(flat_items, flat_times), clip_min=d.clip,
                                 self_normalize=True).astype(np.float32)
  cuts = np.cumsum([len(s) for s in train_sequences])[:-1]
  obj.sequence_weights = np.split(w, cuts)
  return wp.propensity[-1]
