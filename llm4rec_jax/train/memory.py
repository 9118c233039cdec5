"""A host-memory check before the big allocations of a run: a clear error naming the setting to change
instead of the kernel's OOM killer (which leaves no message) or a raw ``MemoryError``."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from llm4rec_jax.errors import ConfigError

GB = 2**30


def available_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (Linux), else None (no check)."""
  try:
    with open('/proc/meminfo', encoding='ascii') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def check(terms: Mapping[str, tuple[int, str]], *, available: int | None = None,
          fraction: float = 0.9) -> None:
  """Raises ConfigError when the arrays about to be allocated do not fit in memory.

  Args:
    terms: what -> (bytes, the config field that sizes it).
    available: bytes free (default: MemAvailable now).
    fraction: the share of ``available`` the terms may take (the rest is the program itself).
  """
  free = available_bytes() if available is None else available
  total = sum(b for b, _ in terms.values())
  if free is None or total <= fraction * free:
    return
  what, (size, field) = max(terms.items(), key=lambda kv: kv[1][0])
  listing = ', '.join(f'{k} {b / GB:.1f} GB' for k, (b, _) in terms.items())
  raise ConfigError(field, f'this run needs about {total / GB:.1f} GB of host memory ({listing}) '
                    f'but {free / GB:.1f} GB is available; the largest is {what} '
                    f'({size / GB:.1f} GB): lower {field}')


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an exception it was raised from) is 'no space left on device'."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_free_gb(path: str | os.PathLike) -> float | None:
  try:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / GB
  except OSError:
    return None
