"""From ``config.data`` to a filtered dataset and its train/valid/test split."""

from __future__ import annotations

from typing import Any

from llm4rec_jax.data import readers, splits, synthetic
from llm4rec_jax.data.dataset import RecDataset


def load(data_cfg: Any) -> RecDataset:
  """The dataset named by ``data_cfg.name``: 'synthetic', a registered name, or 'format:path'."""
  if data_cfg.name == 'synthetic':
    ds = synthetic.generate(**dict(data_cfg.get('synthetic', {})))
    if data_cfg.min_rating > 0 or data_cfg.k_core > 0:
      ds = ds.filter(min_rating=data_cfg.min_rating or None, k_core=data_cfg.k_core)
    return ds
  return readers.load_dataset(data_cfg.name, min_rating=data_cfg.min_rating or None,
                              k_core=data_cfg.k_core)


def load_split(data_cfg: Any) -> tuple[RecDataset, splits.Split]:
  ds = load(data_cfg)
  kwargs = ({'valid_fraction': data_cfg.valid_fraction, 'test_fraction': data_cfg.test_fraction}
            if data_cfg.split == 'temporal' else {})
  split = splits.make_split(ds, data_cfg.split, **kwargs)
  if data_cfg.get('cold_item_fraction', 0.0) > 0:
    split = splits.hold_out_items(split, ds.num_items, data_cfg.cold_item_fraction,
                                  seed=data_cfg.get('cold_item_seed', 0))
  return ds, split
