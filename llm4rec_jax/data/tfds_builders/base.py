"""The TFDS builder every dataset of the package shares: download or ``manual_dir``, parse with the
package's own reader (:mod:`llm4rec_jax.data.readers`), write the tables of :mod:`.records`.

A concrete builder names its release files (``_urls``), the reader formats it accepts from a manual
directory (``FORMATS``) and its feature schema (``ITEM_FIELDS``, ``USER_FIELDS``). Its configs are
``{release}-{table}`` (``release`` = an Amazon category) or just ``{table}``; every config is one
split, ``full``, written as ArrayRecord when asked (``file_format='array_record'``), which
``tfds.data_source`` reads with random access and no TensorFlow.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tarfile
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

from llm4rec_jax.data import readers
from llm4rec_jax.data.dataset import RecDataset
from llm4rec_jax.data.tfds_builders import records
from llm4rec_jax.errors import DataError


class RecConfig(tfds.core.BuilderConfig):
  """One table (``sequences``, ``items``, ``users``) of one release (e.g. an Amazon category)."""

  def __init__(self, *, table: str, release: str = '', **kwargs):
    if table not in records.TABLES:
      raise ValueError(f'table must be one of {records.TABLES}, got {table!r}')
    name = f'{release}-{table}' if release else table
    super().__init__(name=name, description=f'{table} of {release or "the release"}', **kwargs)
    self.table = table
    self.release = release


def make_configs(releases: Sequence[str] = ('',),
                 tables: Sequence[str] = ('sequences', 'items')) -> list[RecConfig]:
  return [RecConfig(table=t, release=r) for r in releases for t in tables]


class RecDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the package's builders (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Sequences, items and users tables parsed by llm4rec_jax readers.'}
  FORMATS: tuple[str, ...] = ()
  ITEM_FIELDS: Mapping[str, Sequence[str]] = {}
  USER_FIELDS: Mapping[str, Sequence[str]] | None = None
  HOMEPAGE = ''
  CITATION = ''
  DESCRIPTION = ''
  # Archives in a manual directory that must be extracted before the reader can use them: archive
  # name -> the member base names the reader needs (the rest is not extracted).
  EXTRACT: Mapping[str, Sequence[str]] = {}

  @property
  def release(self) -> str:
    return self.builder_config.release

  @classmethod
  def tables(cls) -> tuple[str, ...]:
    return tuple(t for t in records.TABLES if t != 'users' or cls.USER_FIELDS)

  @classmethod
  def releases(cls) -> list[str]:
    return list(dict.fromkeys(c.release for c in cls.BUILDER_CONFIGS))

  def _urls(self) -> dict[str, str]:
    """File name -> URL of the original release files (empty: manual download only)."""
    return {}

  @classmethod
  def reader_options(cls, fmt: str, release: str) -> dict:
    """Extra keyword arguments of the reader of format ``fmt`` (e.g. the Amazon category)."""
    del fmt, release
    return {}

  def _info(self) -> tfds.core.DatasetInfo:
    table = self.builder_config.table
    if table == 'sequences':
      features = records.sequence_features()
    elif table == 'items':
      features = records.entity_features('item', self.ITEM_FIELDS)
    else:
      features = records.entity_features('user', self.USER_FIELDS or {})
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION, features=features,
                                 homepage=self.HOMEPAGE or None, citation=self.CITATION or None,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    path = self._release_path(dl_manager)
    ds = _parse(type(self), str(path), self.release)
    records.check_fields(ds.items, self.ITEM_FIELDS, f'{self.name} items')
    if self.USER_FIELDS:
      records.check_fields(ds.users, self.USER_FIELDS, f'{self.name} users')
    self.info.metadata.update(
        name=ds.name, has_timestamps=bool(ds.has_timestamps), num_users=ds.num_users,
        num_items=ds.num_items, num_interactions=ds.num_interactions,
        item_fields=records.fields_of(ds.items), user_fields=records.fields_of(ds.users))
    return {records.SPLIT: self._generate_examples(ds)}

  def _generate_examples(self, ds: RecDataset):
    table = self.builder_config.table
    if table == 'sequences':
      return records.sequence_examples(ds)
    if table == 'items':
      return records.entity_examples(ds.items, 'item', self.ITEM_FIELDS)
    return records.entity_examples(ds.users, 'user', self.USER_FIELDS or {})

  # ---------------------------------------------------------------------------- release files

  def _release_path(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    """A directory or archive the reader can read: the manual directory when it holds files,
    else the downloaded release files (linked under their original names)."""
    urls = self._urls()
    manual = _manual_dir(dl_manager)
    if manual is not None:
      return self._from_manual(manual, urls, dl_manager)
    if not urls:
      return dl_manager.manual_dir  # raises, quoting MANUAL_DOWNLOAD_INSTRUCTIONS
    paths = dl_manager.download(urls)
    if len(paths) == 1 and next(iter(urls)).endswith('.zip'):
      return pathlib.Path(os.fspath(next(iter(paths.values()))))
    stage = pathlib.Path(os.fspath(dl_manager.download_dir)) / f'{self.name}-{self.release or "files"}'
    stage.mkdir(parents=True, exist_ok=True)
    for filename, path in paths.items():
      link = stage / filename
      if not link.exists():
        link.symlink_to(os.fspath(path))
    return stage

  def _from_manual(self, manual: pathlib.Path, urls: Mapping[str, str],
                   dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    archives = [manual / n for n in urls if n.endswith('.zip') and (manual / n).is_file()]
    if archives:
      return archives[0]
    for name, members in self.EXTRACT.items():
      if (manual / name).is_file():
        return _extract_tar(manual / name, members,
                            pathlib.Path(os.fspath(dl_manager.download_dir)) / f'{self.name}-extracted')
    fmt = readers.detect_format(manual)
    if fmt not in self.FORMATS:
      raise DataError(f'manual_dir holds {"no" if fmt is None else f"a {fmt!r}"} release that '
                      f'{self.name} reads (formats {list(self.FORMATS)}); expected '
                      f'{", ".join(urls) or self.MANUAL_DOWNLOAD_INSTRUCTIONS}', path=str(manual))
    return manual


def _extract_tar(archive: pathlib.Path, members: Sequence[str], out: pathlib.Path) -> pathlib.Path:
  """Extracts the named members of a tar (by base name) into ``out`` with Python's tarfile (TFDS's
  own extractor needs TensorFlow); members already extracted at full size are kept."""
  out.mkdir(parents=True, exist_ok=True)
  try:
    with tarfile.open(archive) as tar:
      for info in tar:
        base_name = info.name.rsplit('/', 1)[-1]
        if info.isfile() and base_name in members:
          target = out / base_name
          if target.exists() and target.stat().st_size == info.size:
            continue
          with tar.extractfile(info) as src, open(target, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
  except (tarfile.TarError, OSError) as e:
    raise DataError(f'cannot extract the archive: {e}', path=str(archive)) from e
  return out


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> pathlib.Path | None:
  try:
    return pathlib.Path(os.fspath(dl_manager.manual_dir))
  except AssertionError:  # not given, missing or empty
    return None


@functools.lru_cache(maxsize=1)
def _parse(builder: type[RecDatasetBuilder], path: str, release: str) -> RecDataset:
  """The release parsed once for all tables of a build (the configs are prepared one by one)."""
  fmt = readers.detect_format(path)
  if fmt not in builder.FORMATS:
    raise DataError(f'{builder.name} reads formats {list(builder.FORMATS)}; found '
                    f'{fmt or "no known format"}', path=path)
  name = f'{builder.name}/{release}' if release else builder.name
  return readers.FORMATS[fmt](path, dataset_name=name, **builder.reader_options(fmt, release))


def clear_parse_cache() -> None:
  _parse.cache_clear()
