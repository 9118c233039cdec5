"""The on-disk form of a prepared release: sharded ArrayRecord files of per-user sequences.

Layout of an output directory (schema version :data:`SCHEMA_VERSION`):
  * ``sequences.array_record-{s:05d}-of-{S:05d}``: one record per user, ordered by internal user
    index; shard ``s`` holds users ``manifest['shards'][s]['first_user']`` onwards, so record ``i`` of
    the concatenated shards is user ``i + 1``.
  * ``lengths-{s:05d}-of-{S:05d}.npy``: int32 [users in shard], the sequence lengths (what a reader
    needs to cut windows and slice by process without opening a record).
  * ``items.txt``: the item vocabulary, line ``i`` (1-based) = raw id of internal item ``i``; items
    are numbered in sorted (UTF-8 byte) order of their raw ids, so the numbering depends only on the
    set of items, not on the number of shards or workers.
  * ``manifest.json``: counts, shards, schema version, source files.

A record is a msgpack map: ``user_index`` (int, 1..num_users), ``user_id`` (str, raw), and three
little-endian byte strings of equal length: ``items`` int32, ``timestamps`` int64 (seconds, as
:class:`~llm4rec_jax.data.dataset.RecDataset`), ``ratings`` float32, in time order (ties keep the
order of the source file, as the in-memory readers do).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import msgpack
import numpy as np

from llm4rec_jax.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = 'manifest.json'
ITEMS = 'items.txt'


@dataclasses.dataclass(frozen=True)
class UserSequence:
  """One user's interactions in time order."""
  user_index: int
  user_id: str
  items: np.ndarray  # int32 [n]
  timestamps: np.ndarray  # int64 [n] seconds
  ratings: np.ndarray  # float32 [n]


def encode(seq: UserSequence) -> bytes:
  return msgpack.packb({
      'user_index': int(seq.user_index), 'user_id': seq.user_id,
      'items': np.asarray(seq.items, '<i4').tobytes(),
      'timestamps': np.asarray(seq.timestamps, '<i8').tobytes(),
      'ratings': np.asarray(seq.ratings, '<f4').tobytes()})


def decode(record: bytes) -> UserSequence:
  d = msgpack.unpackb(record)
  return UserSequence(d['user_index'], d['user_id'], np.frombuffer(d['items'], '<i4'),
                      np.frombuffer(d['timestamps'], '<i8'), np.frombuffer(d['ratings'], '<f4'))


def shard_name(prefix: str, shard: int, num_shards: int, suffix: str = '') -> str:
  return f'{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}'


def sequence_shard(shard: int, num_shards: int) -> str:
  return shard_name('sequences.array_record', shard, num_shards)


def lengths_shard(shard: int, num_shards: int) -> str:
  return shard_name('lengths', shard, num_shards, '.npy')


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a prepared directory; DataError if missing or of another schema version."""
  path = os.path.join(os.fspath(directory), MANIFEST)
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise DataError('no manifest: not a directory written by llm4rec_jax.data.prepare',
                    path=path) from None
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f'cannot read the manifest: {e}', path=path) from e
  if manifest.get('schema_version') != SCHEMA_VERSION:
    raise DataError(f'schema version {manifest.get("schema_version")!r}, this reader reads '
                    f'{SCHEMA_VERSION}', path=path, field='schema_version')
  return manifest


def read_items(directory: str | os.PathLike) -> np.ndarray:
  """Raw item ids as an object array with ``''`` at 0 (row ``i`` = internal item ``i``)."""
  with open(os.path.join(os.fspath(directory), ITEMS), encoding='utf-8') as f:
    return np.asarray([''] + [line.rstrip('\n') for line in f], dtype=object)
