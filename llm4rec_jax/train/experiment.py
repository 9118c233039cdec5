"""What a config builds before training: the data split, the mesh, the model spec, the evaluation
arrays (:class:`Experiment`, :func:`build_experiment`), and what the run will allocate.

``train_and_evaluate``, ``evaluate`` and the benchmarks that re-score a trained workdir
(``restore_params``) all start here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from llm4rec_jax import beyond_accuracy, config_base, evaluation, partitioning
from llm4rec_jax import transitions as transitions_lib
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.content import title_tokens as titles
from llm4rec_jax.data import content as content_lib
from llm4rec_jax.data import pipeline, records, registry, splits
from llm4rec_jax.data.prepare import source as records_source
from llm4rec_jax.data.splits import Split
from llm4rec_jax.debias import objectives as debias_objectives
from llm4rec_jax.debias import propensity
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model.semantic_ids import SemanticIds
from llm4rec_jax.train import losses, restore, semantic_codes, text_finetune
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train.state import model_config, put_content


@dataclasses.dataclass
class Experiment:
  """What a config builds: the data split, the mesh, the model spec and the evaluation arrays.

  With ``config.data.name = 'records:DIR'`` the dataset is a ``records.RecordsDataset`` and there is
  no in-memory split (``split`` is None): every process reads its own training windows and
  evaluation cases from the prepared shards (``records`` is then the prepared directory).
  """
  config: ml_collections.ConfigDict
  workdir: epath.Path  # local, or any etils.epath path (gs://)
  dataset: Any
  split: Split | None
  mesh: jax.sharding.Mesh
  spec: state_lib.ModelSpec
  content_np: content_lib.ItemContent | None = None  # host arrays (saved with the workdir)
  content: content_lib.ItemContent | None = None  # the same, on device, rows sharded as 'vocab'
  semantic_ids: SemanticIds | None = None  # item codes of the semantic-ID head
  debias: debias_objectives.DebiasObjective | None = None  # config.debias (None = off)
  beyond: beyond_accuracy.Context | None = None  # for the beyond-accuracy metrics
  timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds of setup phases
  # Successor tables by the sequences they count ('train', or 'valid' / 'test' under
  # eval.transition_counts='known'), built on first use: (on device, on the host).
  transitions: dict[str, tuple[tuple[jax.Array, ...], transitions_lib.SuccessorTable]] = (
      dataclasses.field(default_factory=dict))

  @property
  def rules(self):
    return self.config.mesh.rules

  @property
  def records(self) -> records_source.Prepared | None:
    """The prepared directory when training from records, else None."""
    return self.dataset.prepared if isinstance(self.dataset, records.RecordsDataset) else None

  def put(self, batch: dict[str, np.ndarray], *, stacked: bool = False) -> dict[str, jax.Array]:
    """A training batch: this process's block of rows (see ``pipeline.train_dataset``);
    ``stacked``: ``[k, rows, ...]``, k batches for ``train.steps_per_call``."""
    return partitioning.to_global(batch, self.mesh, self.rules, leading=int(stacked))

  def put_whole(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """An evaluation batch, the same whole batch on every process."""
    return partitioning.to_global(batch, self.mesh, self.rules, whole=True)

  def eval_arrays(self, which: str) -> pipeline.EvalBatch:
    """'valid', 'test', or 'test_cold' (test cases whose target was held out of training).

    From records: only this process's cases, in batches of ``eval.batch_size / process_count`` rows
    (its block of every global batch; see :meth:`evaluate_arrays`).
    """
    if self.records is not None:
      examples = records_source.eval_examples(self.records, which,
                                              process_index=jax.process_index(),
                                              process_count=jax.process_count(),
                                              max_cases=self.config.eval.get('max_cases', 0))
      return pipeline.eval_arrays(examples, self.config.data.max_len,
                                  self.config.eval.batch_size // jax.process_count())
    examples = self.split.valid if which == 'valid' else self.split.test
    if which == 'test_cold':
      examples = splits.subset(examples, np.isin(examples.targets, self.split.cold_items))
    examples = splits.sample(examples, self.config.eval.get('max_cases', 0))
    return pipeline.eval_arrays(examples, self.config.data.max_len, self.config.eval.batch_size)

  def evaluate_arrays(self, rank_fn, params, arrays: pipeline.EvalBatch, content=None):
    """(metrics, ranks, top items) of ``arrays`` (from :meth:`eval_arrays`): whole batches on every
    process, or, from records, each process's own cases as its block of every global batch."""
    c = self.config
    if self.records is not None:
      return evaluation.evaluate_process_blocks(rank_fn, params, arrays,
                                                c.eval.batch_size // jax.process_count(), self.put,
                                                c.eval.ks, content=content)
    return evaluation.evaluate_arrays(rank_fn, params, arrays, c.eval.batch_size, self.put_whole,
                                      c.eval.ks, content=content)

  def transition_source(self, which: str) -> str:
    """Which sequences the prior of ``which`` ('valid', 'test', 'test_cold') counts: the training
    sequences, or under ``eval.transition_counts='known'`` everything known when its cases are
    ranked (``splits.known_sequences``: at test, the validation targets too)."""
    if self.config.eval.get('transition_counts', 'train') == 'train':
      return 'train'
    return 'valid' if which == 'valid' else 'test'

  def transition_table(self, which: str = 'valid') -> transitions_lib.SuccessorTable:
    """The host successor table of ``which``'s prior (built on first use, kept for the run)."""
    return self._transitions(self.transition_source(which))[1]

  def _transitions(self, source: str):
    if source not in self.transitions:
      e = self.config.eval
      window = e.get('transition_window', 1)
      seqs = (self.split.train if source == 'train' else splits.known_sequences(
          self.split.train, self.split.valid if source == 'valid' else self.split.test))
      table = transitions_lib.successor_table(  # 64 followers an item per step of the window
          seqs, self.spec.cfg.vocab_size, max_successors=64 * window, window=window,
          history=e.get('transition_history', 1), decay=e.get('transition_decay', 1.0))
      self.transitions[source] = (tuple(jax.device_put(a, self.spec.replicated)
                                        for a in (table.ids, table.weights, table.scales())), table)
    return self.transitions[source]

  def release_transitions(self, source: str) -> None:
    """Drops the successor table of ``source`` (on device and on the host): under
    ``eval.transition_counts='known'`` validation's, once validation is ranked, so that one table at
    a time is on the device."""
    self.transitions.pop(source, None)

  def rank_fn(self, exclude_seen: bool | None = None, transition_weight: float = 0.0,
              which: str = 'valid'):
    """The jitted ranking of evaluation; ``transition_weight`` > 0 blends in the transitions of
    each case's newest items (``llm4rec_jax.transitions``, ``eval.transition_*``), counted over the
    sequences :meth:`transition_source` names for ``which``."""
    exclude = self.config.eval.exclude_seen if exclude_seen is None else exclude_seen
    trie = None
    if self.semantic_ids is not None:
      trie = jax.device_put(self.semantic_ids.trie(), self.spec.replicated)
    tables = self._transitions(self.transition_source(which))[0] if transition_weight else None
    return evaluation.make_rank_fn(self.spec.graphdef, exclude_seen=exclude,
                                   top_k=max(self.config.eval.ks), trie=trie,
                                   beam_size=self.config.semantic_ids.beam_size,
                                   score_bias=self.debias.inference_bias if self.debias else None,
                                   transitions=tables,
                                   transition_weight=float(transition_weight))


