"""The Yelp Open Dataset as a TFDS dataset (manual download: Yelp's terms must be accepted)."""

from __future__ import annotations

from llm4rec_jax.data import readers
from llm4rec_jax.data.tfds_builders import base


class YelpOpen(base.RecDatasetBuilder):
  """Yelp Open Dataset: every review (user, business, stars, date) and the business metadata
  (name, address, city, state, categories, stars, review count)."""
  name = 'yelp_open'
  FORMATS = ('yelp-open',)
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://www.yelp.com/dataset'
  ITEM_FIELDS = readers.YELP_ITEM_FIELDS
  EXTRACT = {'yelp_dataset.tar': ('yelp_academic_dataset_review.json',
                                  'yelp_academic_dataset_business.json')}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the JSON dataset from https://www.yelp.com/dataset/download (accepting the Dataset '
      'User Agreement) and put yelp_dataset.tar, or its extracted yelp_academic_dataset_review.json '
      'and yelp_academic_dataset_business.json, into manual_dir.')
  BUILDER_CONFIGS = base.make_configs()
