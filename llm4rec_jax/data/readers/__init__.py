"""Readers for the published dataset formats; each returns a :class:`RecDataset` built with ``from_raw``.

Every reader takes a directory or a ``.zip`` laid out as the original release (the archive may hold a
top-level folder such as ``ml-100k/u.data``; files are located by their base name, also one folder down).

Formats (the keys of :data:`FORMATS`), by module:
  * ``movielens``: ``ml-100k`` (``u.data``, ``u.item``, ``u.user``, ``u.genre``); ``ml-dat`` for 1M /
    10M (``ratings.dat``, ``movies.dat``, optional ``users.dat``, ``::``-separated); ``ml-csv`` for
    20M / 25M / 32M / latest(-small) (``ratings.csv``, ``movies.csv``).
  * ``s3rec``: S3-Rec sequences, ``{Name}.txt`` + ``{Name}_item2attributes.json`` (+ optional extras).
  * ``amazon``: ``scientific`` (Amazon 2018, ``{Name}.inter.json`` + ``{Name}.item.json``);
    ``amazon-reviews`` (2014 / 2018: ``reviews_{Cat}_5.json.gz`` or ``{Cat}_5.json.gz`` JSON lines +
    optional ``meta_{Cat}.json.gz``); ``amazon-2023`` (``{Cat}.csv.gz`` benchmark or ``{Cat}.jsonl.gz``
    raw reviews + optional ``meta_{Cat}.jsonl.gz``).
  * ``yelp``: ``yelp-open``, the Yelp Open Dataset (``yelp_academic_dataset_review.json`` + business).
  * ``recbole``: RecBole atomic files (UniSRec layout): ``{Name}.item2index``, ``{Name}.user2index``,
    ``{Name}.{train,valid,test}.inter``, ``{Name}.text``, dense ``{Name}.feat*`` matrices.
  * ``coat``: Coat shopping's dense rating matrices.
  * ``events``: JSON lines of user/item/timestamp (:mod:`llm4rec_jax.data.events`).

The large interaction files are parsed by pyarrow (:mod:`.tables`, :mod:`.jsonl`). Malformed input
raises :class:`DataError` naming the file, the 1-based line number and the field; running out of
memory or disk while reading raises one that says what was too big.
"""

from llm4rec_jax.data.readers.amazon import (AMAZON_ITEM_FIELDS, read_amazon_2023, read_amazon_reviews,
                                             read_amazon_scientific)
from llm4rec_jax.data.readers.coat import read_coat
from llm4rec_jax.data.readers.formats import (DATASETS, FORMATS, DatasetSpec, detect_format,
                                              known_datasets, load_dataset)
from llm4rec_jax.data.readers.movielens import (read_movielens_100k, read_movielens_csv,
                                                read_movielens_dat, read_movielens_dat_metadata)
from llm4rec_jax.data.readers.recbole import read_recbole_features
from llm4rec_jax.data.readers.s3rec import read_s3rec
from llm4rec_jax.data.readers.tables import CHUNK_LINES as _CHUNK_LINES  # noqa: F401 (see below)
from llm4rec_jax.data.readers.yelp import YELP_ITEM_FIELDS, read_yelp_open

# ``_CHUNK_LINES`` is kept for callers of the single-module reader that patched it; the careful
# parser now reads ``tables.CHUNK_LINES``.

__all__ = [
    'AMAZON_ITEM_FIELDS', 'DATASETS', 'FORMATS', 'YELP_ITEM_FIELDS', 'DatasetSpec', 'detect_format',
    'known_datasets',
    'load_dataset', 'read_amazon_2023', 'read_amazon_reviews', 'read_amazon_scientific',
    'read_yelp_open', 'read_coat',
    'read_movielens_100k', 'read_movielens_csv', 'read_movielens_dat', 'read_movielens_dat_metadata',
    'read_recbole_features', 'read_s3rec',
]
