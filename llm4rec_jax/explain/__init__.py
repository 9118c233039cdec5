"""Explainable recommendations: attributions, their faithfulness, templates and generated text."""
