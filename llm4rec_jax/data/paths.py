"""Where the real datasets live: ``$LLM4REC_DATA_DIR``, else ``../shared/data`` from the project root."""

from __future__ import annotations

import os
import pathlib

_PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_root() -> pathlib.Path:
  env = os.environ.get("LLM4REC_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return _PROJECT_ROOT.parent / "shared" / "data"


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """A dataset path: absolute as given, else relative to :func:`data_root`."""
  p = pathlib.Path(path).expanduser()
  return p if p.is_absolute() else data_root() / p
