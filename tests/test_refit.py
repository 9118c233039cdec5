"""eval.refit_epochs: test is ranked by the chosen checkpoint refit on what is known at test."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

from llm4rec_jax import config_base
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import pipeline, splits
from llm4rec_jax.errors import CheckpointError, ConfigError
from llm4rec_jax.serving import Recommender
from llm4rec_jax.train import trainer


def test_refit_trains_on_the_known_sequences_and_changes_test_only(tmp_path, monkeypatch):
  c = tiny_config(**{'train.num_epochs': 1})
  plain = trainer.train_and_evaluate(c, tmp_path)
  seen = []
  make_windows = pipeline.make_windows

  def recording(seqs, *args, **kwargs):
    seen.append(list(seqs))
    return make_windows(seqs, *args, **kwargs)

  monkeypatch.setattr(pipeline, 'make_windows', recording)
  c.eval.refit_epochs = 2
  refit = trainer.evaluate(c, tmp_path)
  assert refit['valid'] == pytest.approx(plain['valid'])  # validation: the chosen checkpoint
  assert refit['test'] != pytest.approx(plain['test'])
  # The refit's data: each test user's history (training sequence + validation target), no test
  # target; two epochs of its windows at the schedule's last rate.
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  split = experiment.build_experiment(c, tmp_path / 'again').split
  (seqs,) = seen
  for i, user in enumerate(split.test.users):
    np.testing.assert_array_equal(seqs[user], split.test.history(i))
    assert seqs[user][-1] == split.valid.targets[split.valid.users == user][0]
  windows, _ = make_windows(splits.known_sequences(split.train, split.test), c.data.max_len)
  record = refit['refit']
  assert record['steps'] == 2 * (len(windows) // c.train.batch_size)
  last_rate = c.optimizer.learning_rate * c.optimizer.min_lr_ratio
  assert record['learning_rate'] == pytest.approx(last_rate)
  assert np.isfinite(record['final_loss'])
  # The refit parameters are saved: ranking test with them gives the same figures; evaluating the
  # refit neither refits it again (the config still asks for a refit) nor removes it.
  assert workdir_lib.read_refit(tmp_path)['steps'] == record['steps']
  again = trainer.evaluate(c, tmp_path, checkpoint='refit')
  assert again['test'] == refit['test'] and 'refit' not in again
  assert workdir_lib.read_refit(tmp_path)['steps'] == record['steps']
  # Serving's default ('auto') is the refit, the model test was ranked with; 'auto' evaluates it.
  served, best = Recommender(tmp_path), Recommender(tmp_path, checkpoint='best')
  saved = Recommender(tmp_path, checkpoint='refit')
  for a, b in zip(jax.tree.leaves(served.params), jax.tree.leaves(saved.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(served.params), jax.tree.leaves(best.params)))
  assert trainer.evaluate(c, tmp_path, checkpoint='auto')['test'] == refit['test']
  # A side evaluation (seen items ranked, record=False) ranks the refit and changes no file.
  files = {f: (tmp_path / f).read_bytes() for f in ('metrics.json', 'refit/refit.json')}
  side = trainer.evaluate(c, tmp_path, checkpoint='auto', exclude_seen=False, record=False)
  assert 'refit' not in side and side['test'] != refit['test']
  assert {f: (tmp_path / f).read_bytes() for f in files} == files
  c.eval.refit_epochs = 0
  assert trainer.evaluate(c, tmp_path, checkpoint='refit')['test'] == refit['test']
  assert workdir_lib.read_refit(tmp_path) is not None
  trainer.evaluate(c, tmp_path)  # an evaluation of another checkpoint without refit removes it
  assert workdir_lib.read_refit(tmp_path) is None
  with pytest.raises(CheckpointError, match='holds no refit'):
    trainer.evaluate(c, tmp_path, checkpoint='refit')
  # No refit left: 'auto' serves the best checkpoint.
  for a, b in zip(jax.tree.leaves(Recommender(tmp_path).params), jax.tree.leaves(best.params)):
    np.testing.assert_array_equal(a, b)


def test_refit_steps_are_bounded_by_max_steps(tmp_path):
  c = tiny_config(**{'train.max_steps': 3, 'eval.refit_epochs': 2})
  assert trainer.train_and_evaluate(c, tmp_path)['refit']['steps'] == 3


def test_refit_config_is_checked():
  with pytest.raises(ConfigError, match='refit_epochs'):
    config_base.validate(tiny_config(**{'eval.refit_epochs': -1}))
  with pytest.raises(ConfigError, match='refit_epochs'):
    config_base.validate(tiny_config(**{'eval.refit_epochs': 1, 'retrieval.rag': True}))
