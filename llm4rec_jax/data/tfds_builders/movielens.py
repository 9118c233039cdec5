"""MovieLens 100K / 1M / 20M / 25M (GroupLens) as TFDS datasets; parsed by the package's readers."""

from __future__ import annotations

from llm4rec_jax.data.tfds_builders import base

_GROUPLENS = 'https://files.grouplens.org/datasets/movielens/'
_CITATION = """@article{harper2015movielens,
  title={The MovieLens Datasets: History and Context},
  author={Harper, F. Maxwell and Konstan, Joseph A.},
  journal={ACM Transactions on Interactive Intelligent Systems},
  volume={5}, number={4}, pages={19:1--19:19}, year={2015}}"""
_MOVIE_FIELDS = {'text': ['title'], 'categorical': ['genres'], 'numeric': ['year']}


class _MovieLens(base.RecDatasetBuilder, skip_registration=True):
  ARCHIVE = ''
  HOMEPAGE = 'https://grouplens.org/datasets/movielens/'
  CITATION = _CITATION
  ITEM_FIELDS = _MOVIE_FIELDS

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # pylint: disable=invalid-name
    return (f'Put {self.ARCHIVE} from {_GROUPLENS}{self.ARCHIVE} (or its extracted folder\'s files) '
            'into manual_dir.')

  def _urls(self) -> dict[str, str]:
    return {self.ARCHIVE: _GROUPLENS + self.ARCHIVE}


class Movielens100k(_MovieLens):
  """MovieLens 100K: 100,000 ratings of 1,682 movies by 943 users, with user demographics."""
  name = 'movielens_100k'
  ARCHIVE = 'ml-100k.zip'
  FORMATS = ('ml-100k',)
  DESCRIPTION = __doc__
  USER_FIELDS = {'categorical': ['gender', 'occupation', 'age_group'], 'numeric': ['age']}
  BUILDER_CONFIGS = base.make_configs(tables=('sequences', 'items', 'users'))


class Movielens1m(_MovieLens):
  """MovieLens 1M: 1,000,209 ratings of 3,706 movies by 6,040 users, with user demographics."""
  name = 'movielens_1m'
  ARCHIVE = 'ml-1m.zip'
  FORMATS = ('ml-dat',)
  DESCRIPTION = __doc__
  USER_FIELDS = {'categorical': ['gender', 'age_group', 'occupation']}
  BUILDER_CONFIGS = base.make_configs(tables=('sequences', 'items', 'users'))


class Movielens20m(_MovieLens):
  """MovieLens 20M: 20,000,263 ratings of 26,744 movies by 138,493 users (CSV release)."""
  name = 'movielens_20m'
  ARCHIVE = 'ml-20m.zip'
  FORMATS = ('ml-csv',)
  DESCRIPTION = __doc__
  BUILDER_CONFIGS = base.make_configs()


class Movielens25m(_MovieLens):
  """MovieLens 25M: 25,000,095 ratings of 59,047 movies by 162,541 users (CSV release)."""
  name = 'movielens_25m'
  ARCHIVE = 'ml-25m.zip'
  FORMATS = ('ml-csv',)
  DESCRIPTION = __doc__
  BUILDER_CONFIGS = base.make_configs()
