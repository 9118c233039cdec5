"""Review text as explanation data: one (user, item, history, explanation sentence) per review.

Reads the review text of an Amazon 2014 review file (the interactions come from the registered
dataset, :func:`llm4rec_jax.data.readers.read_amazon_reviews`), picks one sentence per review as
the explanation target (the first one naming a feature word, as PETER's data keeps sentences that
mention a feature, else the first sentence, else the summary), and splits the reviews by time with
the same global cut as ``data.split=temporal``, so the recommender and the generator see the same
past.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from llm4rec_jax.errors import DataError
from llm4rec_jax.explain.text_metrics import words

_SENTENCE = re.compile(r'(?<=[.!?])\s+|(?<=[.!?])(?=[A-Z])')
# Function words and generic sentiment never count as item features.
STOPWORDS = frozenset("""a about above after again all also am an and any are as at be because been
before being below between both but by can could did do does doing don't down during each even ever
few for from further get got had has have having he her here hers him his how i i'm i've if in into
is it it's its itself just like me more most much my myself no nor not now of off on once one only
or other our out over own really same she should so some still such than that the their them then
there these they this those through to too under until up use used using very was we well were what
when where which while who whom why will with would you your great good nice best better love
little well works work bought buy product price lot get way thing things make makes made first
""".split())


@dataclasses.dataclass
class ExplanationExample:
  user: int
  item: int
  time: int
  history: np.ndarray  # items the user reviewed before (oldest first)
  text: str  # the explanation sentence
  features: list[str]  # feature words in the sentence


def read_review_text(path: str | pathlib.Path) -> dict[tuple[str, str, int], tuple[str, str]]:
  """(reviewerID, asin, unixReviewTime) -> (summary, reviewText) of a JSON-lines review file."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == '.gz' else open
  out = {}
  with opener(path, 'rt', encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        key = (str(rec['reviewerID']), str(rec['asin']), int(rec['unixReviewTime']))
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f'not a review record ({type(e).__name__}: {e})', path=str(path),
                        line=n) from e
      out[key] = (str(rec.get('summary') or ''), str(rec.get('reviewText') or ''))
  return out


def sentences(text: str) -> list[str]:
  return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def feature_vocabulary(texts: Sequence[str], size: int = 300) -> list[str]:
  """The ``size`` most frequent non-stopword alphabetic words (>= 3 letters) of ``texts``."""
  counts = collections.Counter(w for t in texts for w in set(words(t))
                               if w.isalpha() and len(w) >= 3 and w not in STOPWORDS)
  return [w for w, _ in counts.most_common(size)]


def explanation_sentence(summary: str, text: str, features: frozenset[str] | set[str],
                         max_words: int = 25) -> str:
  """The first sentence (3..max_words words) naming a feature, else the first such sentence, else
  the summary."""
  candidates = [s for s in sentences(text) if 3 <= len(words(s)) <= max_words]
  for s in candidates:
    if features & set(words(s)):
      return s
  return candidates[0] if candidates else summary.strip()


def build_examples(ds, review_text: dict, *, feature_size: int = 300,
                   valid_fraction: float = 0.1, test_fraction: float = 0.1
                   ) -> tuple[dict[str, list[ExplanationExample]], list[str]]:
  """Examples split by global time (as ``splits.temporal``) and the feature vocabulary (from the
  training period only)."""
  ts_sorted = np.sort(ds.timestamp)
  t_valid = ts_sorted[int(len(ts_sorted) * (1.0 - valid_fraction - test_fraction))]
  t_test = ts_sorted[int(len(ts_sorted) * (1.0 - test_fraction))]
  raw_u, raw_i = ds.users.raw_ids, ds.items.raw_ids
  order = np.lexsort((ds.timestamp, ds.user))
  texts = []
  for n in order:
    key = (str(raw_u[ds.user[n]]), str(raw_i[ds.item[n]]), int(ds.timestamp[n]))
    if key not in review_text:
      raise DataError(f'no review text for user {key[0]} item {key[1]} time {key[2]}')
    texts.append(review_text[key])
  train_text = [t for n, (_, t) in zip(order, texts) if ds.timestamp[n] < t_valid]
  vocab = feature_vocabulary(train_text, feature_size)
  fset = frozenset(vocab)
  out: dict[str, list[ExplanationExample]] = {'train': [], 'valid': [], 'test': []}
  history: dict[int, list[int]] = collections.defaultdict(list)
  for n, (summary, text) in zip(order, texts):
    u, i, t = int(ds.user[n]), int(ds.item[n]), int(ds.timestamp[n])
    sentence = explanation_sentence(summary, text, fset)
    if sentence:
      which = 'train' if t < t_valid else 'valid' if t < t_test else 'test'
      feats = [w for w in dict.fromkeys(words(sentence)) if w in fset]
      out[which].append(ExplanationExample(u, i, t, np.asarray(history[u], np.int32), sentence,
                                           feats))
    history[u].append(i)
  return out, vocab


def item_features(examples: Sequence[ExplanationExample], num_items: int, vocab: Sequence[str],
                  per_item: int = 3) -> list[list[str]]:
  """Each item's ``per_item`` most frequent feature words over ``examples`` (the training period):
  the item's content as the generator sees it."""
  counts = [collections.Counter() for _ in range(num_items + 1)]
  fset = set(vocab)
  for e in examples:
    counts[e.item].update(w for w in e.features if w in fset)
  return [[w for w, _ in c.most_common(per_item)] for c in counts]
