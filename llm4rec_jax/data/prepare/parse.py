"""Reading a raw JSON-lines release in batches: byte-range chunks -> line-aligned blocks -> columns.

A plain ``.jsonl`` file is cut into byte ranges that workers read independently (a chunk owns the
lines that *start* inside its range); a ``.jsonl.gz`` file is one chunk, streamed. Each block of a
few MiB is parsed at once with ``pyarrow.json`` against an explicit schema (the fields we need; the
others are skipped). A block the fast parser rejects, or that has a missing value, is re-read line
by line with the same rules as :func:`llm4rec_jax.data.readers.read_amazon_2023`, which raises a
:class:`~llm4rec_jax.errors.DataError` naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from apache_beam.io.filesystems import FileSystems

from llm4rec_jax.data.readers import jsonl
from llm4rec_jax.errors import DataError

# The columns every parser yields (one row per interaction), and their Arrow types.
COLUMNS = pa.schema([('user_id', pa.string()), ('item_id', pa.string()),
                     ('timestamp', pa.int64()), ('rating', pa.float32()), ('order', pa.int64())])
# Where a row sits in the release: file index << 48 | byte offset of its line (file order).
_OFFSET_BITS = 48

AMAZON_2023_FILE = re.compile(r'^(?P<category>[A-Za-z0-9_&-]+)\.jsonl(?:\.gz)?$')


@dataclasses.dataclass(frozen=True)
class Format:
  """Which JSON fields hold the user, item, rating and time, and how time is written."""
  name: str
  user: str
  item: str
  rating: str
  time: str
  time_unit: str  # 'ms': integer milliseconds | 'date': 'YYYY-MM-DD HH:MM:SS'


AMAZON_2023 = Format('amazon-2023', 'user_id', 'parent_asin', 'rating', 'timestamp', 'ms')
YELP_OPEN = Format('yelp-open', 'user_id', 'business_id', 'stars', 'date', 'date')
FORMATS = {f.name: f for f in (AMAZON_2023, YELP_OPEN)}


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Bytes ``[start, end)`` of input file number ``file_index`` (``end=None``: to the end)."""
  file_index: int
  path: str
  start: int = 0
  end: int | None = None


def plan_chunks(paths: list[str], chunk_bytes: int) -> list[Chunk]:
  """Byte-range chunks of every plain file; one chunk per gzip file (not splittable)."""
  chunks = []
  for i, path in enumerate(paths):
    if path.endswith('.gz'):
      chunks.append(Chunk(i, path))
      continue
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    chunks.extend(Chunk(i, path, s, min(s + chunk_bytes, size))
                  for s in range(0, max(size, 1), chunk_bytes))
  return chunks


def read_blocks(chunk: Chunk, block_bytes: int) -> Iterator[tuple[int, bytes]]:
  """(byte offset of the block in the (uncompressed) file, whole lines) for the chunk's lines."""
  with FileSystems.open(chunk.path, compression_type='uncompressed') as raw:
    f = gzip.GzipFile(fileobj=raw) if chunk.path.endswith('.gz') else raw
    pos = chunk.start
    if pos > 0:
      f.seek(pos - 1)
      if f.read(1) != b'\n':  # the line in progress belongs to the previous chunk
        pos += len(f.readline())
    end = math.inf if chunk.end is None else chunk.end
    while pos < end:
      data = f.read(int(min(block_bytes, end - pos)))
      if not data:
        break
      if not data.endswith(b'\n'):
        data += f.readline()  # finish the last line, even past ``end``: it started inside
      yield pos, data
      pos += len(data)


def parse_block(data: bytes, *, fmt: Format, file_index: int, offset: int, path: str) -> pa.Table:
  """The interactions of one block as a table of :data:`COLUMNS` (timestamps in seconds)."""
  table = _parse_fast(data, fmt)
  if table is None:
    table = _parse_slow(data, fmt, path, offset)
    starts = table.column('order').to_numpy()
  else:
    starts = _line_starts(data)
    if len(starts) != len(table):  # blank lines: positions unknown, take the careful path
      table = _parse_slow(data, fmt, path, offset)
      starts = table.column('order').to_numpy()
  order = (np.int64(file_index) << _OFFSET_BITS) + offset + starts
  return table.set_column(4, 'order', pa.array(order, pa.int64()))


