"""Explainable recommendations: attributions, their faithfulness, templates and generated text."""

from llm4rec_jax.explain.attribution import Attribution, attribute_batch, integrated_gradients
from llm4rec_jax.explain.explainer import Explainer, explain
from llm4rec_jax.explain.faithfulness import DeletionCurve, deletion_curve
from llm4rec_jax.explain.templates import template_explanation

# Submodules (not re-exported under their own names): text_metrics, generator, reviews.
__all__ = ['Attribution', 'DeletionCurve', 'Explainer', 'attribute_batch', 'deletion_curve',
           'explain', 'integrated_gradients', 'template_explanation']
