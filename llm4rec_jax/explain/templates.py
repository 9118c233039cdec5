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
  """(field, value) pairs the recommended ``item`` shares with *every* ``liked`` item, in the
  item's own order. Each mapping is field -> labels."""
  out = [(field, v) for field, values in item.items() for v in values
         if liked and all(v in h.get(field, ()) for h in liked)]
  return out[:max_values]


def template_explanation(item: str, liked: Sequence[str],
                         shared: Sequence[tuple[str, str]] = (),
                         item_features: Sequence[str] = (), top_modality: str | None = None, *,
                         shared_by_first_only: bool = False) -> str:
  """One or two sentences: why (the liked items and what they share with the item) and, when known,
  the recommended item's strongest content words or modality. ``shared`` holds for every liked
  item, or only for the first one when ``shared_by_first_only``."""
  if liked:
    what = ''
    if shared:
      by_field: dict[str, list[str]] = collections.defaultdict(list)
      for field, value in shared:
        by_field[field].append(value)
      what = '; '.join(f'{field} {_join(values)}' for field, values in by_field.items())
    if what and shared_by_first_only and len(liked) > 1:
      because = (f'Because you liked {liked[0]}, which shares {what} with it, and '
                 f'{_join(liked[1:])}')
    elif what:
      because = (f'Because you liked {_join(liked)}, which '
                 f'{"share" if len(liked) > 1 else "shares"} {what} with it')
    else:
      because = f'Because you liked {_join(liked)}'
    text = f'{because}, we recommend {item}.'
  else:
    text = f'We recommend {item}.'
  if item_features:
    text += f' Reviewers mention its {_join(item_features)}.'
  elif top_modality:
    text += f' Its {top_modality} weighed most in the score.'
  return text
