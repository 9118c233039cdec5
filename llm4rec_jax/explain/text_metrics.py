"""Metrics of the explanation-generation literature (PETER, P5), written out in full.

* BLEU-n: corpus BLEU (Papineni et al., 2002) with one reference per case: clipped n-gram
  precisions up to ``n`` pooled over the corpus, geometric mean, brevity penalty; no smoothing.
* ROUGE-1/2/L: per-case precision, recall and F1 of clipped n-gram overlap (1, 2) or of the longest
  common subsequence (L), averaged over cases.
* Unique-sentence ratio (USR): distinct generated sentences / generated sentences.
* Feature-matching ratio (FMR): share of cases whose generated text contains one of the case's
  ground-truth features (cases without a feature are left out).

Values are fractions in [0, 1]; papers print them x 100.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
  """Lower-cased word tokens (punctuation dropped), the unit every metric here counts."""
  return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]],
                max_order: int = 4) -> float:
  """Corpus BLEU-``max_order`` of token lists (one reference per hypothesis)."""
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references for {len(hypotheses)} hypotheses')
  matches = [0] * max_order
  possible = [0] * max_order
  ref_len = hyp_len = 0
  for ref, hyp in zip(references, hypotheses):
    ref_len += len(ref)
    hyp_len += len(hyp)
    for n in range(1, max_order + 1):
      h, r = _ngrams(hyp, n), _ngrams(ref, n)
      matches[n - 1] += sum(min(c, r[g]) for g, c in h.items())
      possible[n - 1] += max(len(hyp) - n + 1, 0)
  if hyp_len == 0 or min(matches) == 0:
    return 0.0
  log_precision = sum(math.log(m / p) for m, p in zip(matches, possible)) / max_order
  brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  return brevity * math.exp(log_precision)


def _prf(overlap: int, hyp_total: int, ref_total: int) -> tuple[float, float, float]:
  p = overlap / hyp_total if hyp_total else 0.0
  r = overlap / ref_total if ref_total else 0.0
  return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def rouge_n(reference: Sequence[str], hypothesis: Sequence[str], n: int
            ) -> tuple[float, float, float]:
  """(precision, recall, F1) of clipped n-gram overlap for one case."""
  h, r = _ngrams(hypothesis, n), _ngrams(reference, n)
  overlap = sum(min(c, r[g]) for g, c in h.items())
  return _prf(overlap, sum(h.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_l(reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[float, float, float]:
  """(precision, recall, F1) of the longest common subsequence for one case."""
  return _prf(lcs_length(reference, hypothesis), len(hypothesis), len(reference))


def unique_sentence_ratio(hypotheses: Sequence[str]) -> float:
  if not hypotheses:
    return 0.0
  return len({' '.join(words(h)) for h in hypotheses}) / len(hypotheses)


def feature_matching_ratio(hypotheses: Sequence[str],
                           features: Sequence[Iterable[str]]) -> float:
  """Share of cases (with at least one feature) whose hypothesis contains one of its features."""
  hits = total = 0
  for hyp, feats in zip(hypotheses, features):
    feats = {f.lower() for f in feats}
    if not feats:
      continue
    total += 1
    hits += bool(feats & set(words(hyp)))
  return hits / total if total else 0.0


def text_metrics(references: Sequence[str], hypotheses: Sequence[str],
                 features: Sequence[Iterable[str]] | None = None) -> dict[str, float]:
  """Every metric above for raw strings: bleu1, bleu4, rouge{1,2,l}_{p,r,f}, usr (and fmr)."""
  refs = [words(r) for r in references]
  hyps = [words(h) for h in hypotheses]
  out = {'bleu1': corpus_bleu(refs, hyps, 1), 'bleu4': corpus_bleu(refs, hyps, 4)}
  for name, fn in (('rouge1', lambda r, h: rouge_n(r, h, 1)),
                   ('rouge2', lambda r, h: rouge_n(r, h, 2)), ('rougel', rouge_l)):
    scores = [fn(r, h) for r, h in zip(refs, hyps)]
    for i, part in enumerate('prf'):
      out[f'{name}_{part}'] = sum(s[i] for s in scores) / max(len(scores), 1)
  out['usr'] = unique_sentence_ratio(hypotheses)
  if features is not None:
    out['fmr'] = feature_matching_ratio(hypotheses, features)
  return out
