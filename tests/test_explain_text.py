"""Text metrics against hand-computed values; the explanation generator's decoding; templates."""

import math

import pytest

from llm4rec_jax.explain import text_metrics as tm

REF = 'The cat is on the mat.'
HYP = 'the cat the cat on the mat'


def test_bleu_hand_computed():
  ref, hyp = tm.words(REF), tm.words(HYP)
  assert ref == ['the', 'cat', 'is', 'on', 'the', 'mat']
  # Unigrams: the x3 (clipped to 2), cat x2 (clipped to 1), on, mat -> 5 of 7; hyp longer: BP = 1.
  assert tm.corpus_bleu([ref], [hyp], 1) == pytest.approx(5 / 7)
  # p1..p4 = 4/5, 3/4, 2/3, 1/2 -> (0.2) ** (1/4).
  assert tm.corpus_bleu([list('abcde')], [list('abcdf')], 4) == pytest.approx(0.2 ** 0.25)
  # A short hypothesis pays the brevity penalty exp(1 - 6/3).
  assert tm.corpus_bleu([ref], [['the', 'cat', 'is']], 1) == pytest.approx(math.exp(1 - 2))
  # Corpus pooling: counts are summed over cases before dividing.
  assert tm.corpus_bleu([['a', 'b'], ['c', 'd']], [['a', 'x'], ['c', 'd']], 1) == pytest.approx(3 / 4)
  assert tm.corpus_bleu([ref], [['dog']], 4) == 0.0


def test_rouge_hand_computed():
  ref, hyp = tm.words(REF), tm.words(HYP)
  p, r, f = tm.rouge_n(ref, hyp, 1)  # overlap 5, |hyp| 7, |ref| 6
  assert (p, r) == pytest.approx((5 / 7, 5 / 6)) and f == pytest.approx(50 / 65)
  p, r, f = tm.rouge_n(ref, hyp, 2)  # the-cat, on-the, the-mat: 3 of 6 and of 5
  assert (p, r, f) == pytest.approx((0.5, 0.6, 6 / 11))
  assert tm.lcs_length(ref, hyp) == 5  # the cat on the mat
  assert tm.rouge_l(ref, hyp)[2] == pytest.approx(50 / 65)


def test_usr_fmr_and_summary():
  assert tm.unique_sentence_ratio(['A b.', 'a b', 'c']) == pytest.approx(2 / 3)
  assert tm.feature_matching_ratio(['great sound', 'nice strings', 'ok'],
                                   [{'sound'}, {'tuner'}, set()]) == pytest.approx(0.5)
  m = tm.text_metrics([REF, 'a b c d e'], [HYP, 'a b c d f'], [{'mat'}, {'z'}])
  assert m['rouge1_f'] == pytest.approx((50 / 65 + 0.8) / 2)
  assert m['usr'] == 1.0 and m['fmr'] == 0.5
  assert 0 < m['bleu4'] < m['bleu1'] <= 1
