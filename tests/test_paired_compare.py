"""benchmarks/paired_compare.py: per-user paired differences between two runs' saved rankings."""

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

import paired_compare  # noqa: E402  pylint: disable=wrong-import-position

from llm4rec_jax import metrics as metrics_lib  # noqa: E402


def _write(workdir, ranks):
  workdir.mkdir()
  with open(workdir / 'rankings_test.jsonl', 'w') as f:
    for u, r in enumerate(ranks):
      f.write(json.dumps({'user': f'u{u}', 'target': 'i1', 'rank': int(r), 'top': []}) + '\n')


def test_paired_difference_matches_metrics_and_hand_values(tmp_path):
  a = np.array([0, 3, 12, 9, 50, 1])
  b = np.array([1, 3, 2, 9, 0, 30])
  _write(tmp_path / 'a', a)
  _write(tmp_path / 'b', b[::-1])
  # Users are matched by id, not by line order.
  (tmp_path / 'b' / 'rankings_test.jsonl').write_text(''.join(
      json.dumps({'user': f'u{u}', 'rank': int(b[u])}) + '\n' for u in reversed(range(6))))
  res = paired_compare.compare(paired_compare.load_ranks(str(tmp_path / 'a'), 'test'),
                               paired_compare.load_ranks(str(tmp_path / 'b'), 'test'))
  assert res['users'] == 6
  assert res['ndcg@10']['a'] == pytest.approx(metrics_lib.ranking_metrics(a, (10,))['ndcg@10'],
                                              abs=1e-5)
  assert res['hr@10']['b'] == pytest.approx(5 / 6, abs=1e-5)
  d = np.array([1 / np.log2(3) - 1, 0, 1 / np.log2(4), 0, 1, -1 / np.log2(3)])
  assert res['ndcg@10']['b_minus_a'] == pytest.approx(d.mean(), abs=1e-5)
  assert res['ndcg@10']['paired_se'] == pytest.approx(d.std(ddof=1) / np.sqrt(6), abs=1e-5)


def test_different_users_or_a_bad_line_are_named(tmp_path):
  _write(tmp_path / 'a', [0, 1])
  _write(tmp_path / 'b', [0, 1, 2])
  with pytest.raises(SystemExit, match='different users'):
    paired_compare.compare(paired_compare.load_ranks(str(tmp_path / 'a'), 'test'),
                           paired_compare.load_ranks(str(tmp_path / 'b'), 'test'))
  (tmp_path / 'b' / 'rankings_test.jsonl').write_text('{"user": "u0", "rank": 1}\nnot json\n')
  with pytest.raises(SystemExit, match=r'rankings_test.jsonl:2'):
    paired_compare.load_ranks(str(tmp_path / 'b'), 'test')
  with pytest.raises(SystemExit, match='save_rankings'):
    paired_compare.load_ranks(str(tmp_path / 'a'), 'valid')
