"""The training loop calls its hooks at the moments ``train/hooks.py`` documents, in that order, with
the steps it names; a hook's snapshot travels with every checkpoint back to the resumed run."""

import numpy as np
import pytest

from conftest import tiny_config
from llm4rec_jax.train import hooks as hooks_lib
from llm4rec_jax.train import trainer
from llm4rec_jax.train.checkpointing import Checkpointer


class Recorder(hooks_lib.LoopHook):
  """Records each moment with its step; its snapshot is the number of steps trained so far."""

  checkpoint_item = 'rag'
  changes_evaluation = True  # the final evaluation ranks valid and test afresh

  def __init__(self):
    self.events = []
    self.trained = None

  def init_state(self, state):
    self.events.append(('init_state', int(state['step'])))
    return state

  def restore(self, payload):
    self.trained = int(payload['trained'])
    self.events.append(('restore', self.trained))

  def train_batch(self, step, state, batch, content):
    assert int(state['step']) == step  # the state the step is about to update
    self.trained = step + 1
    self.events.append(('train_batch', step))
    return batch

  def refresh_state(self, step, state):
    assert int(state['step']) == step
    self.events.append(('refresh_state', step))
    return state

  def before_eval(self, step, params, content):
    self.events.append(('before_eval', step))

  def eval_arrays(self, arrays):
    self.events.append(('eval_arrays', None))
    return arrays

  def snapshot(self):
    self.events.append(('snapshot', self.trained))
    return {'trained': np.asarray(self.trained, np.int64)}

  def final_content(self, step, state, content):
    self.events.append(('final_content', step))
    return content


def test_hooks_see_the_documented_moments_and_steps(tmp_path, monkeypatch):
  recorders = []

  def training_hooks(exp, shardings, steps_per_epoch):
    recorders.append(Recorder())
    return [recorders[-1]]

  monkeypatch.setattr(hooks_lib, 'training_hooks', training_hooks)
  c = tiny_config(**{'train.max_steps': 5, 'train.eval_every': 3})
  assert trainer.train_and_evaluate(c, tmp_path, stop_after_steps=4)['step'] == 4
  evaluation = [('before_eval', 3), ('eval_arrays', None), ('snapshot', 3)]
  assert recorders[0].events == ([('init_state', 0)] + [('train_batch', s) for s in range(3)]
                                 + [('refresh_state', 3)] + evaluation
                                 + [('train_batch', 3), ('snapshot', 4)])

  results = trainer.train_and_evaluate(c, tmp_path)
  best = results['step']
  events = recorders[1].events
  assert events[:6] == [('restore', 4), ('train_batch', 4), ('refresh_state', 5),
                        ('before_eval', 5), ('eval_arrays', None), ('snapshot', 5)]
  assert best in (3, 5) and events[6:8] == [('final_content', best), ('before_eval', best)]
  assert events[8:] == [('eval_arrays', None)] * len(events[8:]) and len(events[8:]) >= 2


def test_checkpoint_refuses_an_unregistered_extra_item(tmp_path):
  ckpt = Checkpointer(tmp_path, async_save=False)
  with pytest.raises(ValueError, match="'notes' is not one of checkpointing.EXTRA_ITEMS"):
    ckpt.save(1, {'x': np.zeros(3)}, extras={'notes': {'x': np.zeros(3)}})
  with pytest.raises(ValueError, match="'notes' is not one of"):
    ckpt.restore_extra(1, 'notes')
  ckpt.close()
