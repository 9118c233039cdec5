"""Several seeds (and peak learning rates) trained at once (``train_replicas``): each replica
equals its separate run."""

import json

import numpy as np
import pytest

from conftest import read_log, tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import replicas, trainer

# vmap batches the replicas' matrix products into one, which XLA may tile and reduce in another
# order than the separate run's: the losses agree to float rounding, not bit for bit.
RTOL = 1e-5


def _events(workdir, kind):
  lines = (workdir / 'events.jsonl').read_text().splitlines()
  return [e for e in map(json.loads, lines) if e['event'] == kind]


def _rates_logged(workdir):
  lines = (workdir / 'train_log.jsonl').read_text().splitlines()
  return [r['learning_rate'] for r in map(json.loads, lines)]


def _assert_same_run(replica_dir, separate_dir, replica, separate):
  a, b = read_log(separate_dir), read_log(replica_dir)
  assert sorted(a) == sorted(b)
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=RTOL)
  assert replica['step'] == separate['step']  # the best step
  for which in ('valid', 'test'):
    assert replica[which] == pytest.approx(separate[which], rel=1e-4, abs=1e-6)
  assert [e['step'] for e in _events(replica_dir, 'eval')] == \
         [e['step'] for e in _events(separate_dir, 'eval')]


def test_replicas_equal_separate_runs_and_evaluate_reads_them(tmp_path):
  config = tiny_config(**{'train.eval_every': 5})
  dirs = [tmp_path / 'seed_0', tmp_path / 'seed_1']
  results = replicas.train_replicas(config, dirs, [0, 1])
  for seed, workdir, result in zip((0, 1), dirs, results):
    separate_dir = tmp_path / f'separate_{seed}'
    separate = trainer.train_and_evaluate(tiny_config(**{'train.eval_every': 5, 'seed': seed}),
                                          separate_dir)
    _assert_same_run(workdir, separate_dir, result, separate)
    saved = config_base.load(workdir)
    assert saved.seed == seed
    assert json.loads((workdir / 'metrics.json').read_text())['test'] == result['test']
    again = trainer.evaluate(saved, workdir)
    assert again['step'] == result['step']
    assert again['test'] == pytest.approx(result['test'], rel=1e-5)
  # Different seeds, different runs: the replicas did not share an initialisation or a batch order.
  a, b = read_log(dirs[0]), read_log(dirs[1])
  assert a[1] != b[1]


def test_a_learning_rate_sweep_equals_separate_runs_at_those_rates(tmp_path):
  """One seed at two peak rates, neither the config's (so both replicas scale their updates), with
  weight decay on: each replica is the separate run of its rate, logs that rate and records it."""
  overrides = {'train.eval_every': 5, 'optimizer.weight_decay': 0.1}
  config = tiny_config(**overrides)
  rates = [config.optimizer.learning_rate * 3, config.optimizer.learning_rate / 2]
  dirs = [tmp_path / replicas.replica_name(0, r) for r in rates]
  results = replicas.train_replicas(config, dirs, [0, 0], learning_rates=rates)
  for rate, workdir, result in zip(rates, dirs, results):
    separate_dir = tmp_path / f'separate_{rate:g}'
    separate = trainer.train_and_evaluate(
        tiny_config(**overrides, **{'optimizer.learning_rate': rate}), separate_dir)
    _assert_same_run(workdir, separate_dir, result, separate)
    assert config_base.load(workdir).optimizer.learning_rate == rate
    logged, alone = (_rates_logged(d) for d in (workdir, separate_dir))
    np.testing.assert_allclose(logged, alone, rtol=1e-6)
    assert max(logged) == pytest.approx(rate, rel=1e-6)
    assert _events(workdir, 'start')[0]['learning_rate'] == rate
  # The same seed, so the same initialisation and batches: only the rate tells the two apart.
  a, b = read_log(dirs[0]), read_log(dirs[1])
  assert a[1] == b[1] and a[max(a)] != b[max(b)]
  assert config_base.load(dirs[0]).seed == config_base.load(dirs[1]).seed == 0
  with pytest.raises(ConfigError, match=f'{dirs[0]} holds the run of learning rate'):
    replicas.train_replicas(config, dirs, [0, 0], learning_rates=rates[::-1])