def _line_starts(data: bytes) -> np.ndarray:
  """Byte offsets of the non-blank lines of ``data`` (blank: only ``\\n`` or ``\\r\\n``)."""
  b = np.frombuffer(data, np.uint8)
  starts = np.concatenate([[0], np.flatnonzero(b == 10) + 1]).astype(np.int64)
  starts = starts[starts < len(b)]
  ends = np.append(starts[1:], len(b))
  content = ends - starts - (b[ends - 1] == 10)
  content -= (content > 0) & (b[np.maximum(starts + content - 1, 0)] == 13)
  return starts[content > 0]


def _parse_fast(data: bytes, fmt: Format) -> pa.Table | None:
  time_type = pa.int64() if fmt.time_unit == 'ms' else pa.timestamp('s')
  schema = pa.schema([(fmt.user, pa.string()), (fmt.item, pa.string()),
                      (fmt.rating, pa.float64()), (fmt.time, time_type)])
  try:
    t = pa_json.read_json(io.BytesIO(data),
                          read_options=pa_json.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
                          parse_options=pa_json.ParseOptions(explicit_schema=schema,
                                                             unexpected_field_behavior='ignore'))
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
    return None
  cols = [t.column(name) for name in schema.names]
  if any(c.null_count for c in cols):
    return None
  user, item = (c.combine_chunks() for c in cols[:2])
  if pc.any(pc.equal(pc.binary_length(user), 0)).as_py() or pc.any(
      pc.equal(pc.binary_length(item), 0)).as_py():
    return None
  rating = cols[2].combine_chunks().to_numpy()
  if not np.isfinite(rating).all():
    return None
  if fmt.time_unit == 'ms':
    ts = cols[3].combine_chunks().to_numpy() // 1000
  else:
    ts = cols[3].combine_chunks().cast(pa.int64()).to_numpy()
  return pa.table([user, item, pa.array(ts, pa.int64()), pa.array(rating.astype(np.float32)),
                   pa.array(np.zeros(len(ts), np.int64))], schema=COLUMNS)


def _parse_slow(data: bytes, fmt: Format, path: str, offset: int) -> pa.Table:
  """Line by line; ``order`` holds each line's offset in the block. Raises DataError on bad input."""
  first_line = None  # the block's first line number, counted only when an error is reported
  cols: tuple[list, list, list, list, list] = ([], [], [], [], [])

  def fail(message: str, k: int, field: str | None = None):
    nonlocal first_line
    if first_line is None:
      first_line = _line_number_at(path, offset)
    raise DataError(message, path=path, line=first_line + k, field=field)

  pos = 0
  for k, line in enumerate(data.split(b'\n')):
    start, pos = pos, pos + len(line) + 1
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      fail(f'invalid JSON: {getattr(e, "msg", e)}', k)
    if not isinstance(rec, dict):
      fail(f'expected one JSON object per line, got {type(rec).__name__}', k)
    for field in (fmt.user, fmt.item, fmt.rating, fmt.time):
      if rec.get(field) in (None, ''):
        fail('missing field', k, field)
    cols[0].append(str(rec[fmt.user]))
    cols[1].append(str(rec[fmt.item]))
    cols[3].append(_number(rec[fmt.rating], float, lambda m: fail(m, k, fmt.rating)))
    if fmt.time_unit == 'ms':
      cols[2].append(_number(rec[fmt.time], int, lambda m: fail(m, k, fmt.time)) // 1000)
    else:
      cols[2].append(_date(rec[fmt.time], lambda m: fail(m, k, fmt.time)))
    cols[4].append(start)
  return pa.table([pa.array(cols[0], pa.string()), pa.array(cols[1], pa.string()),
                   pa.array(cols[2], pa.int64()), pa.array(cols[3], pa.float32()),
                   pa.array(cols[4], pa.int64())], schema=COLUMNS)


def _date(v, fail) -> int:
  """Seconds since the epoch of a Yelp-style date string ('2018-07-07 22:09:11')."""
  try:
    return int(np.datetime64(str(v), 's').astype(np.int64))
  except ValueError:
    return fail(f'expected a date like 2018-07-07 22:09:11, got {v!r:.40}')


def _number(v, kind: type, fail):
  """A JSON number (or numeric string) as ``kind``; what ``readers`` accepts, nothing more."""
  try:
    return jsonl.number_value(v, kind)
  except ValueError as e:
    fail(str(e))


def _line_number_at(path: str, offset: int) -> int:
  """1-based number of the line starting at byte ``offset`` (counts the newlines before it)."""
  count = 0
  with FileSystems.open(path, compression_type='uncompressed') as raw:
    f = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw
    left = offset
    while left > 0:
      buf = f.read(min(left, 1 << 24))
      if not buf:
        break
      count += buf.count(b'\n')
      left -= len(buf)
  return count + 1
