"""benchmarks/leaderboard.py: the multi-seed table rows (mean, standard error, per-seed values)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from conftest import SUBPROCESS_XLA_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

import leaderboard  # noqa: E402  pylint: disable=wrong-import-position


def _run(seed, ndcg):
  return {'seed': seed, 'dataset': 'lastfm', 'protocol': 'leave_one_out', 'exclude_seen': True,
          'test': {m: ndcg for m in leaderboard.METRICS}, 'valid_ndcg@10': ndcg + 0.01,
          'best_epoch': 10 + seed, 'time_to_best_epoch_s': 100.0, 'wall_s': 120.0,
          'peak_rss_mb': 900.0, 'command': f'python benchmarks/beauty.py --seed={seed}'}


def test_rows_hold_mean_standard_error_and_every_seed(tmp_path):
  values = [0.04, 0.05, 0.045]
  runs = [_run(s, v) for s, v in zip((2, 0, 1), values)]
  row = leaderboard.summarize('lastfm', 'default', runs)
  assert row['seeds'] == [0, 1, 2]
  assert row['test_ndcg@10']['per_seed'] == [0.05, 0.045, 0.04]
  assert row['test_ndcg@10']['mean'] == round(np.mean(values), 5)
  assert row['test_ndcg@10']['se'] == round(np.std(values, ddof=1) / np.sqrt(3), 5)
  assert row['best_epoch'] == [10, 11, 12]
  # --from_runs: the same row from a file of per-seed lines, with provenance.
  f = tmp_path / 'runs.jsonl'
  f.write_text('\n'.join(json.dumps(r) for r in runs) + '\n')
  out = subprocess.run([sys.executable, 'benchmarks/leaderboard.py', f'--from_runs={f}'], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 1
  got = json.loads(out[0])
  assert got['test_ndcg@10'] == row['test_ndcg@10'] and 'commit' in got['provenance']


def test_reevaluated_workdirs_make_leaderboard_rows(tmp_path):
  import reevaluate  # pylint: disable=import-outside-toplevel
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  c = tiny_config(**{'seed': 3})
  trained = trainer.train_and_evaluate(c, tmp_path / 'run')
  line = reevaluate.reevaluate(str(tmp_path / 'run'), ['eval.transition_weights=(0.0, 1.0)'],
                               {3: {'seed': 3, 'best_epoch': 2.0, 'command': 'train it'}})
  assert line['seed'] == 3 and line['best_epoch'] == 2.0
  assert line['carried_from_training_run'] == 'train it'
  chosen = line['transition_blend']['chosen_weight']
  assert chosen in (0.0, 1.0) and line['provenance']['seeds'] == [3]
  if chosen == 0.0:  # the blend off reproduces the training run's own test figures
    assert line['test']['ndcg@10'] == round(trained['test']['ndcg@10'], 5)
  row = leaderboard.summarize('synthetic', 'blend', [line, {**line, 'seed': 4}])
  assert row['seeds'] == [3, 4] and row['test_ndcg@10']['se'] == 0.0
  # --pick: a setting chosen per workdir on validation alone, the kept value's test figures.
  picked = reevaluate.reevaluate(str(tmp_path / 'run'), [], {},
                                 ('debias.adjust_strength', ['0.0', '3.0']))
  by = picked['picked']['valid_ndcg@10']
  assert picked['picked']['value'] == max(by, key=lambda v: (by[v], -float(v)))
  assert picked['valid_ndcg@10'] == by[picked['picked']['value']] and by['0.0'] != by['3.0']
  assert picked['overrides'] == [f"debias.adjust_strength={picked['picked']['value']}"]
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  kept = config_base.load(tmp_path / 'run')
  kept.debias.adjust_strength = float(picked['picked']['value'])
  again = trainer.evaluate(kept, tmp_path / 'run')
  assert round(again['test']['ndcg@10'], 5) == picked['test']['ndcg@10']


def test_replicas_row_trains_every_seed_in_one_process(tmp_path):
  """--replicas trains a row's seeds at once (one process, replicas: tests/test_replicas.py checks
  each equals its separate run); the row holds every seed's run, its own workdir each."""
  tiny = ['--set=train.max_steps=4', '--set=train.eval_every=4', '--set=eval.max_cases=200',
          '--set=model.num_layers=1', '--set=model.d_model=16', '--set=model.num_heads=1',
          '--set=model.mlp_dim=32']
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=SUBPROCESS_XLA_FLAGS)
  out = subprocess.run([sys.executable, 'benchmarks/leaderboard.py', '--datasets=ml100k',
                        '--seeds=2', '--replicas', f'--workdir={tmp_path}', *tiny], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  row = json.loads(out.stdout.splitlines()[-1])
  assert row['seeds'] == [0, 1] and len(row['test_ndcg@10']['per_seed']) == 2
  assert row['test_ndcg@10']['per_seed'][0] != row['test_ndcg@10']['per_seed'][1]
  assert sorted(p.name for p in (tmp_path / 'ml100k_default').iterdir()) == ['seed_0', 'seed_1']
