"""Resource failures give a clear error naming what was too big and the setting to change."""

import dataclasses
import errno

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from llm4rec_jax.errors import CheckpointError, ConfigError
from llm4rec_jax.train import checkpointing, memory, trainer
from llm4rec_jax.train import experiment


def test_memory_check_names_the_largest_term_and_its_setting():
  terms = {'evaluation inputs': (2 * memory.GB, 'data.max_len'),
           'training logits': (9 * memory.GB, 'loss.chunk_targets')}
  memory.check(terms, available=20 * memory.GB)  # fits
  with pytest.raises(ConfigError, match=r'config\.loss\.chunk_targets: .*11\.0 GB.*8\.0 GB is '
                                        r'available.*training logits \(9\.0 GB\)'):
    memory.check(terms, available=8 * memory.GB)


def test_a_run_that_cannot_fit_stops_before_allocating(tmp_path, monkeypatch):
  """With almost no memory free the run stops at the check, writing no checkpoint."""
  monkeypatch.setattr(memory, 'available_bytes', lambda: 1 << 20)
  config = tiny_config(**{'loss.chunk_targets': 0})
  with pytest.raises(ConfigError, match='host memory'):
    trainer.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())


def test_run_memory_counts_the_chunked_logits():
  config = tiny_config()
  exp = experiment.build_experiment(config, '/tmp/unused')
  whole = experiment.run_memory(exp, max_targets=4096)['training logits'][0]
  assert whole == 3 * 4 * 4096 * exp.spec.cfg.vocab_size  # small catalog: no chunking
  config.loss.chunk_targets = 128  # the experiment holds a frozen copy: give it the new one
  chunked = dataclasses.replace(exp, config=ml_collections.FrozenConfigDict(config))
  assert experiment.run_memory(chunked, max_targets=4096)['training logits'][0] == whole // 32


def test_disk_full_while_checkpointing_is_a_checkpoint_error(tmp_path, monkeypatch):
  ckpt = checkpointing.Checkpointer(tmp_path / 'ckpt', async_save=False)

  def full(*args, **kwargs):
    try:
      raise OSError(errno.ENOSPC, 'No space left on device')
    except OSError as e:
      raise RuntimeError('orbax wrapped it') from e

  monkeypatch.setattr(ckpt._mngr, 'save', full)  # pylint: disable=protected-access
  with pytest.raises(CheckpointError, match=r'no space left .*train\.keep_checkpoints'):
    ckpt.save(1, {'x': np.zeros(3)})
  assert memory.is_disk_full(OSError(errno.ENOSPC, 'full'))
  assert not memory.is_disk_full(OSError(errno.ENOENT, 'missing'))
