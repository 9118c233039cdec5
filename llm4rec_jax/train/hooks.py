"""What plugs into the training loop: retrieval-augmented generation and text-encoder fine-tuning.

``train_and_evaluate`` keeps the step, the loop and the final evaluation; a feature that must act at
fixed moments of the loop is a :class:`LoopHook`, and the loop calls every hook, in list order, at:

1. ``init_state(state) -> state``: a fresh run's initial train state (not called on resume);
2. ``restore(payload)``: a resumed run, with what ``snapshot`` returned when its checkpoint was
   saved under the hook's ``checkpoint_item`` (not called when that checkpoint holds none);
3. per training step, before the batch is placed on the devices:
   ``train_batch(step, state, batch, content) -> batch`` (``step``: the step about to run);
4. per evaluation, after the step: ``refresh_state(step, state) -> state``, then
   ``before_eval(step, params, content)``, then ``eval_arrays(arrays) -> arrays`` for the
   validation (and monitored test) cases, then ``snapshot()`` for the checkpoint;
5. every other checkpoint (periodic, preemption, ``stop_after_steps``): ``snapshot()``;
6. after training, on the restored best checkpoint: ``final_content(step, state, content) ->
   content``; then the final evaluation calls ``before_eval`` and ``eval_arrays`` again
   (``evaluate`` of a saved checkpoint calls those two on :func:`evaluation_hooks`).

``content(state, content) -> content`` is the item content the model reads with ``state`` (the
fine-tuned text table), chained over the hooks by :func:`content_of` wherever the loop needs it.
The defaults do nothing, so a hook overrides only its moments. Hooks run on the host between jitted
calls; the one jitted step never calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4rec_jax.data.pipeline import EvalBatch
from llm4rec_jax.retrieval import context as context_lib
from llm4rec_jax.train import text_finetune
from llm4rec_jax.train.experiment import Experiment


class LoopHook:
  """A no-op at every moment of the loop (see the module doc for the order)."""

  # The checkpoint item ``snapshot`` fills (one of ``checkpointing.EXTRA_ITEMS``); None: none.
  checkpoint_item: str | None = None
  # True: the loop's validation metrics may differ from a fresh evaluation of the same parameters.
  changes_evaluation = False

  def init_state(self, state: dict[str, Any]) -> dict[str, Any]:
    return state

  def restore(self, payload: dict[str, np.ndarray]) -> None:
    pass

  def content(self, state: dict[str, Any], content: Any) -> Any:
    return content

  def train_batch(self, step: int, state: dict[str, Any], batch: dict[str, np.ndarray],
                  content: Any) -> dict[str, np.ndarray]:
    return batch

  def refresh_state(self, step: int, state: dict[str, Any]) -> dict[str, Any]:
    return state

  def before_eval(self, step: int, params: Any, content: Any) -> None:
    pass

  def eval_arrays(self, arrays: EvalBatch) -> EvalBatch:
    return arrays

  def snapshot(self) -> dict[str, np.ndarray] | None:
    return None

  def final_content(self, step: int, state: dict[str, Any], content: Any) -> Any:
    return content


class TextFinetuneHook(LoopHook):
  """A text encoder trained inside the recommender (:mod:`llm4rec_jax.train.text_finetune`): the
  state carries the catalog's text table, re-encoded before every evaluation and saved with it."""

  changes_evaluation = True

  def __init__(self, exp: Experiment, shardings: dict[str, Any]):
    self.exp = exp
    self.shardings = shardings
    self.refresh = text_finetune.make_refresh(exp.spec.graphdef, shardings['text_table'],
                                              exp.config.text_finetune.encode_batch_size)

  def init_state(self, state):
    return text_finetune.init_state(state, self.exp.config, self.exp.content, self.shardings)

  def content(self, state, content):
    return text_finetune.content_from_state(content, state)

  def refresh_state(self, step, state):
    # The whole catalog re-encoded by the live encoder; saved with this checkpoint.
    return text_finetune.refresh_state(state, self.refresh, self.exp.content, step,
                                       self.shardings['text_table_step'])

  def final_content(self, step, state, content):
    return text_finetune.checkpoint_content(self.exp.spec.graphdef, content, state, step,
                                            self.exp.config.text_finetune.encode_batch_size)


class RetrievalHook(LoopHook):
  """Retrieved context (:mod:`llm4rec_jax.retrieval.context`): training batches and evaluation
  cases gain ``context``; the index follows the item table every ``refresh_every`` steps and
  before every evaluation, and is checkpointed so a resumed run retrieves what the uninterrupted
  one did."""

  checkpoint_item = 'rag'
  changes_evaluation = True

  def __init__(self, exp: Experiment, refresh_every: int = 0):
    """``refresh_every``: training steps between index rebuilds (0: only at the first batch and
    before evaluations)."""
    self.graphdef = exp.spec.graphdef
    self.refresh_every = refresh_every
    self.retriever = context_lib.for_experiment(exp)

  def restore(self, payload):
    self.retriever.restore(payload)

  def train_batch(self, step, state, batch, content):
    self.retriever.maybe_refresh(step, self.refresh_every, self.graphdef, state['params'], content)
    return self.retriever.train_batch(batch)

  def before_eval(self, step, params, content):
    self.retriever.refresh_from_params(self.graphdef, params, content, step)

  def eval_arrays(self, arrays):
    return self.retriever.eval_arrays(arrays)

  def snapshot(self):
    return self.retriever.snapshot()


def training_hooks(exp: Experiment, shardings: dict[str, Any],
                   steps_per_epoch: int) -> list[LoopHook]:
  """The hooks ``exp.config`` asks for, in the order the loop calls them: the text table is
  refreshed before retrieval rebuilds its index from the content that table gives."""
  hooks: list[LoopHook] = []
  if exp.spec.cfg.text_encoder is not None:
    hooks.append(TextFinetuneHook(exp, shardings))
  if exp.config.retrieval.rag:
    hooks.append(RetrievalHook(exp, exp.config.retrieval.refresh_every or steps_per_epoch))
  return hooks


def evaluation_hooks(exp: Experiment) -> list[LoopHook]:
  """The hooks evaluating a saved checkpoint needs (its content is restored with its parameters)."""
  if exp.config.retrieval.rag:
    return [RetrievalHook(exp)]
  return []


def content_of(hooks: Sequence[LoopHook], state: dict[str, Any], content: Any) -> Any:
  """The item content the model reads with ``state``."""
  for hook in hooks:
    content = hook.content(state, content)
  return content


def eval_arrays(hooks: Sequence[LoopHook], arrays: EvalBatch) -> EvalBatch:
  for hook in hooks:
    arrays = hook.eval_arrays(arrays)
  return arrays


def snapshots(hooks: Sequence[LoopHook]) -> dict[str, dict[str, np.ndarray]]:
  """The hooks' checkpoint items (those with something to keep)."""
  out = {}
  for hook in hooks:
    if hook.checkpoint_item is not None:
      payload = hook.snapshot()
      if payload is not None:
        out[hook.checkpoint_item] = payload
  return out
