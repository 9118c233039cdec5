"""TFDS builders on the real files: time to prepare (parse + write ArrayRecord), time to read back
through ``tfds.data_source``, against the package's reader alone; prints one JSON line.

  python benchmarks/tfds_prepare.py            # ml-100k, ml-latest-small (as movielens_25m),
                                               # Amazon 2014 Musical Instruments, 2018 Scientific
  python benchmarks/tfds_prepare.py --quick    # ml-100k only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm4rec_jax.data import paths, readers  # noqa: E402  pylint: disable=wrong-import-position
from llm4rec_jax.data import tfds_builders  # noqa: E402  pylint: disable=wrong-import-position

# (TFDS dataset, shared folder, the reader's format of that folder)
CASES = [
    ('movielens_100k', 'movielens/ml-100k', 'ml-100k'),
    ('movielens_25m', 'movielens/ml-latest-small', 'ml-csv'),
    ('amazon_reviews_2014/Musical_Instruments', 'amazon/musical-instruments', 'amazon-reviews'),
    ('amazon_reviews_2018/Industrial_and_Scientific', 'amazon/scientific', 'scientific'),
]


def run_case(spec: str, folder: str, fmt: str, data_dir: pathlib.Path) -> dict:
  src = paths.resolve(folder)
  options = tfds_builders.BUILDERS[spec.split('/')[0]].reader_options(fmt, spec.partition('/')[2])
  t = time.perf_counter()
  ref = readers.FORMATS[fmt](src, **options)
  reader_s = time.perf_counter() - t
  t = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress on stdout
    tfds_builders.prepare(spec, data_dir=data_dir, manual_dir=src, download=False)
  prepare_s = time.perf_counter() - t
  t = time.perf_counter()
  ds = tfds_builders.load(spec, data_dir=data_dir, prepare_missing=False)
  load_s = time.perf_counter() - t
  same = (ds.num_interactions == ref.num_interactions and all(
      np.array_equal(a, b) for a, b in zip(ds.sequences(), ref.sequences())))
  size = sum(f.stat().st_size for f in data_dir.joinpath(spec.split('/')[0]).rglob('*.array_record-*'))
  return dict(users=ds.num_users, items=ds.num_items, interactions=ds.num_interactions,
              reader_s=round(reader_s, 2), prepare_s=round(prepare_s, 2),
              data_source_load_s=round(load_s, 2), array_record_mb=round(size / 2**20, 2),
              same_as_reader=bool(same))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--quick', action='store_true', help='ml-100k only')
  args = p.parse_args()
  tfds.disable_progress_bar()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for spec, folder, fmt in CASES[:1] if args.quick else CASES:
      results[spec] = run_case(spec, folder, fmt, pathlib.Path(tmp) / 'tfds')
  print(json.dumps({'benchmark': 'tfds_prepare', 'quick': args.quick, 'datasets': results}))


if __name__ == '__main__':
  main()
