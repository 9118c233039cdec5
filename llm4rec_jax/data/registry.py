"""From ``config.data`` to a filtered dataset and its train/valid/test split."""

from __future__ import annotations

from typing import Any

from llm4rec_jax.data import paths, readers, records, splits, synthetic
from llm4rec_jax.data.dataset import RecDataset


def load(data_cfg: Any) -> RecDataset | records.RecordsDataset:
  """The dataset named by ``data_cfg.name``: 'synthetic', 'tfds:NAME', a registered name,
  'format:path', or 'records:DIR' (a prepared directory: a light ``RecordsDataset``, read per
  process by the trainer; see :mod:`llm4rec_jax.data.records`)."""
  if records.is_records(data_cfg.name):
    return records.load(data_cfg)
  if data_cfg.name == 'synthetic':
    ds = synthetic.generate(**dict(data_cfg.get('synthetic', {})))
    if data_cfg.min_rating > 0 or data_cfg.k_core > 0:
      ds = ds.filter(min_rating=data_cfg.min_rating or None, k_core=data_cfg.k_core)
    return ds
  if data_cfg.name.startswith('tfds:'):
    return _load_tfds(data_cfg)
  return readers.load_dataset(data_cfg.name, min_rating=data_cfg.min_rating or None,
                              k_core=data_cfg.k_core)


def _load_tfds(data_cfg: Any) -> RecDataset:
  """A ``tfds:NAME`` dataset read through ``tfds.data_source`` (prepared first when missing)."""
  from llm4rec_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  opts = data_cfg.get('tfds', {})
  manual_dir = opts.get('manual_dir', '')
  ds = tfds_builders.load(data_cfg.name[len('tfds:'):], data_dir=opts.get('data_dir') or None,
                          manual_dir=paths.resolve(manual_dir) if manual_dir else None,
                          download=opts.get('download', True))
  if data_cfg.min_rating > 0 or data_cfg.k_core > 0:
    ds = ds.filter(min_rating=data_cfg.min_rating or None, k_core=data_cfg.k_core)
  return ds


def load_split(data_cfg: Any) -> tuple[RecDataset, splits.Split]:
  ds = load(data_cfg)
  return ds, split(ds, data_cfg)


def split(ds: RecDataset, data_cfg: Any) -> splits.Split:
  """The train/valid/test split ``data_cfg.split`` of ``ds`` (cold items held out if configured)."""
  kwargs = ({'valid_fraction': data_cfg.valid_fraction, 'test_fraction': data_cfg.test_fraction}
            if data_cfg.split == 'temporal' else {})
  out = splits.make_split(ds, data_cfg.split, **kwargs)
  if data_cfg.get('cold_item_fraction', 0.0) > 0:
    out = splits.hold_out_items(out, ds.num_items, data_cfg.cold_item_fraction,
                                seed=data_cfg.get('cold_item_seed', 0))
  return out
