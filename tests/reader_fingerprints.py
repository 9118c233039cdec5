"""Fingerprints of a parsed dataset, to check a reader rewrite against the output it replaces.

``tests/readers_fingerprints.json`` holds the fingerprints the pre-split reader (one module, a
hand-written CSV engine) produced on the shared data; ``python tests/reader_fingerprints.py``
rewrites it from the current code (run it only with a reader you trust).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

# The registered datasets the fingerprints cover (every one under the shared data).
NAMES = ('ml-100k', 'ml-latest-small', 'beauty', 'yelp', 'lastfm', 'scientific',
         'scientific-features', 'musical-instruments', 'coat')
FILE = pathlib.Path(__file__).with_name('readers_fingerprints.json')


def _digest(values: Any) -> str:
  """sha256 of a sequence of strings or of an array's bytes (16 hex digits are plenty here)."""
  h = hashlib.sha256()
  if isinstance(values, np.ndarray) and values.dtype != object:
    h.update(str(values.dtype).encode())
    h.update(np.ascontiguousarray(values).tobytes())
  else:
    for v in values:
      h.update(str(v).encode('utf-8', 'surrogatepass'))
      h.update(b'\0')
  return h.hexdigest()[:16]


def _table(t) -> dict[str, Any]:
  out = {'raw_ids': _digest(t.raw_ids)}
  for name, col in sorted(t.text.items()):
    out[f'text.{name}'] = _digest(col)
  for name, col in sorted(t.categorical.items()):
    out[f'cat.{name}'] = _digest([_digest(col.offsets.astype(np.int64)),
                                  _digest(col.values.astype(np.int64)), _digest(col.vocab)])
  for name, col in sorted(t.numeric.items()):
    out[f'num.{name}'] = _digest(np.asarray(col, np.float32))
  for name, col in sorted(getattr(t, 'dense', {}).items()):
    out[f'dense.{name}'] = _digest(np.asarray(col, np.float32))
  return out


def fingerprint(ds) -> dict[str, Any]:
  """Sums and hashes of everything a reader decides: ids, their order, values and features."""
  rating = np.nan_to_num(ds.rating.astype(np.float64), nan=0.0)
  return {
      'n': int(ds.num_interactions), 'has_timestamps': bool(ds.has_timestamps),
      'user_sum': int(ds.user.astype(np.int64).sum()), 'item_sum': int(ds.item.astype(np.int64).sum()),
      'timestamp_sum': int(ds.timestamp.astype(np.int64).sum()), 'rating_sum': float(rating.sum()),
      'user': _digest(ds.user.astype(np.int64)), 'item': _digest(ds.item.astype(np.int64)),
      'timestamp': _digest(ds.timestamp.astype(np.int64)),
      'rating': _digest(ds.rating.astype(np.float32)),
      'users': _table(ds.users), 'items': _table(ds.items),
      'extras': {k: _extra(v) for k, v in sorted(ds.extras.items())},
  }


def _extra(value: Any) -> Any:
  """An extra's digest: arrays by bytes, dicts of arrays field by field."""
  if isinstance(value, dict):
    return {k: _extra(v) for k, v in sorted(value.items())}
  return _digest(np.asarray(value)) if isinstance(value, np.ndarray) else repr(value)


if __name__ == '__main__':
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  FILE.write_text(json.dumps({n: fingerprint(readers.load_dataset(n)) for n in NAMES}, indent=1,
                             sort_keys=True) + '\n')
  print('wrote', FILE)
