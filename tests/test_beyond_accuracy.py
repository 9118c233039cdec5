"""Beyond-accuracy metrics against values worked out by hand on a five-item example."""

import numpy as np
import pytest

from llm4rec_jax import beyond_accuracy as ba

# Items 1..5 (0 = padding); training counts; three top-2 lists.
COUNTS = np.array([0, 10, 5, 3, 1, 1], float)
TOPS = np.array([[1, 2], [1, 3], [2, 1]])


def test_coverage_gini_popularity_tail_and_novelty_by_hand():
  # Exposure: item 1 three times, item 2 twice, item 3 once, items 4 and 5 never.
  assert ba.exposure_counts(TOPS, 5, 2).tolist() == [0, 3, 2, 1, 0, 0]
  assert ba.coverage(TOPS, 5, 2) == pytest.approx(3 / 5)
  # Gini of (0, 0, 1, 2, 3): sum of |x_i - x_j| over ordered pairs 32, over 2 n^2 mean = 60.
  assert ba.gini_of_exposure(TOPS, 5, 2) == pytest.approx(32 / 60)
  assert ba.gini(np.ones(4)) == 0.0 and ba.gini(np.array([0, 0, 0, 7.0])) == pytest.approx(0.75)
  # Mean popularity per list: 7.5, 6.5, 7.5.
  assert ba.average_popularity(TOPS, COUNTS, 2) == pytest.approx(21.5 / 3)
  # Head = the top 20% of five items = item 1; half the six slots are tail items.
  head = ba.head_items(COUNTS, 0.2)
  assert head.tolist() == [False, True, False, False, False, False]
  assert ba.tail_share(TOPS, ~head, 2) == pytest.approx(0.5)
  # Self-information with 9 training users: -log2(11/10), -log2(6/10), -log2(4/10) for items 1-3,
  # shown 3, 2 and 1 times over six slots.
  expected = (3 * -0.1375035 + 2 * 0.7369656 + 1 * 1.3219281) / 6
  assert ba.novelty(TOPS, COUNTS, 9, 2) == pytest.approx(expected, abs=1e-6)
  # k = 1 reads only the first column.
  assert ba.coverage(TOPS, 5, 1) == pytest.approx(2 / 5)


def test_intra_list_diversity_by_hand_and_featureless_items_skipped():
  vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [2, 0]], float)
  # Lists: items (1, 2) orthogonal -> 1; (1, 3) at 45 degrees -> 1 - 1/sqrt(2); (2, 1) -> 1;
  # (4, 1): item 4 has no features, so the list has no pair and is left out; (1, 5) parallel -> 0.
  tops = np.vstack([TOPS, [[4, 1], [1, 5]]])
  want = (1 + (1 - 2 ** -0.5) + 1 + 0) / 4
  assert ba.intra_list_diversity(tops, vectors, 2) == pytest.approx(want, abs=1e-6)
  assert ba.intra_list_diversity(tops, vectors, 2, chunk=2) == pytest.approx(want, abs=1e-6)
  assert np.isnan(ba.intra_list_diversity(np.array([[4, 4]]), vectors, 2))


def test_group_gaps_by_hand():
  ranks = np.array([0, 5, 20, 1])  # 0-based ranks; groups a, a, b, b
  out = ba.group_metrics(ranks, np.array([0, 0, 1, 1]), ['a', 'b'], (10,))
  ndcg_a = (1 + 1 / np.log2(7)) / 2
  ndcg_b = (0 + 1 / np.log2(3)) / 2
  assert out['a']['ndcg@10'] == pytest.approx(ndcg_a) and out['a']['hr@10'] == 1.0
  assert out['b']['ndcg@10'] == pytest.approx(ndcg_b) and out['b']['hr@10'] == 0.5
  assert out['ndcg@10_gap'] == pytest.approx(ndcg_a - ndcg_b) and out['hr@10_gap'] == 0.5
  assert out['a']['num_cases'] == 2
  # A group with no cases is absent and does not enter the gap; one group leaves no gap.
  one = ba.group_metrics(ranks, np.array([0, 0, 0, 0]), ['a', 'b'], (10,))
  assert 'b' not in one and one['ndcg@10_gap'] == 0.0
