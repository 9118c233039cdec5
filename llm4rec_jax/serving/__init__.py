"""Answering queries over a trained workdir.

* ``recommender``: :class:`Recommender` (a workdir loaded for top-k queries with raw ids) and
  :func:`recommend` (one query).
* ``index``: the workdir's ScaNN item index (``llm4rec index`` builds it, ``Recommender`` serves with
  it, re-scoring the ANN candidates exactly).
* ``snapshot``: the parameters and grown catalog of an online-adaptation snapshot, for serving the
  adapted model (``llm4rec recommend --snapshot``).
"""

from llm4rec_jax.serving.index import build_index, load_index
from llm4rec_jax.serving.recommender import Recommender, recommend

__all__ = ['Recommender', 'build_index', 'load_index', 'recommend']
