"""``Explainer`` / ``explain``: why a trained workdir recommends an item after a raw-id history.

Returns the attribution of every history item (and of the item's modalities for a content model, and
of the retrieved context items for a retrieval-augmented one), a grounded template sentence, and,
when ``WORKDIR/explainer/`` holds a trained generator
(``benchmarks/explain_text.py --save``), a generated sentence (greedy and beam search).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.model import text_encoder
from llm4rec_jax.data import registry
from llm4rec_jax.errors import DataError, Llm4RecError, UnknownIdError
from llm4rec_jax.explain import attribution, faithfulness, templates
from llm4rec_jax.explain import generator as gen
from llm4rec_jax.serving import Recommender


class Explainer:
  """A served model plus what explaining needs (item attributes, an optional text generator)."""

  def __init__(self, workdir: workdir_lib.PathLike, *, checkpoint: str = workdir_lib.AUTO,
               steps: int = 32,
               generator_dir: str | os.PathLike | None = None):
    """``workdir`` (and ``generator_dir``): local or any ``etils.epath`` path (e.g. gs://)."""
    self.workdir = workdir_lib.root(workdir)
    self.rec = Recommender(self.workdir, checkpoint=checkpoint)
    self.steps = steps
    self._items = None
    self.generator = None
    gdir = generator_dir or workdir_lib.path(self.workdir, workdir_lib.EXPLAINER)
    if gen.is_saved(gdir):
      tokenizer = text_encoder.load_tokenizer(text_encoder.default_model_dir())
      self.generator = gen.load(gdir, tokenizer)

  def item_table(self):
    """The dataset's item features (for shared attributes), or None when it cannot be loaded."""
    if self._items is None:
      try:
        self._items = registry.load(self.rec.config.data).items
      except (Llm4RecError, OSError):
        self._items = False
    return self._items or None

  def _labels(self, item: int) -> dict[str, list[str]]:
    table = self.item_table()
    if table is None or item >= table.num_rows:
      return {}
    return {f: [str(v) for v in field.labels(item)] for f, field in table.categorical.items()}

  def _name(self, item: int) -> str:
    title = self.rec.titles[item] if self.rec.titles else ''
    return title or self.rec.raw_ids[item]

  def explain(self, history: Sequence[str], item: str | None = None, *, top_n: int = 3,
              beam_size: int = 4) -> dict[str, Any]:
    """Why ``item`` (default: the top recommendation) follows ``history`` (raw ids, oldest
    first)."""
    if not history:
      raise DataError('history is empty: give at least one item id', field='history')
    ids = self.rec.encode(history)
    if item is None:
      item = self.rec.recommend(history, 1)['recommendations'][0]['item']
    if str(item) not in self.rec.index:
      raise UnknownIdError(f'unknown item id {item!r} (not in '
                           f'{workdir_lib.path(self.workdir, workdir_lib.CATALOG)})')
    target = self.rec.index[str(item)]
    max_len = self.rec.spec.cfg.max_len
    window = ids[-max_len:]
    inputs = faithfulness.delete_positions(window, [], max_len)[None]
    # A retrieval-augmented model reads retrieved items too: the same ones serving retrieves.
    rag = getattr(self.rec, 'rag', None)
    context = rag.context(inputs, [ids]) if rag is not None else None
    a = attribution.attribute_batch(self.rec.spec.graphdef, self.rec.params, inputs,
                                    np.asarray([target]), self.rec.content,
                                    None if context is None else np.asarray(context),
                                    steps=self.steps, batch_size=1)
    att = a.history[0, max_len - len(window):]
    total = max(float(np.abs(att).sum()), 1e-9)
    order = np.argsort(-att, kind='stable')
    items_out = [{'item': self.rec.raw_ids[int(window[p])], 'title': self._name(int(window[p])),
                  'position': int(p + len(ids) - len(window)), 'attribution': float(att[p]),
                  'share': float(att[p] / total)} for p in order]
    out: dict[str, Any] = {
        'item': str(item), 'title': self._name(target), 'score': float(a.score[0]),
        'baseline_score': float(a.baseline_score[0]), 'history': items_out,
        'checkpoint_step': self.rec.step}
    if a.context is not None:
      ctx = np.asarray(context)[0]  # [seq, C]
      out['retrieved_context'] = sorted(
          ({'item': self.rec.raw_ids[int(ctx[p, c])], 'title': self._name(int(ctx[p, c])),
            'attribution': float(a.context[0, p, c])}
           for p, c in zip(*np.nonzero(ctx))), key=lambda r: -r['attribution'])
    top_modality = None
    if a.modalities is not None:
      names = self.rec.spec.cfg.content.token_names
      out['modalities'] = {n: float(v) for n, v in zip(names, a.modalities[0])}
      top_modality = max(out['modalities'], key=out['modalities'].get).split(':')[-1]
    liked = [int(window[p]) for p in order[:top_n] if att[p] > 0][:2]
    shared = templates.shared_attributes(self._labels(target), [self._labels(i) for i in liked])
    first_only = not shared and len(liked) > 1
    if first_only:
      shared = templates.shared_attributes(self._labels(target), [self._labels(liked[0])])
    item_feats = []
    if self.generator is not None:
      item_feats = self.generator[2].get('item_features', [])
      item_feats = item_feats[target] if target < len(item_feats) else []
    out['template'] = templates.template_explanation(
        self._name(target), [self._name(i) for i in liked], shared, item_feats, top_modality,
        shared_by_first_only=first_only)
    if self.generator is not None:
      out['generated'] = self._generate(target, window, att, item_feats, beam_size)
    return out

  def _generate(self, target: int, window: np.ndarray, att: np.ndarray, item_feats: list[str],
                beam_size: int) -> dict[str, str]:
    model, codec, _ = self.generator
    cfg = model.cfg
    order = np.argsort(-att, kind='stable')[:cfg.history_len]
    hist = np.zeros((1, cfg.history_len), np.int32)
    weights = np.zeros((1, cfg.history_len), np.float32)
    hist[0, :len(order)] = window[order]
    weights[0, :len(order)] = att[order] / max(float(np.abs(att).sum()), 1e-9)
    feats = np.zeros((1, cfg.num_features), np.int32)
    fid = codec.word_ids(item_feats[:cfg.num_features]) if item_feats else []
    feats[0, :len(fid)] = fid
    # A raw history has no user id: the generator's user row 0 (never a training user) stands in.
    cond = {'user': jnp.zeros((1,), jnp.int32), 'item': jnp.asarray([target], jnp.int32),
            'features': jnp.asarray(feats), 'history': jnp.asarray(hist),
            'weights': jnp.asarray(weights)}
    from flax import nnx  # pylint: disable=import-outside-toplevel
    graphdef, params = nnx.split(model, nnx.Param)
    out = {}
    for name, beam in (('greedy', 1), ('beam', beam_size)):
      decode = gen.make_decoder(graphdef, max_len=cfg.max_text_len, beam_size=beam)
      out[name] = codec.decode(np.asarray(decode(params, cond)))[0]
    return out


def explain(workdir: workdir_lib.PathLike, history: Sequence[str], item: str | None = None, *,
            checkpoint: str = workdir_lib.AUTO, steps: int = 32) -> dict[str, Any]:
  """One-shot :meth:`Explainer.explain` (loads the model each call; keep an Explainer to reuse)."""
  return Explainer(workdir, checkpoint=checkpoint, steps=steps).explain(history, item)
