"""End-to-end training properties: exact resumption, device-count invariance, overfitting, NaN stop."""

import collections
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import popularity_ndcg, read_log, tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError, NonFiniteLossError
from llm4rec_jax.data import pipeline, registry
from llm4rec_jax.train import checkpointing, losses, trainer
from llm4rec_jax.train import experiment


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
  config = tiny_config(**{'train.num_epochs': 3, 'train.eval_every': 4})
  full = trainer.train_and_evaluate(config, tmp_path / 'full')
  # Stop at a step that is not an evaluation step, as a preemption would, then resume.
  stopped = trainer.train_and_evaluate(config, tmp_path / 'resumed', stop_after_steps=6)
  assert stopped == {'stopped': 'stop_after_steps', 'step': 6}
  resumed = trainer.train_and_evaluate(config, tmp_path / 'resumed')
  a, b = read_log(tmp_path / 'full'), read_log(tmp_path / 'resumed')
  assert sorted(a) == sorted(b) and len(a) > 6
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  assert resumed['test'] == pytest.approx(full['test'])
  assert json.loads((tmp_path / 'resumed' / 'metrics.json').read_text())['test'] == resumed['test']


def test_resume_refuses_other_settings_and_counts_training_time_on(tmp_path):
  """A workdir's checkpoints resume only under the settings they were trained with (how long and
  how often may change): another dropout is refused naming the field, before anything is
  written. The resumed run's evaluations count training seconds on from the checkpoint's."""
  config = tiny_config(**{'train.num_epochs': 2, 'train.eval_every': 4})
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(config, workdir, stop_after_steps=6)
  saved = (workdir / 'config.json').read_text()
  with pytest.raises(ConfigError, match=r'model\.dropout: 0\.1 there, 0\.3 now'):
    trainer.train_and_evaluate(tiny_config(**{'train.num_epochs': 2, 'train.eval_every': 4,
                                              'model.dropout': 0.3}), workdir)
  assert (workdir / 'config.json').read_text() == saved
  ckpt = checkpointing.Checkpointer(workdir / 'checkpoints', async_save=False, read_only=True)
  at_stop = ckpt.progress(6)['elapsed_s']
  assert at_stop > 0
  longer = tiny_config(**{'train.num_epochs': 3, 'train.eval_every': 4,
                          'train.progress_bar': False, 'eval.ks': (5, 10)})
  trainer.train_and_evaluate(longer, workdir)  # allowed: train longer, evaluate other cutoffs
  events = [json.loads(l) for l in (workdir / 'events.jsonl').read_text().splitlines()]
  assert [e['step'] for e in events if e['event'] == 'start'] == [0, 6]
  after = [e['elapsed_s'] for e in events[events.index(
      next(e for e in events if e['event'] == 'start' and e['step'] == 6)):] if e['event'] == 'eval']
  assert after and min(after) > at_stop
  assert json.loads((workdir / 'config.json').read_text())['train']['num_epochs'] == 3


def test_trained_model_beats_popularity(tmp_path):
  config = tiny_config(**{'train.num_epochs': 10, 'optimizer.learning_rate': 1e-2})
  results = trainer.train_and_evaluate(config, tmp_path)
  pop = popularity_ndcg(config, tmp_path)
  assert 0.1 < pop < results['test']['ndcg@10'] / 1.3, (pop, results['test'])
  assert results['valid']['ndcg@10'] > 1.3 * popularity_ndcg(config, tmp_path, 'valid')


def test_same_losses_on_one_and_eight_devices(tmp_path):
  assert jax.device_count() == 8
  one = tiny_config(**{'train.max_steps': 5, 'mesh.num_devices': 1, 'mesh.shape': (1, 1, 1)})
  eight = tiny_config(**{'train.max_steps': 5, 'mesh.shape': (2, 2, 2)})
  trainer.train_and_evaluate(one, tmp_path / 'one')
  trainer.train_and_evaluate(eight, tmp_path / 'eight')
  a, b = read_log(tmp_path / 'one'), read_log(tmp_path / 'eight')
  assert len(a) == 5
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=2e-5)


def _prefix_entropy_floor(sequences, max_len):
  """Lowest achievable mean next-item loss: entropy of targets given the identical item prefix."""
  windows, _ = pipeline.make_windows(sequences, max_len)
  groups = collections.defaultdict(collections.Counter)
  for row in windows:
    items = row[row > 0]
    for p in range(1, len(items)):
      groups[tuple(items[:p])][items[p]] += 1
  n = sum(sum(c.values()) for c in groups.values())
  return -sum(k * math.log(k / sum(c.values())) for c in groups.values() for k in c.values()) / n


