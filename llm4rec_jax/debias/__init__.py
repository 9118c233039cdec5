"""Causal debiasing and fairness: propensities, IPS / SNIPS / PDA objectives, adversarial and
demographic-parity fairness terms, a matrix-factorisation path for rating data (Coat), and unbiased
evaluation against randomly exposed ratings or known true preferences."""

from llm4rec_jax.debias.fairness import (activity_terciles, adversarial_loss, parity_penalty,
                                         reverse_gradient, user_groups)
from llm4rec_jax.debias.objectives import DebiasObjective, build, ips_scale, ips_target_weights
from llm4rec_jax.debias.propensity import (LogisticPropensity, WindowedPropensity, clip,
                                           interaction_timestamps, inverse_weights, item_counts,
                                           learned_item_propensity, naive_bayes_propensity,
                                           pair_features, popularity, popularity_propensity,
                                           windowed_popularity_propensity)
from llm4rec_jax.model.adversary import AdversaryHead

__all__ = [
    'AdversaryHead', 'DebiasObjective', 'LogisticPropensity', 'WindowedPropensity',
    'activity_terciles', 'adversarial_loss', 'build', 'clip', 'inverse_weights', 'ips_scale',
    'interaction_timestamps', 'ips_target_weights', 'item_counts', 'learned_item_propensity',
    'naive_bayes_propensity', 'pair_features',
    'parity_penalty', 'popularity', 'popularity_propensity', 'reverse_gradient', 'user_groups',
    'windowed_popularity_propensity',
]