def test_each_replica_stops_early_on_its_own_and_a_killed_run_resumes_exactly(tmp_path):
  """Patience 1: seed 0 stops at step 18 (best 16), seed 1 at step 28 (best 26), as their separate
  runs do. A run killed at step 21, after seed 0 stopped, resumes (seed 0 stays stopped) to the
  uninterrupted run's losses and metrics."""
  overrides = {'train.num_epochs': 4, 'train.eval_every': 2, 'train.patience': 1,
               'optimizer.learning_rate': 3e-2}
  config = tiny_config(**overrides)
  full_dirs = [tmp_path / 'full_0', tmp_path / 'full_1']
  full = replicas.train_replicas(config, full_dirs, [0, 1])
  assert [r['step'] for r in full] == [16, 26]
  assert [_events(d, 'train_done')[-1]['step'] for d in full_dirs] == [18, 28]
  for seed in (0, 1):
    separate = trainer.train_and_evaluate(tiny_config(**overrides, seed=seed),
                                          tmp_path / f'separate_{seed}')
    _assert_same_run(full_dirs[seed], tmp_path / f'separate_{seed}', full[seed], separate)

  dirs = [tmp_path / 'resumed_0', tmp_path / 'resumed_1']
  stopped = replicas.train_replicas(config, dirs, [0, 1], stop_after_steps=21)
  assert stopped[0]['step'] == 16 and 'test' in stopped[0]  # finished, as its own run would be
  assert stopped[1] == {'stopped': 'stop_after_steps', 'step': 21}
  with pytest.raises(ConfigError, match='some replica workdirs hold checkpoints and some none'):
    replicas.train_replicas(config, [dirs[1], tmp_path / 'empty'], [1, 2])
  with pytest.raises(ConfigError, match=f'{full_dirs[0]} holds the run of seed 0, not 5'):
    replicas.train_replicas(config, [dirs[1], full_dirs[0]], [1, 5])
  resumed = replicas.train_replicas(config, dirs, [0, 1])
  for d, full_dir, a, b in zip(dirs, full_dirs, full, resumed):
    x, y = read_log(full_dir), read_log(d)
    assert sorted(x) == sorted(y)
    np.testing.assert_allclose([y[s] for s in sorted(y)], [x[s] for s in sorted(x)], rtol=1e-6)
    assert b['step'] == a['step'] and b['test'] == pytest.approx(a['test'])


class _Checkpoints:
  """What ``_resume`` reads of a workdir's checkpoints: the latest step and its progress."""

  def __init__(self, latest, evals_since_best=0):
    self.latest, self.evals_since_best = latest, evals_since_best

  def latest_step(self):
    return self.latest

  def progress(self, step):
    assert step == self.latest
    return {'best': 0.1, 'best_step': step, 'evals_since_best': self.evals_since_best}


def test_resume_needs_the_running_replicas_at_one_step(tmp_path):
  dirs = [tmp_path / 'a', tmp_path / 'b', tmp_path / 'c']
  resume = replicas._resume  # pylint: disable=protected-access
  assert resume([_Checkpoints(None)] * 3, dirs, [0, 1, 2], None, 1) == (0, [None] * 3,
                                                                        [False] * 3)
  # c stopped early (patience 1) at step 8; a and b go on from 12.
  ckpts = [_Checkpoints(12), _Checkpoints(12), _Checkpoints(8, evals_since_best=1)]
  assert resume(ckpts, dirs, [0, 1, 2], None, 1) == (12, [12, 12, 8], [False, False, True])
  with pytest.raises(ConfigError, match=f'different steps .*{dirs[2]}: step 8'):
    resume(ckpts, dirs, [0, 1, 2], None, 2)  # with patience 2, c has not stopped
  with pytest.raises(ConfigError, match=f'some none .*{dirs[1]}: none'):
    resume([_Checkpoints(12), _Checkpoints(None), _Checkpoints(12)], dirs, [0, 1, 2], None, 1)


@pytest.mark.parametrize('field,value', [
    ('train.steps_per_call', 2), ('retrieval.rag', True), ('text_finetune.enabled', True),
    ('model.lora_rank', 4), ('model.backbone', '/models/qwen'), ('model.head', 'semantic_id'),
    ('data.name', 'records:/data/prepared')])
def test_what_replicas_cannot_train_is_refused_naming_the_field(tmp_path, field, value):
  with pytest.raises(ConfigError, match=f'config.{field}'):
    replicas.train_replicas(tiny_config(**{field: value}), [tmp_path / 'a', tmp_path / 'b'], [0, 1])
  assert not (tmp_path / 'a').exists()  # refused before anything is written


def test_seeds_and_workdirs_must_pair_up(tmp_path):
  with pytest.raises(ConfigError, match='repeat'):
    replicas.train_replicas(tiny_config(), [tmp_path / 'a', tmp_path / 'b'], [0, 0])
  with pytest.raises(ConfigError, match='2 seeds for 1 workdirs'):
    replicas.train_replicas(tiny_config(), [tmp_path / 'a'], [0, 1])


@pytest.mark.parametrize('seeds,rates,message', [
    ([0, 0], [1e-3], 'config.optimizer.learning_rate: 1 learning rates for 2 seeds'),
    ([0, 1], [1e-3, 0.0], 'include 0.0: each must be positive'),
    ([0, 1], [1e-3, -1e-3], 'include -0.001: each must be positive'),
    ([0, 1], [1e-3, float('nan')], 'include nan: each must be positive'),
    ([0, 1, 0], [1e-3, 1e-3, 1e-3], 'seed 0 with learning rate 0.001 is given twice'),
])
def test_bad_learning_rates_are_refused_before_anything_is_written(tmp_path, seeds, rates,
                                                                   message):
  dirs = [tmp_path / str(i) for i in range(len(seeds))]
  with pytest.raises(ConfigError, match=message):
    replicas.train_replicas(tiny_config(), dirs, seeds, learning_rates=rates)
  assert not any(d.exists() for d in dirs)