def test_overfits_a_tiny_dataset_to_its_entropy_floor(tmp_path):
  config = tiny_config(**{
      'data.synthetic': {'num_users': 32, 'num_items': 40, 'seed': 1, 'mean_seq_len': 8.0,
                         'max_seq_len': 20},
      'train.num_epochs': 300, 'train.batch_size': 32, 'train.eval_every': 1000,
      'train.log_every': 100, 'model.dropout': 0.0, 'model.d_model': 64, 'model.mlp_dim': 128,
      'model.num_layers': 2, 'optimizer.learning_rate': 3e-3, 'optimizer.schedule': 'constant',
      # one device: 300 steps of what the sharded tests check elsewhere cost a third more on 8
      'mesh.num_devices': 1, 'mesh.shape': (1, 1, 1)})
  trainer.train_and_evaluate(config, tmp_path)
  _, split = registry.load_split(config.data)
  floor = _prefix_entropy_floor(split.train, config.data.max_len)
  log = read_log(tmp_path)
  first, last = log[min(log)], log[max(log)]
  assert first > 3.0  # ~ log(40) at initialisation
  assert floor < last < floor + 0.02, (first, last, floor)


def _diverge_after_step_3(config, workdir, monkeypatch) -> int:
  """Trains 3 steps, then resumes with a loss that is NaN from step 4 on; asserts the run stops
  naming step 4 and returns the latest checkpoint step left behind."""
  trainer.train_and_evaluate(config, workdir, stop_after_steps=3)
  real = losses.full_softmax_loss
  monkeypatch.setattr(losses, 'full_softmax_loss',
                      lambda *a, **k: (lambda l, m: (l * np.nan, m))(*real(*a, **k)))
  with pytest.raises(NonFiniteLossError, match='non-finite training metrics at step 4'):
    trainer.train_and_evaluate(config, workdir)
  return checkpointing.Checkpointer(workdir / 'checkpoints', async_save=False).latest_step()


def test_non_finite_loss_stops_with_checkpoints_intact(tmp_path, monkeypatch):
  config = tiny_config()
  assert _diverge_after_step_3(config, tmp_path, monkeypatch) == 3
  monkeypatch.undo()
  # The intact checkpoint resumes and finishes normally.
  assert 'test' in trainer.train_and_evaluate(config, tmp_path)


