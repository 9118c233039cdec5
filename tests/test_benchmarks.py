"""Each benchmark's --quick mode runs on the real data and prints one JSON line of results."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize('script,keys', [
    ('beauty.py', {'test', 'best_epoch', 'time_to_best_epoch_s', 'train_examples_per_s'}),
    ('yelp.py', {'test', 'test_seen_items_ranked'}),
    ('ml100k.py', {'test', 'wall_s', 'peak_rss_mb'}),
    ('throughput.py', {'runs'}),
])
def test_quick_benchmark_prints_one_json_line(script, keys):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')  # one CPU device, as benchmarks run
  proc = subprocess.run([sys.executable, f'benchmarks/{script}', '--quick'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout
  result = json.loads(lines[0])
  assert keys <= set(result) and result['quick'] is True
  if 'test' in result:
    assert 0.0 <= result['test']['ndcg@10'] <= result['test']['hr@10'] <= 1.0
