"""``tfds:NAME`` datasets: prepare the tables of a builder once, then read them back with
``tfds.data_source`` (ArrayRecord random access, no TensorFlow) into a :class:`RecDataset`."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from llm4rec_jax.data.dataset import RecDataset
from llm4rec_jax.data.tfds_builders import amazon, base, movielens, records, yelp
from llm4rec_jax.errors import DataError

BUILDERS: dict[str, type[base.RecDatasetBuilder]] = {
    b.name: b for b in (movielens.Movielens100k, movielens.Movielens1m, movielens.Movielens20m,
                        movielens.Movielens25m, amazon.AmazonReviews2014,
                        amazon.AmazonReviews2018, amazon.AmazonReviews2023, yelp.YelpOpen)}


def parse_name(spec: str) -> tuple[type[base.RecDatasetBuilder], str]:
  """``'movielens_100k'`` or ``'amazon_reviews_2023/Electronics'`` -> (builder class, release)."""
  name, _, release = spec.partition('/')
  if name not in BUILDERS:
    raise DataError(f'unknown TFDS dataset {name!r}; known: {", ".join(sorted(BUILDERS))}',
                    field='data.name')
  cls = BUILDERS[name]
  releases = cls.releases()
  if release not in releases:
    which = (f'one of {", ".join(releases)}' if releases != [''] else 'none (no /RELEASE part)')
    raise DataError(f'{name}: unknown release {release!r}; expected {which}', field='data.name')
  return cls, release


def _config_name(release: str, table: str) -> str:
  return f'{release}-{table}' if release else table


def prepare(spec: str, *, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None, download: bool = True) -> None:
  """Builds every table of ``spec`` not yet in ``data_dir`` (ArrayRecord files).

  The release comes from ``manual_dir`` when it holds files, else it is downloaded (unless
  ``download`` is False, which then raises naming the missing tables).
  """
  cls, release = parse_name(spec)
  data_dir = os.fspath(data_dir) if data_dir else None
  for table in cls.tables():
    builder = cls(config=_config_name(release, table), data_dir=data_dir,
                  file_format='array_record')
    if _is_built(builder):
      continue
    if not download and not manual_dir:
      raise DataError(f'{spec} ({table}) is not prepared in {builder.data_dir}; give '
                      f'data.tfds.manual_dir or allow data.tfds.download', path=str(builder.data_dir))
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None)
    builder.download_and_prepare(download_config=config)
  base.clear_parse_cache()  # the parsed release is not needed once every table is written


def prepare_once(spec: str, **kwargs) -> None:
  """:func:`prepare` without processes racing on one data_dir: with several JAX processes,
  process 0 prepares first and the others wait for it, then prepare only what they still miss
  (hosts whose data_dir is on their own disk)."""
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      prepare(spec, **kwargs)
    multihost_utils.sync_global_devices(f'llm4rec_jax tfds prepare {spec}')
  prepare(spec, **kwargs)


def _is_built(builder: tfds.core.DatasetBuilder) -> bool:
  return pathlib.Path(os.fspath(builder.data_path)).joinpath('dataset_info.json').exists()


def load(spec: str, *, data_dir: str | os.PathLike | None = None,
         manual_dir: str | os.PathLike | None = None, download: bool = True,
         prepare_missing: bool = True) -> RecDataset:
  """The dataset ``spec`` read through ``tfds.data_source`` (prepared first when missing)."""
  cls, release = parse_name(spec)
  if prepare_missing:
    prepare_once(spec, data_dir=data_dir, manual_dir=manual_dir, download=download)
  data_dir = os.fspath(data_dir) if data_dir else None
  tables: dict[str, list[dict[str, Any]]] = {}
  meta: dict[str, Any] = {}
  for table in cls.tables():
    name = f'{cls.name}/{_config_name(release, table)}'
    source = tfds.data_source(name, split=records.SPLIT, data_dir=data_dir)
    tables[table] = records.read_all(source)
    if table == 'sequences':
      meta = dict(tfds.builder(name, data_dir=data_dir).info.metadata)
  return records.dataset_from_records(
      meta.get('name', spec), tables['sequences'], tables['items'], meta['item_fields'],
      tables.get('users'), meta.get('user_fields') if 'users' in tables else None,
      has_timestamps=meta['has_timestamps'])