def test_loss_turning_nan_between_periodic_saves_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  # Metrics are fetched only every 50 steps, so only the guard before each periodic save can see
  # the NaN of step 4 before the step-6 save.
  config = tiny_config(**{'train.checkpoint_every': 3, 'train.log_every': 50})
  assert _diverge_after_step_3(config, tmp_path, monkeypatch) == 3


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(tmp_path):
  # 6 epochs of 7 steps: the signal lands near step 9 (checkpoint 3 plus the poll's delay), and
  # the resumed and the whole run (most of the test's time) train the rest.
  overrides = ['--config.train.num_epochs=6', '--config.train.eval_every=20',
               '--config.train.checkpoint_every=3',
               '--config.train.log_every=1', '--config.train.progress_bar=false',
               '--config.train.patience=0', '--config.optimizer.warmup_steps=5']
  cmd = [sys.executable, '-m', 'llm4rec_jax.cli', 'train', '--config=configs/synthetic.py:tiny',
         '--config.data.synthetic.num_users=240', '--config.data.synthetic.num_items=120',
         '--config.data.synthetic.max_seq_len=60',
         '--config.data.max_len=16', '--config.train.batch_size=32', *overrides]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')  # XLA_FLAGS from conftest: the same 8 devices
  proc = subprocess.Popen(cmd + [f'--workdir={tmp_path / "run"}'], cwd=root, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (tmp_path / 'run' / 'checkpoints' / '3').exists():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert '"stopped": "signal 15"' in out
  events = [json.loads(l) for l in (tmp_path / 'run' / 'events.jsonl').read_text().splitlines()]
  stop_step = events[-1]['step']
  assert events[-1]['event'] == 'stopped' and stop_step >= 3
  total = 6 * (240 // 32)
  assert stop_step < total
  # Resume in-process (with the run's own effective config) and compare with an uninterrupted run.
  config = config_base.load(tmp_path / 'run')
  trainer.train_and_evaluate(config, tmp_path / 'run')
  trainer.train_and_evaluate(config, tmp_path / 'ref')
  a, b = read_log(tmp_path / 'ref'), read_log(tmp_path / 'run')
  assert sorted(a) == sorted(b)
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)


def test_ema_update_matches_a_loop_reference():
  from llm4rec_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  seq = [rng.normal(size=(3,)).astype(np.float32) for _ in range(30)]
  ema, ref = {'w': jax.numpy.asarray(seq[0])}, seq[0].copy()
  for t, p in enumerate(seq):
    ema = state_lib.ema_update(ema, {'w': jax.numpy.asarray(p)}, jax.numpy.int32(t), 0.9)
    d = min(0.9, (1 + t) / (10 + t))
    ref = d * ref + (1 - d) * p
  np.testing.assert_allclose(np.asarray(ema['w']), ref, rtol=1e-5)


def test_ema_weights_are_what_is_evaluated_checkpointed_and_resumed(tmp_path):
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import restore  # pylint: disable=import-outside-toplevel
  config = tiny_config(**{'train.num_epochs': 3, 'train.eval_every': 4,
                          'optimizer.ema_decay': 0.9})
  full = trainer.train_and_evaluate(config, tmp_path / 'full')
  trainer.train_and_evaluate(config, tmp_path / 'resumed', stop_after_steps=6)
  resumed = trainer.train_and_evaluate(config, tmp_path / 'resumed')
  assert resumed['test'] == pytest.approx(full['test'])
  # Every consumer of the workdir restores the average: evaluate() reproduces training's figures.
  again = trainer.evaluate(config_base.load(tmp_path / 'full'), tmp_path / 'full')
  assert again['test'] == pytest.approx(full['test'], rel=1e-5)
  assert restore.params_key(tmp_path / 'full') == 'ema_params'
  exp = experiment.build_experiment(config, tmp_path / 'full')
  ckpt = workdir_lib.checkpoints(tmp_path / 'full', async_save=False)
  step = ckpt.latest_step()
  raw = ckpt.restore_subtree(step, restore.params_target(exp.spec, 'params'))['params']
  avg = ckpt.restore_subtree(step, restore.params_target(exp.spec, 'ema_params'))['ema_params']
  ckpt.close()
  diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(avg))]
  assert max(diffs) > 1e-4  # the average is not the last weights
  bad = tiny_config(**{'optimizer.ema_decay': 1.0})
  with pytest.raises(Exception, match='optimizer.ema_decay'):
    config_base.validate(bad, 8)


def test_steps_per_call_picks_chunks_that_skip_no_boundary():
  # every 7 (evaluation) and 4 (log) steps, 21 in all, chunks of 4: no boundary inside a chunk.
  step, calls = 0, []
  while step < 21:
    n = trainer._steps_this_call(step, 4, [7, 4], 21, None)  # pylint: disable=protected-access
    calls.append(n)
    step += n
  assert calls == [4, 1, 1, 1, 1, 4, 1, 1, 1, 1, 4, 1]
  assert trainer._steps_this_call(8, 4, [7, 4], 21, 10) == 1  # pylint: disable=protected-access
  assert trainer._steps_this_call(8, 1, [], 21, None) == 1  # pylint: disable=protected-access


def test_several_steps_per_call_train_like_one_step_per_call_and_resume_exactly(tmp_path):
  """lax.scan over 4 stacked batches gives the losses of 4 single steps, logs and evaluations at the
  same steps, the same final metrics; a run stopped inside that schedule resumes exactly."""
  base = {'train.num_epochs': 3, 'train.log_every': 4}
  one = trainer.train_and_evaluate(tiny_config(**base), tmp_path / 'one')
  four = trainer.train_and_evaluate(tiny_config(**base, **{'train.steps_per_call': 4}),
                                    tmp_path / 'four')
  a, b = read_log(tmp_path / 'one'), read_log(tmp_path / 'four')
  assert sorted(a) == sorted(b) == list(range(1, 22))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  assert four['test'] == pytest.approx(one['test'], rel=1e-4, abs=1e-6)
  config = tiny_config(**base, **{'train.steps_per_call': 4})
  trainer.train_and_evaluate(config, tmp_path / 'resumed', stop_after_steps=10)
  resumed = trainer.train_and_evaluate(config, tmp_path / 'resumed')
  assert resumed['test'] == pytest.approx(four['test'])
  c = read_log(tmp_path / 'resumed')
  np.testing.assert_allclose([c[s] for s in sorted(c)], [b[s] for s in sorted(b)], rtol=1e-6)
  with pytest.raises(ConfigError, match='train.steps_per_call'):
    trainer.train_and_evaluate(tiny_config(**{'train.steps_per_call': 0}), tmp_path / 'bad')
