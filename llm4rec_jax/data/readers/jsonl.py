"""JSON-lines records (Amazon and Yelp review releases): pyarrow columns, or one record at a time.

The fast path (:func:`json_columns`) reads whole columns with ``pyarrow.json``; whenever it cannot
promise the exact result of the record-by-record reader (a field of an unexpected type, a missing or
empty field, a line that is not an object), the caller falls back to :func:`json_records`, which names
the offending line and field.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from llm4rec_jax.data.readers import tables
from llm4rec_jax.data.readers.source import Source, text_lines
from llm4rec_jax.errors import DataError


def json_columns(src: Source, member: str, fields: Mapping[str, str],
                 what: str = 'reviews') -> dict[str, np.ndarray] | None:
  """Required ``fields`` (name -> kind: 'str' | 'float' | 'int') of every record, read by pyarrow.

  None when :func:`json_records` must decide: a field missing, null, empty or of another JSON type
  than its kind (the careful reader converts some of those, and names the line of the others), a
  line that is not one object, an empty file. Running out of memory or disk raises a DataError.
  """
  schema = pa.schema([(f, tables.ARROW_TYPES[k]) for f, k in fields.items()])
  parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior='ignore',
                              newlines_in_values=False)
  with tables.resource_errors(src, member, what):
    try:
      with src.arrow_input(member) as stream:
        table = pajson.read_json(stream, read_options=pajson.ReadOptions(block_size=1 << 24),
                                 parse_options=parse)
    except MemoryError:
      raise
    except OSError as e:
      if e.errno == errno.ENOSPC:
        raise
      return None
    except (pa.ArrowException, ValueError, EOFError, zlib.error):
      return None
    # pyarrow takes objects across lines and several on one line, the careful reader neither: a
    # file with one object per line (and no blank lines, which are rare) has as many rows as lines.
    if table.num_rows == 0 or table.num_rows != src.count_lines(member):
      return None
    out = {}
    for f, kind in fields.items():
      col = table.column(f)
      if col.null_count:
        return None
      if kind == 'str':  # kept as written (no strip), but '' counts as missing
        if pc.any(pc.equal(col, '')).as_py():
          return None
        out[f] = col.to_numpy(zero_copy_only=False).astype(object, copy=False)
      else:
        out[f] = tables.arrow_to_numpy(col, kind)
        if out[f] is None:
          return None
    return out


def review_columns(src: Source, member: str, fields: Mapping[str, str], *,
                   careful: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
  """Required ``fields`` (name -> 'str' | 'float' | 'int') of a JSON-lines file, and line numbers.

  By pyarrow when it can vouch for the result (line numbers None then); else, or with ``careful``,
  record by record (numbers may be numeric strings; an int field may be a whole float), naming the
  line and field of a bad record. Raises DataError if the file holds no records.
  """
  if not careful:
    try:
      cols = json_columns(src, member, fields)
    finally:
      tables.release_arrow_memory()
    if cols is not None:
      return cols, None
  display = src.display(member)
  values: dict[str, list[Any]] = {f: [] for f in fields}
  line_of: list[int] = []
  for n, rec in json_records(src, member, tuple(fields)):
    line_of.append(n)
    for f, kind in fields.items():
      values[f].append(str(rec[f]) if kind == 'str' else
                       json_number(rec, f, display, n, int if kind == 'int' else float))
  if not line_of:
    raise DataError('file contains no reviews: the dataset is empty', path=display)
  cols = {f: np.asarray(v, dtype=tables.DTYPES[fields[f]]) for f, v in values.items()}
  return cols, np.asarray(line_of, np.int64)


def json_records(src: Source, member: str, required: Sequence[str] = (), *,
                 literal: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
  """(1-based line number, object) for each non-blank line of a JSON-lines file (``.gz`` too).

  ``literal``: a line that is not JSON is read as a Python literal (the 2014 Amazon metadata files
  were written with ``str(dict)``). A missing ``required`` field raises DataError naming it.
  """
  display = src.display(member)
  try:
    with tables.resource_errors(src, member, 'records'):
      yield from _records(src, member, required, literal)
  except (EOFError, zlib.error) as e:  # a corrupt or truncated .gz
    raise DataError(f'cannot read file: {e}', path=display) from e
  except OSError as e:
    raise DataError(f'cannot read file: {e}', path=display) from e


def _records(src: Source, member: str, required: Sequence[str],
             literal: bool) -> Iterator[tuple[int, dict[str, Any]]]:
  display = src.display(member)
  for n, line in text_lines(src, member, 'utf-8'):
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      if not literal:
        raise DataError(f'invalid JSON: {e.msg} (column {e.colno})', path=display,
                        line=n) from None
      try:
        rec = ast.literal_eval(line)
      except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise DataError(f'neither JSON nor a Python literal: {line.strip()[:80]!r}',
                        path=display, line=n) from None
    if not isinstance(rec, dict):
      raise DataError(f'expected one JSON object per line, got {type(rec).__name__}',
                      path=display, line=n)
    for f in required:
      if rec.get(f) in (None, ''):
        raise DataError(f'record has no {f!r}', path=display, line=n, field=f)
    yield n, rec


def number_value(v: Any, kind: type = float) -> Any:
  """A JSON number (or numeric string) as ``kind``; ValueError for anything else (booleans,
  non-finite floats, text that is not a number)."""
  try:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
      raise ValueError
    out = kind(float(v)) if kind is int and not isinstance(v, int) else kind(v)
    if kind is float and not math.isfinite(out):
      raise ValueError
    return out
  except (ValueError, OverflowError):
    raise ValueError(f'expected {"an integer" if kind is int else "a number"}, '
                     f'got {v!r:.40}') from None


def json_number(rec: Mapping[str, Any], field: str, display: str, line: int,
                kind: type = float) -> Any:
  """A record's number as ``kind`` (numeric strings too), or a DataError naming line and field."""
  try:
    return number_value(rec[field], kind)
  except ValueError as e:
    raise DataError(str(e), path=display, line=line, field=field) from None

