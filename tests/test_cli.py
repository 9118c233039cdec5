"""The `llm4rec` command: train -> evaluate (with rankings) -> recommend, and its clean errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from llm4rec_jax import metrics as metrics_lib
from llm4rec_jax.errors import Llm4RecError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ['--config.data.synthetic.num_users=200', '--config.data.synthetic.num_items=100',
         '--config.data.synthetic.max_seq_len=50', '--config.data.max_len=16',
         '--config.train.batch_size=32', '--config.train.num_epochs=2',
         '--config.train.progress_bar=false', '--config.eval.batch_size=64']


def llm4rec(*args, check=True):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cli') / 'run'
  proc = llm4rec('train', '--config=configs/synthetic.py:tiny', f'--workdir={workdir}', *SMALL)
  return workdir, json.loads(proc.stdout)


def test_train_writes_metrics_config_and_checkpoints(trained):
  workdir, result = trained
  assert json.loads((workdir / 'metrics.json').read_text()) == result
  assert set(result['test']) >= {'hr@10', 'ndcg@10', 'mrr', 'hr@50', 'ndcg@1'}
  assert result['test']['num_cases'] == 200
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model']['d_model'] == 32 and config['model']['vocab_size'] >= 101
  assert any((workdir / 'checkpoints').iterdir())
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))


def test_evaluate_latest_with_rankings_that_recompute_the_metrics(trained):
  workdir, _ = trained
  proc = llm4rec('evaluate', '--config=configs/synthetic.py:tiny', f'--workdir={workdir}',
                 '--checkpoint=latest', '--save_rankings', *SMALL)
  result = json.loads(proc.stdout)
  rows = [json.loads(l) for l in (workdir / 'rankings_test.jsonl').read_text().splitlines()]
  assert len(rows) == 200 and len(rows[0]['top']) == 50
  recomputed = metrics_lib.ranking_metrics(np.array([r['rank'] for r in rows]))
  # The ranking metrics (the beyond-accuracy ones beside them need more than ranks).
  assert recomputed == pytest.approx({k: result['test'][k] for k in recomputed})
  for r in rows:  # the target sits in the top list exactly at its rank
    assert (r['target'] in r['top'][:10]) == (r['rank'] < 10)


def test_recommend_outputs_json_with_raw_ids(trained):
  workdir, _ = trained
  proc = llm4rec('recommend', f'--workdir={workdir}', '--history=i3,i7,i1', '--top_k=5')
  out = json.loads(proc.stdout)
  items = [r['item'] for r in out['recommendations']]
  assert len(items) == 5 and not {'i3', 'i7', 'i1'} & set(items)
  assert all(r['title'] for r in out['recommendations'])
  scores = [r['score'] for r in out['recommendations']]
  assert scores == sorted(scores, reverse=True)


def test_serving_compiles_once_per_history_bucket_not_per_length(trained):
  from llm4rec_jax import serving  # pylint: disable=import-outside-toplevel
  workdir, _ = trained
  rec = serving.Recommender(workdir, checkpoint='latest', use_index=False)
  # The jit cache of Recommender._top is shared by every instance in this process (other tests'
  # recommenders included), so count the entries this one adds.
  before = rec._top._cache_size()  # pylint: disable=protected-access
  tops = [rec.recommend([f'i{i}' for i in range(1, n + 1)], top_k=5) for n in range(1, 21)]
  # Lengths 1..16 share one bucket, 17..20 the next: two compilations for twenty lengths.
  assert rec._top._cache_size() - before == 2  # pylint: disable=protected-access
  assert all(not {r['item'] for r in t['recommendations']} & set(t['history']) for t in tops)
  assert [serving.recommender.seen_bucket(n) for n in (0, 1, 16, 17, 33)] == [16, 16, 16, 32, 64]


@pytest.mark.parametrize('args,message', [
    (['recommend', '--history=i1,not_an_item'], "unknown item id(s) ['not_an_item']"),
    (['recommend', '--history=i1', '--top_k=0'], 'top_k must be in 1..100'),
    (['evaluate', '--config=configs/synthetic.py:tiny', '--config.mesh.shape=(3,1,1)'],
     'config.mesh.shape: (3, 1, 1) needs 3 devices'),
])
def test_bad_input_is_one_clear_line(trained, args, message):
  workdir, _ = trained
  proc = llm4rec(args[0], f'--workdir={workdir}', *args[1:], check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_train_with_seeds_trains_one_workdir_per_seed(tmp_path):
  proc = llm4rec('train', '--config=configs/synthetic.py:tiny', f'--workdir={tmp_path}',
                 '--seeds=0,3', *SMALL, '--config.train.max_steps=4')
  result = json.loads(proc.stdout)
  assert set(result) == {'seed_0', 'seed_3'}
  for seed in (0, 3):
    workdir = tmp_path / f'seed_{seed}'
    assert json.loads((workdir / 'metrics.json').read_text()) == result[f'seed_{seed}']
    assert json.loads((workdir / 'config.json').read_text())['seed'] == seed
  assert result['seed_0']['test'] != result['seed_3']['test']
  proc = llm4rec('train', '--config=configs/synthetic.py:tiny', f'--workdir={tmp_path}/w',
                 '--seeds=0,x', check=False)
  assert proc.returncode == 2
  assert "--seeds: expected comma-separated integers, got '0,x'" in proc.stderr


def test_train_with_learning_rates_sweeps_the_rate_and_refuses_bad_lists(tmp_path):
  proc = llm4rec('train', '--config=configs/synthetic.py:tiny', f'--workdir={tmp_path}',
                 '--seeds=0', '--learning_rates=1e-3,4e-3', *SMALL, '--config.train.max_steps=4')
  result = json.loads(proc.stdout)
  assert set(result) == {'seed_0_lr_0.001', 'seed_0_lr_0.004'}
  for rate in (0.001, 0.004):
    saved = json.loads((tmp_path / f'seed_0_lr_{rate}' / 'config.json').read_text())
    assert saved['seed'] == 0 and saved['optimizer']['learning_rate'] == rate
  assert result['seed_0_lr_0.001']['test'] != result['seed_0_lr_0.004']['test']
  for flags, message in [
      (['--seeds=0,1', '--learning_rates=1e-3,2e-3,4e-3'],
       '--learning_rates: 3 rates for 2 seeds (--seeds): give one rate per seed, or one seed'),
      (['--seeds=0', '--learning_rates=1e-3,0.001'],
       'config.optimizer.learning_rate: seed 0 with learning rate 0.001 is given twice'),
      (['--seeds=0,1', '--learning_rates=1e-3,-1e-3'],
       'config.optimizer.learning_rate: the learning rates [0.001, -0.001] include -0.001: each '
       'must be positive')]:
    proc = llm4rec('train', '--config=configs/synthetic.py:tiny', f'--workdir={tmp_path}/bad',
                   *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr and not (tmp_path / 'bad').exists()


def test_learning_rates_flag_parsing():
  from llm4rec_jax import cli  # pylint: disable=import-outside-toplevel
  pair = cli._pair_learning_rates  # pylint: disable=protected-access
  assert pair([3], '1e-3, 2e-3') == ([3, 3], [1e-3, 2e-3])
  assert pair([0, 1], '1e-3,1e-3') == ([0, 1], [1e-3, 1e-3])
  with pytest.raises(Llm4RecError, match="expected comma-separated numbers, got '1e-3,x'"):
    pair([0], '1e-3,x')
  with pytest.raises(Llm4RecError, match='give at least one rate'):
    pair([0], ',')


def test_missing_dataset_and_workdir_errors(tmp_path):
  proc = llm4rec('train', '--config=configs/beauty.py', f'--workdir={tmp_path}/w',
                 f'--config.data.name=s3rec:{tmp_path}/nowhere', check=False)
  assert proc.returncode == 2 and 'nowhere' in proc.stderr and 'Traceback' not in proc.stderr
  proc = llm4rec('recommend', f'--workdir={tmp_path}/empty', '--history=1', check=False)
  assert proc.returncode == 2 and 'config.json not found' in proc.stderr


def test_help_lists_the_commands_and_each_command_its_flags_and_an_example():
  from llm4rec_jax import cli  # pylint: disable=import-outside-toplevel
  top = llm4rec('--help')
  lines = top.stdout.splitlines()
  for command, entry in cli.HELP.items():
    assert any(line.split()[:1] == [command] and entry.summary in line for line in lines), command
  assert 'Try --helpfull' not in top.stdout
  proc = llm4rec('train', '--help')
  assert '--config (required)' in proc.stdout and '--workdir (required)' in proc.stdout
  assert '--config.SECTION.FIELD=VALUE' in proc.stdout
  assert 'Example:\n  llm4rec train --config=configs/' in proc.stdout
  proc = llm4rec('recommend', '--help')
  assert "--checkpoint (default: 'auto')" in proc.stdout and '--top_k (default: 10)' in proc.stdout
  assert "--snapshot (default: 'auto')" in proc.stdout and '--config ' not in proc.stdout
  assert 'Example:\n  llm4rec recommend --workdir=' in proc.stdout
  assert "--checkpoint (default: 'best')" in llm4rec('evaluate', '--help').stdout
  bad = llm4rec('nope', '--help', check=False)
  assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
