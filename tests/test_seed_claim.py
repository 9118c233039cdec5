"""benchmarks/seed_claim.py: the declared multi-seed criterion, on hand-made result files."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(path, rows, lines=False):
  recs = [{'seed': s, 'test': {'ndcg@10': v}, 'valid_ndcg@10': v + 0.01} for s, v in rows]
  path.write_text('\n'.join(json.dumps(r) for r in recs) + '\n' if lines else json.dumps(recs[0]))


def _run(tmp_path, a, b):
  proc = subprocess.run([sys.executable, 'benchmarks/seed_claim.py', '--name=t', f'--a={a}',
                         f'--b={b}', f'--out={tmp_path / "out.json"}'], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  return json.loads((tmp_path / 'out.json').read_text())


def test_claim_holds_only_beyond_two_standard_errors(tmp_path):
  for s, v in ((0, 0.050), (1, 0.052), (2, 0.051)):
    _write(tmp_path / f'a{s}.json', [(s, v)])
  _write(tmp_path / 'b.jsonl', [(0, 0.053), (1, 0.0545), (2, 0.0545)], lines=True)
  out = _run(tmp_path, ','.join(str(tmp_path / f'a{s}.json') for s in range(3)),
             tmp_path / 'b.jsonl')
  assert out['seeds'] == [0, 1, 2] and out['holds'] is True
  assert out['diff_per_seed'] == [0.003, 0.0025, 0.0035]
  assert abs(out['diff_mean'] - 0.003) < 1e-9 and abs(out['diff_se'] - 0.00029) < 1e-5
  # Same mean difference, but one seed goes the other way: not beyond two standard errors.
  _write(tmp_path / 'c.jsonl', [(0, 0.060), (1, 0.050), (2, 0.0523)], lines=True)
  out = _run(tmp_path, ','.join(str(tmp_path / f'a{s}.json') for s in range(3)),
             tmp_path / 'c.jsonl')
  assert out['holds'] is False and out['diff_mean'] > 0


def test_leaderboard_rows_count_as_their_seeds(tmp_path):
  row = {'benchmark': 'leaderboard', 'seeds': [0, 1, 2],
         'test_ndcg@10': {'mean': 0.051, 'se': 0.0006, 'per_seed': [0.050, 0.052, 0.051]},
         'valid_ndcg@10': {'mean': 0.06, 'se': 0.0, 'per_seed': [0.06, 0.06, 0.06]}}
  (tmp_path / 'board.jsonl').write_text(json.dumps(row) + '\n')
  _write(tmp_path / 'b.jsonl', [(0, 0.053), (1, 0.0545), (2, 0.0545)], lines=True)
  out = _run(tmp_path, tmp_path / 'board.jsonl', tmp_path / 'b.jsonl')
  assert out['a']['per_seed'] == [0.05, 0.052, 0.051] and out['holds'] is True
