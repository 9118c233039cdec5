"""llm4rec_jax: a JAX/Flax trainer for LLM-style generative recommendation."""

__version__ = "0.1.0"
