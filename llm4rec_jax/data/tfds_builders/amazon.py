"""Amazon Reviews 2014 / 2018 (5-core reviews + metadata) and 2023 (5-core benchmark + metadata), one
config pair per category; parsed by the package's readers."""

from __future__ import annotations

from llm4rec_jax.data import readers
from llm4rec_jax.data.tfds_builders import base

CATEGORIES_2014 = (
    'Amazon_Instant_Video', 'Apps_for_Android', 'Automotive', 'Baby', 'Beauty', 'Books',
    'CDs_and_Vinyl', 'Cell_Phones_and_Accessories', 'Clothing_Shoes_and_Jewelry', 'Digital_Music',
    'Electronics', 'Grocery_and_Gourmet_Food', 'Health_and_Personal_Care', 'Home_and_Kitchen',
    'Kindle_Store', 'Movies_and_TV', 'Musical_Instruments', 'Office_Products',
    'Patio_Lawn_and_Garden', 'Pet_Supplies', 'Sports_and_Outdoors', 'Tools_and_Home_Improvement',
    'Toys_and_Games', 'Video_Games')
CATEGORIES_2018 = (
    'AMAZON_FASHION', 'All_Beauty', 'Appliances', 'Arts_Crafts_and_Sewing', 'Automotive', 'Books',
    'CDs_and_Vinyl', 'Cell_Phones_and_Accessories', 'Clothing_Shoes_and_Jewelry', 'Digital_Music',
    'Electronics', 'Gift_Cards', 'Grocery_and_Gourmet_Food', 'Home_and_Kitchen',
    'Industrial_and_Scientific', 'Kindle_Store', 'Luxury_Beauty', 'Magazine_Subscriptions',
    'Movies_and_TV', 'Musical_Instruments', 'Office_Products', 'Patio_Lawn_and_Garden',
    'Pet_Supplies', 'Prime_Pantry', 'Software', 'Sports_and_Outdoors', 'Tools_and_Home_Improvement',
    'Toys_and_Games', 'Video_Games')
CATEGORIES_2023 = (
    'All_Beauty', 'Amazon_Fashion', 'Appliances', 'Arts_Crafts_and_Sewing', 'Automotive',
    'Baby_Products', 'Beauty_and_Personal_Care', 'Books', 'CDs_and_Vinyl',
    'Cell_Phones_and_Accessories', 'Clothing_Shoes_and_Jewelry', 'Digital_Music', 'Electronics',
    'Gift_Cards', 'Grocery_and_Gourmet_Food', 'Handmade_Products', 'Health_and_Household',
    'Health_and_Personal_Care', 'Home_and_Kitchen', 'Industrial_and_Scientific', 'Kindle_Store',
    'Magazine_Subscriptions', 'Movies_and_TV', 'Musical_Instruments', 'Office_Products',
    'Patio_Lawn_and_Garden', 'Pet_Supplies', 'Software', 'Sports_and_Outdoors',
    'Subscription_Boxes', 'Tools_and_Home_Improvement', 'Toys_and_Games', 'Video_Games', 'Unknown')

_SNAP_2014 = 'https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/'
_UCSD_2018 = 'https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/'
_UCSD_2023 = 'https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/'


class _Amazon(base.RecDatasetBuilder, skip_registration=True):
  ITEM_FIELDS = readers.AMAZON_ITEM_FIELDS

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # pylint: disable=invalid-name
    files = self._urls()
    return ('Put the release files ' + ', '.join(f'{n} ({u})' for n, u in files.items()) +
            ' into manual_dir.')

  @classmethod
  def reader_options(cls, fmt: str, release: str) -> dict:
    return {'category': release} if fmt in ('amazon-reviews', 'amazon-2023') else {}


class AmazonReviews2014(_Amazon):
  """Amazon Reviews 2014 (McAuley et al., SIGIR 2015), one category: 5-core reviews (ratings with
  day timestamps) and product metadata (title, brand, description, categories, price)."""
  name = 'amazon_reviews_2014'
  FORMATS = ('amazon-reviews',)
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://jmcauley.ucsd.edu/data/amazon/'
  CITATION = """@inproceedings{mcauley2015image,
  title={Image-based recommendations on styles and substitutes},
  author={McAuley, Julian and Targett, Christopher and Shi, Qinfeng and van den Hengel, Anton},
  booktitle={SIGIR}, year={2015}}"""
  BUILDER_CONFIGS = base.make_configs(CATEGORIES_2014)

  def _urls(self) -> dict[str, str]:
    c = self.release
    return {f'reviews_{c}_5.json.gz': f'{_SNAP_2014}reviews_{c}_5.json.gz',
            f'meta_{c}.json.gz': f'{_SNAP_2014}meta_{c}.json.gz'}


class AmazonReviews2018(_Amazon):
  """Amazon Reviews 2018 (Ni et al., EMNLP 2019), one category: 5-core reviews and product metadata.
  A manual directory may also hold the preprocessed ``{Name}.inter.json`` + ``{Name}.item.json``
  layout (no ratings or times)."""
  name = 'amazon_reviews_2018'
  FORMATS = ('amazon-reviews', 'scientific')
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://nijianmo.github.io/amazon/'
  CITATION = """@inproceedings{ni2019justifying,
  title={Justifying Recommendations using Distantly-Labeled Reviews and Fine-Grained Aspects},
  author={Ni, Jianmo and Li, Jiacheng and McAuley, Julian}, booktitle={EMNLP}, year={2019}}"""
  BUILDER_CONFIGS = base.make_configs(CATEGORIES_2018)

  def _urls(self) -> dict[str, str]:
    c = self.release
    return {f'{c}_5.json.gz': f'{_UCSD_2018}categoryFilesSmall/{c}_5.json.gz',
            f'meta_{c}.json.gz': f'{_UCSD_2018}metaFiles2/meta_{c}.json.gz'}


class AmazonReviews2023(_Amazon):
  """Amazon Reviews 2023 (Hou et al., 2024), one category: the 5-core ``rating_only`` benchmark
  (items are ``parent_asin``, millisecond timestamps) and product metadata. A manual directory may
  hold the raw ``{Category}.jsonl.gz`` reviews instead of the benchmark CSV."""
  name = 'amazon_reviews_2023'
  FORMATS = ('amazon-2023',)
  DESCRIPTION = __doc__
  HOMEPAGE = 'https://amazon-reviews-2023.github.io/'
  CITATION = """@article{hou2024bridging,
  title={Bridging Language and Items for Retrieval and Recommendation},
  author={Hou, Yupeng and Li, Jiacheng and He, Zhankui and Yan, An and Chen, Xiusi and McAuley,
  Julian}, journal={arXiv preprint arXiv:2403.03952}, year={2024}}"""
  BUILDER_CONFIGS = base.make_configs(CATEGORIES_2023)

  def _urls(self) -> dict[str, str]:
    c = self.release
    return {f'{c}.csv.gz': f'{_UCSD_2023}benchmark/5core/rating_only/{c}.csv.gz',
            f'meta_{c}.jsonl.gz': f'{_UCSD_2023}raw/meta_categories/meta_{c}.jsonl.gz'}