def build_experiment(config: ml_collections.ConfigDict, workdir: workdir_lib.PathLike) -> Experiment:
  """Validates the config, loads and splits the data, builds the mesh and the model spec.

  The experiment holds a frozen copy of the validated config: nothing after validation can change
  it (what is derived from it, e.g. the vocabulary size, lives in the model spec).
  """
  config_base.validate(config, jax.device_count())
  config = ml_collections.FrozenConfigDict(config)
  workdir = workdir_lib.root(workdir)
  if records.is_records(config.data.name):
    return _records_experiment(config, workdir)
  t0 = time.perf_counter()
  ds = registry.load(config.data)
  t1 = time.perf_counter()
  split = registry.split(ds, config.data)
  timings = {'load_seconds': t1 - t0, 'split_seconds': time.perf_counter() - t1}
  mesh = partitioning.make_mesh(config.mesh)
  cfg = model_config(config, ds.num_items, mesh)
  debias = debias_objectives.build(config, ds, split.train, cfg.vocab_size)
  if debias is not None and debias.fairness == 'adversarial':
    cfg = dataclasses.replace(cfg, adversary_classes=debias.num_groups)
  beyond = (beyond_accuracy.build_context(ds, split.train, head_fraction=config.debias.head_fraction,
                                          group_attributes=config.debias.group_attributes)
            if config.debias.beyond_accuracy else None)
  train_items = np.unique(np.concatenate([s for s in split.train if len(s)]))
  content_np, content_spec = content_lib.load_item_content(config, ds.items, cfg.vocab_size,
                                                           train_items)
  cfg = dataclasses.replace(cfg, content=content_spec)
  if cfg.title_tokens:
    tokens, table = _title_arrays(config, workdir, ds.items, cfg.vocab_size, mesh)
    content_np = dataclasses.replace(content_np or content_lib.ItemContent(),
                                     title_tokens=tokens, title_table=table)
  if text_finetune.enabled(config):
    cfg = dataclasses.replace(cfg, text_encoder=text_finetune.encoder_config(config))
  sid = None
  if cfg.head == 'semantic_id':
    sid = semantic_codes.load_or_build(config, workdir, ds.items,
                                       write=jax.process_index() == 0)
    content_np = dataclasses.replace(content_np or content_lib.ItemContent(),
                                     codes=semantic_codes.code_rows(sid, cfg.vocab_size))
    cfg = dataclasses.replace(cfg, codebook_sizes=sid.codebook_sizes)
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  content = (put_content(content_np, mesh, config.mesh.rules)
             if content_np is not None and (cfg.uses_content or sid is not None
                                            or cfg.title_tokens) else None)
  return Experiment(config, workdir, ds, split, mesh, spec, content_np, content, sid, debias,
                    beyond, timings)


