"""TFDS dataset builders for the public recommendation releases, parsed by the package's readers.

``prepare('movielens_100k', data_dir=..., manual_dir=...)`` writes ArrayRecord tables; ``load`` reads
them back through ``tfds.data_source`` as a :class:`~llm4rec_jax.data.dataset.RecDataset`; a config
selects one with ``data.name = 'tfds:movielens_100k'`` (or ``'tfds:amazon_reviews_2023/Electronics'``).
"""

from llm4rec_jax.data.tfds_builders.amazon import (AmazonReviews2014, AmazonReviews2018,
                                                   AmazonReviews2023)
from llm4rec_jax.data.tfds_builders.base import RecConfig, RecDatasetBuilder
from llm4rec_jax.data.tfds_builders.loading import BUILDERS, load, parse_name, prepare
from llm4rec_jax.data.tfds_builders.movielens import (Movielens1m, Movielens20m, Movielens25m,
                                                      Movielens100k)
from llm4rec_jax.data.tfds_builders.yelp import YelpOpen

__all__ = [
    'AmazonReviews2014', 'AmazonReviews2018', 'AmazonReviews2023', 'BUILDERS', 'Movielens100k',
    'Movielens1m', 'Movielens20m', 'Movielens25m', 'RecConfig', 'RecDatasetBuilder', 'YelpOpen',
    'load', 'parse_name', 'prepare',
]
