"""Multi-process training through the real entry point: 2 processes x 4 CPU devices on localhost.

Each process runs ``python -m llm4rec_jax.cli train`` with ``config.distributed.*`` set, so
``jax.distributed.initialize`` (Gloo collectives on CPU), per-process data slices, process-0-only
logging and Orbax's multi-process checkpointing all run as they would on a pod. The losses must
equal those of one process driving the same (2, 2, 2) mesh of 8 devices.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import SUBPROCESS_XLA_FLAGS, read_log
from llm4rec_jax.data import registry
from llm4rec_jax.data.prepare import source
from llm4rec_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/synthetic.py:tiny'
OVERRIDES = {
    'data.synthetic.num_users': 240, 'data.synthetic.num_items': 120,
    'data.synthetic.max_seq_len': 60, 'data.synthetic.mean_seq_len': 12.0,
    'data.max_len': 16, 'train.batch_size': 32, 'train.max_steps': 4, 'train.log_every': 1,
    'train.progress_bar': False, 'mesh.shape': (2, 2, 2),
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _flag(key, value) -> str:
  if isinstance(value, tuple):
    value = '(' + ','.join(map(str, value)) + ')'
  return f'--config.{key}={str(value).lower() if isinstance(value, bool) else value}'


def _launch(workdir, overrides):
  """``llm4rec train`` as 2 processes of 4 CPU devices each, coordinated over localhost."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{SUBPROCESS_XLA_FLAGS} --xla_force_host_platform_device_count=4'.strip())
  flags = [_flag(k, v) for k, v in overrides.items()] + [
      _flag('distributed.initialize', True),
      _flag('distributed.coordinator_address', f'localhost:{_free_port()}'),
      _flag('distributed.num_processes', 2)]
  return [subprocess.Popen(
      [sys.executable, '-m', 'llm4rec_jax.cli', 'train', f'--config={CONFIG}',
       f'--workdir={workdir}', *flags, _flag('distributed.process_id', i)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _wait(procs, timeout=400):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_mesh(tmp_path):
  multi = tmp_path / 'two_processes'
  outs = _wait(_launch(multi, OVERRIDES))
  # Only process 0 prints the result (and writes logs; a second writer would repeat every step).
  result = json.loads((multi / 'metrics.json').read_text())
  assert result['test']['num_cases'] == 240
  assert '"test"' in outs[0][0] and '"test"' not in outs[1][0]
  start = [json.loads(l) for l in (multi / 'events.jsonl').read_text().splitlines()][0]
  assert (start['processes'], start['devices']) == (2, 8)
  log_steps = [json.loads(l)['step'] for l in (multi / 'train_log.jsonl').read_text().splitlines()]
  assert log_steps == [1, 2, 3, 4]
  # Each process saved its own data-iterator state next to the shared array checkpoint.
  iter_files = sorted(p.name for p in (multi / 'checkpoints' / '4' / 'data_iter').glob('process_*'))
  assert iter_files == ['process_0-of-2.json', 'process_1-of-2.json']

  # The reference: this (single) process drives 8 devices with the same config.
  assert jax.process_count() == 1 and jax.device_count() == 8
  sys.path.insert(0, str(ROOT / 'configs'))
  try:
    import synthetic as synthetic_config  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = synthetic_config.get_config('tiny')
  config.update_from_flattened_dict(OVERRIDES)
  single = trainer.train_and_evaluate(config, tmp_path / 'one_process')
  a, b = read_log(tmp_path / 'one_process'), read_log(multi)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=2e-5)
  for k in ('hr@10', 'ndcg@10', 'mrr'):
    assert result['test'][k] == pytest.approx(single['test'][k], abs=1e-6)


def _synthetic_config(overrides):
  sys.path.insert(0, str(ROOT / 'configs'))
  try:
    import synthetic as synthetic_config  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = synthetic_config.get_config('tiny')
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.slow
def test_two_processes_on_records_evaluate_like_one_process(tmp_path):
  """``records:DIR``: each process reads only its shards and ranks only its own evaluation cases
  (241 users: 121 and 120 cases, so 6 and 5 local batches of 24 before padding); the metrics equal
  one process evaluating the same checkpoint."""
  prepared = tmp_path / 'records'
  source.write_dataset(registry.load(_synthetic_config(
      {**OVERRIDES, 'data.synthetic.num_users': 241}).data), prepared, num_shards=4)
  overrides = {**OVERRIDES, 'data.name': f'records:{prepared}', 'eval.batch_size': 48,
               'debias.beyond_accuracy': False}
  multi = tmp_path / 'two_processes'
  _wait(_launch(multi, overrides))
  result = json.loads((multi / 'metrics.json').read_text())
  start = [json.loads(l) for l in (multi / 'events.jsonl').read_text().splitlines()][0]
  assert (start['processes'], start['devices'], start['shards']) == (2, 8, 4)
  iter_files = sorted(p.name for p in (multi / 'checkpoints' / '4' / 'data_iter').glob('process_*'))
  assert iter_files == ['process_0-of-2.json', 'process_1-of-2.json']

  assert jax.process_count() == 1 and jax.device_count() == 8
  single = trainer.evaluate(_synthetic_config(overrides), multi)
  assert single['step'] == result['step'] == 4
  for which in ('valid', 'test'):
    assert result[which]['num_cases'] == single[which]['num_cases'] == 241
    for k in ('hr@1', 'hr@10', 'ndcg@10', 'mrr'):
      assert result[which][k] == pytest.approx(single[which][k], abs=1e-6), (which, k)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
  """A preemption that reaches one host: every process saves the same step and exits cleanly."""
  workdir = tmp_path / 'signalled'
  overrides = {**OVERRIDES, 'train.max_steps': 0, 'train.num_epochs': 500,
               'train.eval_every': 100_000, 'train.log_every': 2}
  procs = _launch(workdir, overrides)
  log = workdir / 'train_log.jsonl'
  deadline = time.time() + 300
  while not (log.exists() and len(log.read_text().splitlines()) >= 2):
    assert time.time() < deadline and all(p.poll() is None for p in procs), 'run did not start'
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  outs = _wait(procs)
  stopped = json.loads(outs[0][0][outs[0][0].index('{'):])
  assert stopped['stopped'] == 'signal 15' and stopped['step'] % 2 == 0
  assert stopped['step'] < 500 * 7  # stopped long before the end
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved == [stopped['step']]
  iter_files = sorted(p.name for p in (workdir / 'checkpoints' / str(saved[0]) / 'data_iter')
                      .glob('process_*'))
  assert iter_files == ['process_0-of-2.json', 'process_1-of-2.json']
