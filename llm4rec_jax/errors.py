"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""

from __future__ import annotations


class Llm4RecError(Exception):
  """Base class of every error the CLI reports as a clean one-line message."""


class DataError(Llm4RecError):
  """Bad or missing input data. Names the file, and the line or field where known."""

  def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
               field: str | None = None):
    where = []
    if path is not None:
      where.append(str(path) if line is None else f"{path}:{line}")
    if field is not None:
      where.append(f"field '{field}'")
    super().__init__(f"{', '.join(where)}: {message}" if where else message)
    self.path, self.line, self.field = path, line, field


class ConfigError(Llm4RecError):
  """A config value that is invalid or does not fit the devices. Names the config field."""

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


class UnknownIdError(Llm4RecError):
  """A raw user or item id that the trained model does not know."""


class NonFiniteLossError(Llm4RecError):
  """Training produced a NaN/Inf loss; checkpoints written before it are intact."""


class CheckpointError(Llm4RecError):
  """No usable checkpoint where one is required."""
