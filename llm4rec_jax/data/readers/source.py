"""The files of a release, given as a directory or a ``.zip`` (members located by base name)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from llm4rec_jax.errors import DataError


class Source:
  """Files of a release given as a directory or a ``.zip`` (members located by base name)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path).expanduser()
    self._zip: zipfile.ZipFile | None = None
    if self.path.is_file():
      if not zipfile.is_zipfile(self.path):
        raise DataError('expected a directory or a .zip archive of the release', path=str(self.path))
      try:
        self._zip = zipfile.ZipFile(self.path)
      except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f'cannot open zip archive: {e}', path=str(self.path)) from e
      names = [n for n in self._zip.namelist() if not n.endswith('/')]
    elif self.path.is_dir():
      names = self._list_dir()
    else:
      raise DataError('dataset path does not exist', path=str(self.path))
    self._names = [n for n in names
                   if not n.startswith('__MACOSX/') and not n.rsplit('/', 1)[-1].startswith('._')]

  def _list_dir(self) -> list[str]:
    names = []
    try:
      with os.scandir(self.path) as top:
        subdirs = []
        for e in top:
          if e.is_file():
            names.append(e.name)
          elif e.is_dir() and not e.name.startswith('.'):
            subdirs.append(e.name)
      for d in sorted(subdirs):
        with os.scandir(self.path / d) as sub:
          names.extend(f'{d}/{e.name}' for e in sub if e.is_file())
    except OSError as e:
      raise DataError(f'cannot list directory: {e}', path=str(self.path)) from e
    return names

  def __enter__(self) -> Source:
    return self

  def __exit__(self, *exc) -> None:
    if self._zip is not None:
      self._zip.close()

  def where(self) -> str:
    return (f'zip archive {self.path}' if self._zip is not None
            else f'directory {self.path} and its subfolders')

  def display(self, member: str) -> str:
    """A user-facing path for a member (``archive.zip!/folder/file`` inside archives)."""
    return f'{self.path}!/{member}' if self._zip is not None else str(self.path / member)

  def basenames(self) -> list[str]:
    return sorted({n.rsplit('/', 1)[-1] for n in self._names})

  def find(self, basename: str) -> str | None:
    """The member with this base name, the shallowest one; None if absent."""
    hits = [n for n in self._names if n == basename or n.endswith('/' + basename)]
    if not hits:
      return None
    depth = min(n.count('/') for n in hits)
    hits = sorted(n for n in hits if n.count('/') == depth)
    if len(hits) > 1:
      raise DataError(f'{len(hits)} files named {basename!r} in {self.where()}: {hits}',
                      path=str(self.path))
    return hits[0]

  def require(self, basename: str) -> str:
    member = self.find(basename)
    if member is None:
      raise DataError(f'required file {basename!r} not found (searched {self.where()})',
                      path=str(self.path / basename))
    return member

  def open_text(self, member: str, encoding: str, newline: str | None = None) -> io.TextIOBase:
    """The member as text; ``*.gz`` members (as the Amazon releases ship) are decompressed."""
    try:
      if member.endswith('.gz'):
        target = self._zip.open(member) if self._zip is not None else self.path / member
        return gzip.open(target, 'rt', encoding=encoding, newline=newline)
      if self._zip is not None:
        return io.TextIOWrapper(self._zip.open(member), encoding=encoding, newline=newline)
      return open(self.path / member, encoding=encoding, newline=newline)
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def read_text(self, member: str, encoding: str = 'utf-8') -> str:
    try:
      data = self._zip.read(member) if self._zip is not None else (self.path / member).read_bytes()
      return data.decode(encoding)
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e
    except UnicodeDecodeError as e:
      line = data[:e.start].count(b'\n') + 1
      raise DataError(f'not valid {encoding} text ({e.reason})', path=self.display(member),
                      line=line) from e

  def size(self, member: str) -> int:
    """The member's size in bytes (uncompressed, inside archives)."""
    try:
      if self._zip is not None:
        return self._zip.getinfo(member).file_size
      return (self.path / member).stat().st_size
    except (OSError, KeyError) as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def open_binary(self, member: str) -> io.BufferedIOBase:
    try:
      if self._zip is not None:
        return self._zip.open(member)
      return open(self.path / member, 'rb')
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def arrow_input(self, member: str) -> pa.NativeFile:
    """The member as a pyarrow stream, ``*.gz`` decompressed (for pyarrow's CSV and JSON readers).

    Files on disk are opened natively, so reading them runs without the GIL; zip members go through
    the zip module's file object.
    """
    gz = member.endswith('.gz')
    try:
      if self._zip is None:
        return pa.input_stream(str(self.path / member), compression='gzip' if gz else None)
      raw = pa.PythonFile(self._zip.open(member), mode='r')
      return pa.CompressedInputStream(raw, 'gzip') if gz else raw
    except OSError as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def count_lines(self, member: str) -> int:
    """Lines of the member (decompressed), counting a last one without a newline."""
    lines, last = 0, b'\n'
    with self.arrow_input(member) as f:
      while block := f.read(1 << 24):
        lines += block.count(b'\n')
        last = block[-1:]
    return lines + (last != b'\n')

  def first_line(self, member: str) -> bytes:
    """The member's first line as bytes (decompressed), with its line ending; b'' if empty."""
    try:
      if member.endswith('.gz'):
        target = self._zip.open(member) if self._zip is not None else self.path / member
        with gzip.open(target, 'rb') as f:
          return f.readline()
      with self.open_binary(member) as f:
        return f.readline()
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f'cannot read file: {e}', path=self.display(member)) from e

  def read_json(self, member: str) -> Any:
    text = self.read_text(member, 'utf-8-sig')
    if not text.strip():
      raise DataError('file is empty: the dataset is empty', path=self.display(member))
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'invalid JSON: {e.msg} (column {e.colno})', path=self.display(member),
                      line=e.lineno) from e


def text_lines(src: Source, member: str, encoding: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, line without the newline) for each non-blank line."""
  with src.open_text(member, encoding) as f:
    try:
      for n, line in enumerate(f, 1):
        line = line.rstrip('\r\n')
        if line.strip():
          yield n, line
    except UnicodeDecodeError as e:
      raise DataError(f'not valid {encoding} text ({e.reason})', path=src.display(member)) from e


def source_name(path: str | os.PathLike, default: str) -> str:
  """The dataset name a path suggests: its base name without ``.zip``."""
  p = pathlib.Path(path)
  stem = p.name[:-4] if p.name.lower().endswith('.zip') else p.name
  return stem or default
