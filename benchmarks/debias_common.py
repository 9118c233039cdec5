"""Shared by the debiasing benchmarks: rank a trained workdir's best checkpoint with a popularity
adjustment of any strength (one trained model, many strengths), and the accuracy/popularity plot."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4rec_jax import beyond_accuracy, evaluation
from llm4rec_jax.debias import objectives, propensity
from llm4rec_jax.train import experiment


class TrainedModel:
  """A workdir's best checkpoint and its experiment (data, split, evaluation arrays)."""

  def __init__(self, config, workdir: str | pathlib.Path):
    self.config = config
    self.exp = experiment.build_experiment(config, pathlib.Path(workdir))
    self.step, self.params = experiment.restore_params(self.exp, 'best')
    counts = propensity.item_counts(self.exp.split.train, self.exp.dataset.num_items)
    self.log_pop = objectives.log_popularity(counts, self.exp.spec.cfg.vocab_size,
                                             smoothing=config.debias.smoothing)
    self.context = self.exp.beyond or beyond_accuracy.build_context(self.exp.dataset,
                                                                    self.exp.split.train)
    self._arrays = {}

  def arrays(self, which: str):
    if which not in self._arrays:
      self._arrays[which] = self.exp.eval_arrays(which)
    return self._arrays[which]

  def rank(self, which: str, strength: float, ks: Sequence[int] = (10,)
           ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(metrics incl. beyond-accuracy, ranks, tops) with scores ``-= strength * log popularity``
    on top of whatever the model's own config applies."""
    c = self.config
    bias = -strength * self.log_pop
    if self.exp.debias is not None and self.exp.debias.inference_bias is not None:
      bias = bias + np.asarray(self.exp.debias.inference_bias)
    rank_fn = evaluation.make_rank_fn(self.exp.spec.graphdef, exclude_seen=c.eval.exclude_seen,
                                      top_k=max(c.eval.ks), score_bias=bias)
    arrays = self.arrays(which)
    m, ranks, tops = evaluation.evaluate_arrays(rank_fn, self.params, arrays, c.eval.batch_size,
                                                self.exp.put_whole, c.eval.ks,
                                                content=self.exp.content)
    flat, _ = beyond_accuracy.summarize(self.context, tops, ranks, arrays.users[:len(ranks)], ks)
    return {**m, **flat}, ranks, tops


def plot_tradeoff(path: pathlib.Path, strengths: Sequence[float], ndcg: Sequence[float],
                  gini: Sequence[float], tail: Sequence[float], title: str) -> None:
  """NDCG@10 against Gini@10 and tail share@10, one point per adjustment strength."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, x, label in ((axes[0], gini, 'Gini of exposure @10 (lower = fairer exposure)'),
                       (axes[1], tail, 'tail-item share @10')):
    ax.plot(x, ndcg, 'o-')
    for s, xi, yi in zip(strengths, x, ndcg):
      ax.annotate(f'{s:g}', (xi, yi), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel('test NDCG@10')
    ax.grid(alpha=0.3)
  fig.suptitle(title + ' (labels: adjustment strength)')
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
