"""Retrieval: a ScaNN item index (``index``), exact sharded top-k (``exact``), and the retrieved
context of retrieval-augmented generation (``context``)."""

from llm4rec_jax.retrieval.exact import exact_top_k, make_exact_top_k, put_table
from llm4rec_jax.retrieval.index import (IndexMeta, IndexMismatchError, IndexParams, ItemIndex,
                                         default_params, fingerprint)

__all__ = ['IndexMeta', 'IndexMismatchError', 'IndexParams', 'ItemIndex', 'default_params',
           'exact_top_k', 'fingerprint', 'make_exact_top_k', 'put_table']
