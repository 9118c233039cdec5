"""Metadata values as the feature tables want them: text, label lists, numbers, id orders."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_PRICE = re.compile(r'^\s*\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)')


def as_text(value: Any) -> str:
  """A metadata value as one string (lists, as in the 2018/2023 descriptions, are joined)."""
  if value is None:
    return ''
  if isinstance(value, (list, tuple)):
    return ' '.join(as_text(v) for v in value if v).strip()
  return str(value).strip()


def flat_labels(value: Any) -> list[str]:
  """Category labels from a string, a list or a list of lists (2014), without repeats."""
  if value is None:
    return []
  if isinstance(value, str):
    value = [value]
  out: list[str] = []
  for v in value:
    out.extend(flat_labels(v) if isinstance(v, (list, tuple)) else [str(v).strip()])
  return [x for x in dict.fromkeys(out) if x]


def amount(value: Any) -> float | None:
  """A number or a price ('$12.99', '$5.00 - $9.00' -> 5.0 in 2018 metadata); None if neither."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value) if math.isfinite(value) else None
  m = _PRICE.match(value) if isinstance(value, str) else None
  return float(m.group(1).replace(',', '')) if m else None



def sorted_ids(raw: Sequence[str]) -> list[str]:
  """Distinct ids in numeric order when all are integers, else in order of first appearance."""
  distinct = list(dict.fromkeys(raw))
  try:
    return sorted(distinct, key=int)
  except ValueError:
    return distinct


def is_int(token: str) -> bool:
  try:
    int(token)
    return True
  except ValueError:
    return False
