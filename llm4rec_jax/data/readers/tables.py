"""Delimited tables (ratings files): pyarrow's CSV reader, with a careful line-by-line fallback.

:func:`read_table` parses with ``pyarrow.csv`` into numpy columns (no per-row Python work). pyarrow's
errors do not name lines reliably, and it accepts a few things the release formats do not (or
rejects some they do), so whenever the fast pass fails or a vectorized check finds a value it cannot
vouch for, the file is parsed again by :func:`_read_lines`, which decides: it returns the same columns
the fast pass would have, or raises a :class:`DataError` naming the file, the 1-based line and the
field. Running out of memory or disk raises a DataError that says what was too big.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import gc
import itertools
import math
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from llm4rec_jax.data.readers.source import Source
from llm4rec_jax.errors import DataError

Column = tuple[str, str]  # (field name, kind: 'int' | 'float' | 'str')

# Lines per chunk of the careful parser (small enough that a failed chunk is cheap to re-parse).
CHUNK_LINES = 1 << 18
# Bytes per block of pyarrow's reader: blocks are parsed in parallel; larger ones cost less overhead.
_BLOCK_BYTES = 1 << 24

_KIND_NAMES = {'int': 'an integer', 'float': 'a number', 'str': 'text'}
DTYPES = {'int': np.int64, 'float': np.float64, 'str': object}
ARROW_TYPES = {'int': pa.int64(), 'float': pa.float64(), 'str': pa.string()}

# Everything Python's str.strip() removes, as an RE2 class: a text value with one of these at either
# end would be stripped by the careful parser, so the fast pass leaves such a file to it.
_PY_SPACE = ''.join(f'\\x{{{c:04x}}}' for c in range(0x3001) if chr(c).isspace())
UNSTRIPPED = f'^[{_PY_SPACE}]|[{_PY_SPACE}]$'

RATING_COLUMNS: tuple[Column, ...] = (('user', 'int'), ('item', 'int'), ('rating', 'float'),
                                      ('timestamp', 'int'))


def read_table(src: Source, member: str, sep: str, columns: Sequence[Column], *, encoding: str,
               skip_header: Callable[[list[str]], bool] | None = None,
               what: str = 'interactions') -> list[np.ndarray]:
  """Parses a delimited file of exactly ``len(columns)`` fields per line into column arrays.

  Columns are int64 (``'int'``), float64 (``'float'``, finite) or object arrays of stripped str
  (``'str'``). Blank lines are skipped; ``skip_header(fields)`` says whether the first line is a
  header. Raises DataError naming line and field for a bad value, and if the file holds no rows.
  """
  with resource_errors(src, member, what):
    try:
      arrays = _arrow_columns(src, member, sep, columns, encoding, skip_header)
    finally:
      release_arrow_memory()
    if arrays is None:
      arrays = _read_lines(src, member, sep, columns, encoding=encoding, skip_header=skip_header)
  if len(arrays[0]) == 0:
    raise DataError(f'file contains no {what}: the dataset is empty', path=src.display(member))
  return arrays


def _arrow_columns(src: Source, member: str, sep: str, columns: Sequence[Column], encoding: str,
                   skip_header: Callable[[list[str]], bool] | None) -> list[np.ndarray] | None:
  """The columns by pyarrow; None when the careful parser must decide (any doubt at all)."""
  first = src.first_line(member)
  if first.startswith(codecs.BOM_UTF8):  # pyarrow drops a BOM that the careful parser keeps
    return None
  try:
    head = first.decode(encoding).strip()
  except UnicodeDecodeError:
    return None
  # A multi-character separator made of one repeated character (MovieLens ``::``) is that character,
  # with empty gap columns between the fields.
  if not sep or sep != sep[0] * len(sep):
    return None
  names: list[str] = []
  types: dict[str, pa.DataType] = {}
  gaps: list[str] = []
  for i, (_, kind) in enumerate(columns):
    if i:
      gap = [f'gap{i}.{g}' for g in range(len(sep) - 1)]
      gaps += gap
      names += gap
    names.append(f'col{i}')
    types[f'col{i}'] = ARROW_TYPES[kind]
  types.update((g, pa.string()) for g in gaps)
  # Numbers are ASCII whatever the encoding: only text columns need a transcoding pass.
  utf8 = codecs.lookup(encoding).name == 'utf-8' or all(k != 'str' for _, k in columns)
  read = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES,
                           skip_rows=int(bool(head) and skip_header is not None
                                         and skip_header(head.split(sep))),
                           encoding='utf8' if utf8 else encoding)
  parse = pacsv.ParseOptions(delimiter=sep[0], quote_char=False, double_quote=False,
                             escape_char=False, newlines_in_values=False, ignore_empty_lines=True)
  convert = pacsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                 quoted_strings_can_be_null=False, check_utf8=True)
  try:
    with src.arrow_input(member) as stream:
      table = pacsv.read_csv(stream, read_options=read, parse_options=parse,
                             convert_options=convert)
  except MemoryError:
    raise
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise
    return None
  except (pa.ArrowException, ValueError, EOFError, zlib.error):
    return None
  for g in gaps:
    if table.num_rows and not pc.all(pc.equal(table.column(g), '')).as_py():
      return None
  cols = [table.column(f'col{i}') for i in range(len(columns))]
  del table  # each column's buffers go as soon as it is converted
  out = []
  for _, kind in columns:
    arr = arrow_to_numpy(cols.pop(0), kind)
    if arr is None:
      return None
    out.append(arr)
  return out


def arrow_to_numpy(col: pa.ChunkedArray, kind: str) -> np.ndarray | None:
  """A pyarrow column as the careful parser would return it; None if a value needs its judgement."""
  if col.null_count:
    return None
  if kind == 'str':
    if len(col) and pc.any(pc.match_substring_regex(col, UNSTRIPPED)).as_py():
      return None
    return col.to_numpy(zero_copy_only=False).astype(object, copy=False)
  arr = col.to_numpy()
  if kind == 'float' and not np.isfinite(arr).all():
    return None
  return arr.astype(DTYPES[kind], copy=False)


def release_arrow_memory() -> None:
  """Hands pyarrow's freed blocks back to the OS: its allocator keeps them, and they would add to
  the peak of what follows the parse (``from_raw``), ~15% on a 5M-row ratings file."""
  pa.default_memory_pool().release_unused()


@contextlib.contextmanager
def resource_errors(src: Source, member: str, what: str) -> Iterator[None]:
  """Running out of memory or disk while reading a file -> a DataError saying what to change."""
  try:
    yield
  except DataError:
    raise
  except MemoryError:
    gc.collect()
    try:
      size = f'{src.size(member) / 1e9:.2f} GB'
    except DataError:
      size = 'size unknown'
    packed = ', gzip-compressed, several times that unpacked' if member.endswith('.gz') else ''
    raise DataError(
        f'out of memory reading the {what} ({size} on disk{packed}): the parsed columns take about '
        f'as much memory as the file, and the dataset built from them a few times more. Free memory '
        f'or use a host with more RAM, or point data.name at a smaller release or a subset of this '
        f'file (FORMAT:PATH); data.min_rating and data.k_core filter only after reading, so they do '
        f'not help here', path=src.display(member)) from None
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise DataError(
        f'no space left on device while reading the {what}: free disk space, or set TMPDIR to a '
        f'larger disk (the temporary directory is now {tempfile.gettempdir()})',
        path=src.display(member)) from None


def _convert(kind: str, value: str) -> Any:
  if kind == 'int':
    v = int(value)
    if not -2**63 <= v < 2**63:  # the column is int64
      raise OverflowError(value)
    return v
  if kind == 'float':
    v = float(value)
    if not math.isfinite(v):
      raise ValueError(value)
    return v
  return value.strip()


def _read_lines(src: Source, member: str, sep: str | None, columns: Sequence[Column], *,
                encoding: str, skip_header: Callable[[list[str]], bool] | None) -> list[np.ndarray]:
  """The careful parser: Python lines, whole chunks converted with numpy.

  A chunk that fails is re-parsed line by line to name the offending line and field; blank lines are
  skipped (and counted). The fallback of :func:`read_table`, and the definition of what it accepts.
  """
  display = src.display(member)
  ncols = len(columns)
  kinds = [k for _, k in columns]
  out: list[list[np.ndarray]] = [[] for _ in columns]
  with src.open_text(member, encoding) as f, _gc_paused():
    lineno = 0
    first = True
    while True:
      try:
        chunk = list(itertools.islice(f, CHUNK_LINES))
      except UnicodeDecodeError as e:
        raise DataError(f'not valid {encoding} text ({e.reason})', path=display,
                        line=lineno + 1) from e
      except (EOFError, zlib.error) as e:  # a corrupt or truncated .gz
        raise DataError(f'cannot read file: {e}', path=display) from e
      except OSError as e:
        if e.errno == errno.ENOSPC:
          raise
        raise DataError(f'cannot read file: {e}', path=display) from e
      if not chunk:
        break
      start = lineno + 1
      lineno += len(chunk)
      if first:
        first = False
        if skip_header is not None and chunk[0].strip() and skip_header(chunk[0].strip().split(sep)):
          chunk, start = chunk[1:], start + 1
      while chunk and not chunk[-1].strip():  # trailing blank lines (numbering of the rest is kept)
        chunk.pop()
      cols = _parse_chunk_fast(chunk, sep, ncols, kinds)
      if cols is None:
        cols = _parse_chunk_slow(chunk, start, sep, columns, display)
      for acc, c in zip(out, cols):
        acc.append(c)
  return [np.concatenate(acc) if acc else np.zeros(0, DTYPES[k]) for acc, k in zip(out, kinds)]


@contextlib.contextmanager
def _gc_paused():
  """Pauses the cyclic GC: millions of short-lived row lists otherwise trigger it over and over."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def _parse_chunk_fast(chunk: list[str], sep: str | None, ncols: int,
                      kinds: Sequence[str]) -> list[np.ndarray] | None:
  rows = [line.split(sep) for line in chunk]
  if any(len(r) != ncols for r in rows):
    return None
  cols = []
  try:
    for kind, col in zip(kinds, zip(*rows)):
      if kind == 'str':
        cols.append(np.asarray([v.strip() for v in col], dtype=object))
      else:
        arr = np.asarray(col, dtype=DTYPES[kind])
        if kind == 'float' and not np.isfinite(arr).all():
          return None
        cols.append(arr)
  except (ValueError, OverflowError):
    return None
  return cols