def _title_arrays(config: ml_collections.ConfigDict, workdir: epath.Path, items: Any,
                  vocab_size: int, mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """(title tokens, title table) of ``model.title_tokens``, from the backbone checkpoint; when its
  directory is gone, the arrays a run saved with the workdir's content (so evaluation needs no
  checkpoint files)."""
  if not (epath.Path(config.model.backbone) / 'config.json').is_file():
    spec = workdir_lib.read_content_spec(workdir)
    saved = workdir_lib.read_content(workdir, spec) if spec is not None else None
    if saved is not None and saved.title_tokens is not None:
      return saved.title_tokens, saved.title_table
  # The title table's rows are sharded like the catalog's.
  return titles.build_title_tokens(config.model, config.data.max_len, items, vocab_size,
                                   128 * state_lib.vocab_shards(config, mesh))


def _records_experiment(config: ml_collections.ConfigDict, workdir: epath.Path) -> Experiment:
  """The experiment of a prepared directory (``records:DIR``): sizes and item ids only, no split."""
  records.check_config(config)
  for field, size in (('train.batch_size', config.train.batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    if size % jax.process_count():
      raise ConfigError(field, f'{size} is not divisible by the {jax.process_count()} processes')
  if config.debias.beyond_accuracy:
    # On by default; it needs every user's training items on one host.
    logging.warning('debias.beyond_accuracy is skipped when training from %s', config.data.name)
  t0 = time.perf_counter()
  ds = registry.load(config.data)
  timings = {'load_seconds': time.perf_counter() - t0, 'split_seconds': 0.0}
  mesh = partitioning.make_mesh(config.mesh)
  cfg = model_config(config, ds.num_items, mesh)
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  return Experiment(config, workdir, ds, None, mesh, spec, timings=timings)


def auto_max_targets(windows: np.ndarray, batch_size: int) -> int:
  """A static per-batch target budget that a random batch exceeds with negligible probability."""
  counts = ((windows[:, 1:] > 0) & (windows[:, :-1] > 0)).sum(axis=1).astype(np.float64)
  budget = counts.mean() * batch_size + 6.0 * counts.std() * math.sqrt(batch_size) + 64
  budget = int(math.ceil(budget / 128) * 128)
  return min(budget, batch_size * (windows.shape[1] - 1))


def run_memory(exp: Experiment, max_targets: int) -> dict[str, tuple[int, str]]:
  """The largest allocations still to come in a run, (bytes, the setting that sizes them), for
  :func:`memory.check`. Device-side terms count only on the CPU backend, where device memory is
  host memory (accelerator memory is what ``llm4rec_jax.aot`` checks)."""
  c, vocab = exp.config, exp.spec.cfg.vocab_size
  if exp.records is not None:  # this process's share of the cases
    eligible = int((exp.records.lengths >= 3).sum())
    cases = 2 * -(-min(eligible, c.eval.get('max_cases', 0) or eligible) // jax.process_count())
  else:
    cases = sum(min(len(e), c.eval.get('max_cases', 0) or len(e))
                for e in (exp.split.valid, exp.split.test))
  terms = {'evaluation inputs': (cases * c.data.max_len * 4, 'data.max_len')}
  if jax.default_backend() == 'cpu':
    chunk = c.loss.get('chunk_targets', -1)
    rows = losses.auto_chunk_targets(max_targets, vocab) if chunk < 0 else chunk
    # Logits, their gradient and the softmax in between.
    terms['training logits'] = (3 * 4 * (rows or max_targets) * vocab,
                                'loss.chunk_targets' if chunk >= 0 else 'train.batch_size')
    terms['evaluation scores'] = (4 * 4 * c.eval.batch_size * vocab, 'eval.batch_size')
    # Parameters, gradients and two Adam moments.
    terms['parameters and optimizer state'] = (4 * 4 * exp.spec.num_params(), 'model.d_model')
  return terms




def write_catalog(exp: Experiment) -> None:
  """The workdir's catalog (raw ids, titles, training counts) and content files, for serving."""
  items = exp.dataset.items
  titles = items.text.get('title')
  payload = {'raw_ids': [str(r) for r in items.raw_ids],
             'titles': list(titles) if titles is not None else None,
             'num_items': exp.dataset.num_items}
  if exp.split is not None:  # records: no process holds every training sequence, so none
    # Interactions per item, for serving's popularity adjustment (adjust_strength).
    payload['train_counts'] = propensity.item_counts(
        exp.split.train, exp.dataset.num_items).astype(int).tolist()
  workdir_lib.write_catalog(exp.workdir, payload)
  if exp.content_np is not None and exp.content is not None:
    # Serving needs the content arrays too (it never reads the dataset).
    if exp.spec.cfg.text_encoder is not None:
      workdir_lib.write_encoder_config(exp.workdir, exp.spec.cfg.text_encoder)
    workdir_lib.write_content(exp.workdir, exp.content_np,
                              exp.spec.cfg.content or content_lib.ContentSpec())




def restore_params(exp: Experiment, checkpoint: str = 'best') -> tuple[int, Any]:
  """(step, parameters) of a checkpoint of ``exp.workdir`` ('best', 'latest' or a step number);
  with a fine-tuned text encoder, ``exp.content`` becomes that checkpoint's item text table."""
  chunk = (exp.config.text_finetune.encode_batch_size if exp.spec.cfg.text_encoder is not None
           else 0)
  step, params, content = restore.restore_params(exp.workdir, exp.spec, checkpoint, exp.content,
                                                 chunk)
  exp.content = content
  return step, params
