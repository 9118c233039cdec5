"""Grounded template explanations, built only from the attribution and the items' own attributes.

Used when no text generator is trained: "Because you liked A and B, which share genre Comedy, we
recommend C." Every name in the sentence is a top-attributed history item, and every attribute is one
the recommended item really shares with them, so the template cannot say something the model and the
catalog do not support.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence


def _join(names: Sequence[str]) -> str:
  names = list(names)
  if len(names) <= 1:
    return ''.join(names)
  return ', '.join(names[:-1]) + ' and ' + names[-1]


def shared_attributes(item: Mapping[str, Sequence[str]],
                      liked: Sequence[Mapping[str, Sequence[str]]],
                      max_values: int = 2) -> list[tuple[str, str]]:
  """(field, value) pairs of the recommended ``item`` that the ``liked`` items also have, most
  shared first (ties: the item's own order). Each mapping is field -> labels."""
  counts: collections.Counter = collections.Counter()
  order = {}
  for field, values in item.items():
    for v in values:
      order.setdefault((field, v), len(order))
      counts[(field, v)] += sum(v in h.get(field, ()) for h in liked)
  ranked = sorted((fv for fv, c in counts.items() if c > 0), key=lambda fv: (-counts[fv], order[fv]))
  return ranked[:max_values]


def template_explanation(item: str, liked: Sequence[str],
                         shared: Sequence[tuple[str, str]] = (),
                         item_features: Sequence[str] = (), top_modality: str | None = None) -> str:
  """One or two sentences: why (the liked items and what they share) and, when known, the
  recommended item's strongest content words or modality."""
  if liked:
    because = f'Because you liked {_join(liked)}'
    if shared:
      by_field: dict[str, list[str]] = collections.defaultdict(list)
      for field, value in shared:
        by_field[field].append(value)
      what = '; '.join(f'{field} {_join(values)}' for field, values in by_field.items())
      because += f', which share {what} with it'
    text = f'{because}, we recommend {item}.'
  else:
    text = f'We recommend {item}.'
  if item_features:
    text += f' Reviewers mention its {_join(item_features)}.'
  elif top_modality:
    text += f' Its {top_modality} weighed most in the score.'
  return text