def _parse_chunk_slow(chunk: list[str], start: int, sep: str | None, columns: Sequence[Column],
                      display: str) -> list[np.ndarray]:
  ncols = len(columns)
  vals: list[list[Any]] = [[] for _ in columns]
  for n, line in enumerate(chunk, start):
    if not line.strip():
      continue
    fields = line.rstrip('\r\n').split(sep)
    if len(fields) != ncols:
      names = (sep or ' ').join(name for name, _ in columns)
      raise DataError(f'expected {ncols} fields ({names!r}), got {len(fields)}: {line.strip()[:80]!r}',
                      path=display, line=n)
    for (name, kind), v, acc in zip(columns, fields, vals):
      try:
        acc.append(_convert(kind, v))
      except (ValueError, OverflowError):
        raise DataError(f'expected {_KIND_NAMES[kind]}, got {v.strip()!r}', path=display, line=n,
                        field=name) from None
  return [np.asarray(v, dtype=DTYPES[k]) for v, (_, k) in zip(vals, columns)]


def int_field(value: str, display: str, line: int, field: str) -> int:
  """``int(value)``, or a DataError naming the line and field."""
  try:
    return int(value)
  except ValueError:
    raise DataError(f'expected an integer, got {value.strip()!r}', path=display, line=line,
                    field=field) from None


def not_int(fields: list[str]) -> bool:
  """Whether the first field is no integer (so a first line holding it is a header)."""
  try:
    int(fields[0])
    return False
  except (ValueError, IndexError):
    return True
