"""The online learner: incremental optimizer steps on streamed events, on the training's sharded state.

:class:`OnlineLearner` restores a trained workdir's parameters onto the mesh of its config (the same
logical-axis shardings as training), then for every micro-batch of events:

1. registers new items (next free catalog row, growing and re-sharding every catalog-sharded array
   when the reserved rows run out; content rows from the event's ``features`` when the model reads
   content) so they become scorable at once;
2. builds one example per interaction, the user's history so far followed by the item (only that
   last position is a target), mixes in ``online.replay_batch`` past examples from the replay
   buffer, and applies **one jitted, donated step**: the training loss
   (:func:`llm4rec_jax.train.objective.make_loss_fn`, over the grown catalog), plus an optional L2
   pull toward the last full-training weights, with its own AdamW restricted to ``online.params``
   (the other parameters get no gradient and a zero update); the catalog rows of items registered
   online learn at ``online.new_item_learning_rate`` so they catch up in few steps;
3. upserts the touched items into a ScaNN index, if one is attached;
4. every ``online.snapshot_every`` events, writes an Orbax snapshot with the stream position.

For production rates (see docs/online.md): ``online.window`` trains on a short recent window instead
of ``data.max_len + 1`` positions (ranking still reads ``data.max_len`` items);
``online.sync_every`` fetches the metrics (finite-loss check) and flushes index upserts every N
steps only, so the host does not wait for every step; ``online.grow='pow2'`` with
``online.reserve_items`` grows the catalog in few sizes, whose programs
:meth:`OnlineLearner.warm_up` compiles ahead (the programs of each vocabulary size are built once
and kept), so vocabulary growth compiles nothing on the update path.

The decoder has no user table (a user is their history), so new users need no capacity: the learner
keeps every user's history and starts one for a new user.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from llm4rec_jax import config_base, evaluation, metrics as metrics_lib, partitioning
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import registry
from llm4rec_jax.data.events import Event
from llm4rec_jax.errors import ConfigError, DataError, NonFiniteLossError
from llm4rec_jax.online import stream
from llm4rec_jax.online.catalog import GROW_MODES, ContentRows, ItemCatalog, grown_vocab, pad_rows
from llm4rec_jax.online.compiles import CompileCounter
from llm4rec_jax.online.replay import ReplayBuffer
from llm4rec_jax.retrieval import index as index_lib
from llm4rec_jax.train import restore
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train.checkpointing import abstract_with_shardings
from llm4rec_jax.train.objective import make_loss_fn

# online.params='embeddings': the item tables and what computes item vectors from content.
EMBEDDING_PARAMS = ('item_embed', 'output_embed', 'no_content', 'fusion')


def trainable_mask(abstract_params: Any, selection: str) -> Any:
  """bool tree like ``abstract_params``: which parameters ``online.params`` selects.

  ``selection``: 'all', 'embeddings', or comma-separated path prefixes ('blocks.1', 'fusion').
  """
  paths = {jax.tree_util.keystr(p, simple=True, separator='.'): leaf
           for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}
  if selection == 'all':
    prefixes = ('',)
  elif selection == 'embeddings':
    prefixes = EMBEDDING_PARAMS
  else:
    prefixes = tuple(p.strip() for p in selection.split(',') if p.strip())
    unknown = [p for p in prefixes if not any(_matches(k, p) for k in paths)]
    if unknown or not prefixes:
      tops = sorted({k.split('.')[0] for k in paths})
      raise ConfigError('online.params', f'{unknown or selection!r} match no parameter; use '
                        f"'all', 'embeddings' or path prefixes of {tops}")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(_matches(jax.tree_util.keystr(p, simple=True, separator='.'), q)
                       for q in prefixes), abstract_params)


def _matches(path: str, prefix: str) -> bool:
  return not prefix or path == prefix or path.startswith(prefix + '.')


def make_online_optimizer(oc: Any, mask: Any) -> optax.GradientTransformation:
  """Clipped AdamW at a constant ``online.learning_rate``; the update of every parameter outside
  ``mask`` is zero (its gradient is stopped too, so it costs no backward pass)."""
  keep = optax.stateless(lambda updates, _params=None: jax.tree.map(
      lambda u, m: u if m else jnp.zeros_like(u), updates, mask))
  decay = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(oc.grad_clip) if oc.grad_clip > 0 else optax.identity(),
      optax.adamw(oc.learning_rate, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay, mask=decay),
      keep)


def new_item_row_scale(vocab_size: int, num_trained: int, scale: float) -> np.ndarray:
  """float32 [vocab]: the factor on each catalog row's optimizer update, ``scale`` for the rows of
  items registered online (ids > ``num_trained``), 1 for the trained items and padding."""
  out = np.ones(vocab_size, np.float32)
  out[num_trained + 1:] = scale
  return out


def scale_catalog_rows(updates: Any, vocab_leaves: Any, row_scale: jax.Array) -> Any:
  """Multiplies row i of every catalog-sharded update (``vocab_leaves``) by ``row_scale[i]``."""
  def one(u, is_vocab):
    if not is_vocab:
      return u
    return u * row_scale.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)
  return jax.tree.map(one, updates, vocab_leaves)


def validate(config: ml_collections.ConfigDict, dp: int) -> None:
  """Checks ``config.online`` (and what online adaptation needs of the model)."""
  oc = config.online
  if config.model.get('head', 'softmax') != 'softmax':
    raise ConfigError('model.head', 'online adaptation supports the softmax head only (new items '
                      'would need semantic-ID codes)')
  if oc.learning_rate <= 0:
    raise ConfigError('online.learning_rate', f'must be positive, got {oc.learning_rate}')
  for key in ('batch_size',):
    if oc[key] <= 0:
      raise ConfigError(f'online.{key}', f'must be positive, got {oc[key]}')
  for key in ('replay_size', 'replay_batch', 'l2_pull', 'snapshot_every', 'max_wait_s',
              'window_s', 'grow_items', 'reserve_items', 'window'):
    if oc[key] < 0:
      raise ConfigError(f'online.{key}', f'must be >= 0, got {oc[key]}')
  if oc.sync_every < 1:
    raise ConfigError('online.sync_every', f'must be >= 1, got {oc.sync_every}')
  if oc.grow not in GROW_MODES:
    raise ConfigError('online.grow', f'{oc.grow!r} is not one of {GROW_MODES}')
  if oc.bad_events not in stream.BAD_EVENTS:
    raise ConfigError('online.bad_events', f'{oc.bad_events!r} is not one of {stream.BAD_EVENTS}')
  if oc.time_order not in stream.TIME_ORDERS:
    raise ConfigError('online.time_order', f'{oc.time_order!r} is not one of {stream.TIME_ORDERS}')
  if oc.new_item_learning_rate < 0:
    raise ConfigError('online.new_item_learning_rate',
                      f'must be >= 0 (0 = online.learning_rate), got {oc.new_item_learning_rate}')
  if oc.keep_snapshots < 1:
    raise ConfigError('online.keep_snapshots', 'must be >= 1')
  for key in ('batch_size', 'replay_batch'):
    if oc[key] % dp:
      raise ConfigError(f'online.{key}', f'{oc[key]} is not divisible by the {dp}-way batch '
                        'sharding of the mesh')


def _imprint_target(cfg: Any, mode: str) -> str | None:
  """The parameter holding new items' scoring rows for ``online.new_item_init='imprint'``; None
  when new rows stay zero (also for a tied content model: it scores a new item by its content)."""
  if mode not in ('imprint', 'zero'):
    raise ConfigError('online.new_item_init', f"{mode!r} is not 'imprint' or 'zero'")
  if mode == 'zero':
    return None
  if not cfg.tie_embeddings:
    return 'output_embed'
  return 'item_embed' if cfg.item_repr == 'id' else None


def _window(history: Sequence[int], item: int, width: int) -> np.ndarray:
  """int32 [width]: ``history + [item]``, last ``width`` items, left-padded with 0."""
  seq = list(history[-(width - 1):]) + [item]
  out = np.zeros(width, np.int32)
  out[-len(seq):] = seq
  return out


def _bucket(n: int) -> int:
  """Seen-item width: a power of two >= n (>= 8), so ranking compiles for few shapes."""
  return max(8, 1 << max(0, int(n) - 1).bit_length())


def _padded_rows(rows: Sequence[int], values: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """``rows`` (and their ``values`` [n, ...]) padded to :func:`_bucket` length by repeating the
  first row and its value: writing a row twice with the same value changes nothing, and the row
  updates compile for a few lengths only."""
  n = len(rows)
  idx = np.full(_bucket(n), rows[0], np.int32)
  idx[:n] = rows
  if values is None:
    return idx, None
  values = np.asarray(values, np.float32)
  padded = np.repeat(values[:1], len(idx), axis=0)
  padded[:n] = values
  return idx, padded


@dataclasses.dataclass
class RunSummary:
  """What :meth:`OnlineLearner.run` did."""
  events: int = 0  # interactions learned from
  records: int = 0  # records consumed (interactions + item registrations)
  steps: int = 0
  new_items: int = 0
  seconds: float = 0.0
  # learn() wall time per micro-batch; with online.sync_every > 1 the device may still be running
  # the step when learn() returns (the time then shows at the next sync).
  step_latency_ms: list[float] = dataclasses.field(default_factory=list)
  ranks: list[int] = dataclasses.field(default_factory=list)  # prequential, when evaluated
  position: int = 0
  compilations: int = 0  # XLA compilations during the run (0 after warm_up for known sizes)
  skipped: list[str] = dataclasses.field(default_factory=list)  # records skipped, with their line

  def to_json(self, ks: Sequence[int] = (10,)) -> dict[str, Any]:
    # The first step compiles; it is reported apart from the latency percentiles.
    lat = np.asarray(self.step_latency_ms[1:] or self.step_latency_ms or [np.nan])
    out = {'events': self.events, 'records': self.records, 'steps': self.steps,
           'new_items': self.new_items, 'seconds': round(self.seconds, 3),
           'events_per_s': round(self.events / max(self.seconds, 1e-9), 1),
           'update_latency_ms_p50': round(float(np.percentile(lat, 50)), 2),
           'update_latency_ms_p99': round(float(np.percentile(lat, 99)), 2),
           'first_step_ms': round(self.step_latency_ms[0], 2) if self.step_latency_ms else None,
           'position': self.position, 'compilations': self.compilations,
           'skipped_records': len(self.skipped), 'skipped_examples': self.skipped[:10]}
    if self.ranks:
      out['prequential'] = metrics_lib.ranking_metrics(np.asarray(self.ranks), ks)
    return out


class OnlineLearner:
  """Adapts a trained workdir's model to a stream of events. See the module docstring.

  Args:
    workdir: a workdir written by ``llm4rec train``.
    overrides: ``config.online`` fields (e.g. ``{'learning_rate': 3e-4, 'params': 'embeddings'}``).
    checkpoint: the training checkpoint to start from: 'best', 'latest' or a step.
    resume: continue from the latest snapshot in ``WORKDIR/online/snapshots`` when there is one.
    index: an ``llm4rec_jax.retrieval.ItemIndex`` to upsert new and changed items into.
  """

  def __init__(self, workdir: str | pathlib.Path, *, overrides: Mapping[str, Any] | None = None,
               checkpoint: str = 'best', resume: bool = True, index: Any = None):
    self.workdir = pathlib.Path(workdir)
    self.config = config_base.load(self.workdir)
    if workdir_lib.has_text_encoder(self.workdir):
      raise ConfigError('text_finetune.enabled', f'{self.workdir} was trained with text '
                        'fine-tuning (its model holds a text encoder); online adaptation does not '
                        'support that yet (the text of new items would need the fine-tuned '
                        'encoder, and its weights an online optimizer). Adapt a workdir trained '
                        'with text_finetune.enabled=False (frozen text embeddings) instead')
    if overrides:
      unknown = sorted(set(overrides) - set(self.config.online))
      if unknown:
        raise ConfigError(f'online.{unknown[0]}', f'unknown field; config.online has '
                          f'{sorted(self.config.online)}')
      self.config.online.update(dict(overrides))
    oc = self.oc = self.config.online
    self.mesh = partitioning.make_mesh(self.config.mesh)
    self.rules = self.config.mesh.rules
    self.dp = partitioning.data_parallel_size(self.mesh, self.rules)
    validate(self.config, self.dp)
    items = workdir_lib.read_catalog(self.workdir)
    cfg, self.content_np, _ = restore.saved_model_config(self.workdir, self.config,
                                                         items['num_items'], self.mesh)
    shards = math.prod(self.mesh.shape[a] for a in partitioning.rule_axes(self.rules, 'vocab')
                       if a in self.mesh.shape)
    self.vocab_multiple = 128 * shards
    if not cfg.uses_content:
      self.content_np = None
    self.cfg = cfg
    self.width = self.config.data.max_len + 1  # ranking: max_len history items + the target
    # Training examples (stream and replay rows): the last online.window items + the target.
    self.train_width = min(oc.window + 1, self.width) if oc.window > 0 else self.width
    self.catalog = ItemCatalog(items['raw_ids'], cfg.vocab_size)
    self.histories: dict[str, list[int]] = {}
    self.replay = ReplayBuffer(oc.replay_size, self.train_width, policy=oc.replay_policy,
                               seed=self.config.seed)
    self._programs: dict[int, dict[str, Any]] = {}  # vocabulary size -> its jitted functions
    self._pending_metrics: list[Any] = []  # device metrics of the steps since the last sync
    self._pending_rows: set[int] = set()  # items touched since the last index upsert
    self._last_metrics: dict[str, float] = {}
    self.position = 0
    self.index = index
    self.content_rows: ContentRows | None = None

    spec = state_lib.build_model_spec(cfg, self.mesh, self.rules)
    self.trainable = trainable_mask(spec.abstract_params, oc.params)
    self.tx = make_online_optimizer(oc, self.trainable)
    self.trained_step, trained, _ = restore.restore_params(self.workdir, spec, checkpoint)
    self._imprint_leaf = _imprint_target(self.cfg, oc.new_item_init)
    # The pull target: the full-training weights (host copy; rows of items registered online are 0).
    self._trained_host = jax.device_get(trained) if oc.l2_pull > 0 else None

    self.snapshots = workdir_lib.snapshots(self.workdir, max_to_keep=oc.keep_snapshots)
    latest = self.snapshots.latest() if resume else None
    if oc.bootstrap or (self.content_np is not None):
      self._bootstrap(bootstrap_histories=oc.bootstrap and latest is None)
    if latest is not None:
      self._restore(latest)
    else:
      self._set_spec(spec)
      opt_state = jax.jit(self.tx.init, out_shardings=self.shardings['opt_state'])(trained)
      step = jax.device_put(jnp.zeros((), jnp.int32), spec.replicated)
      rng = jax.device_put(jax.random.key_data(jax.random.fold_in(
          jax.random.key(self.config.seed), 2)), spec.replicated)
      self.state = {'step': step, 'params': trained, 'opt_state': opt_state, 'rng': rng}
      self._put_catalog()
    # Seen-item width of ranking: only ever grows (a bucket), so it rarely changes shape.
    self._small_rows = min(oc.batch_size, -(-8 // self.dp) * self.dp)
    self._seen_width = _bucket(max(map(len, self.histories.values()), default=0))
    if self.catalog.free_rows < oc.reserve_items:
      self._grow(self.catalog.num_items + 1 + oc.reserve_items)
    self._snapshot_position = self.position

  # ----------------------------------------------------------------------------------------------
  # Setup.

  def _bootstrap(self, *, bootstrap_histories: bool) -> None:
    """User histories and replay examples from the workdir's training data; the item table for
    content rows of new items."""
    ds = registry.load(self.config.data)
    raw = [str(r) for r in ds.items.raw_ids]
    if raw != self.catalog.raw_ids[:len(raw)]:
      raise DataError(f'dataset {self.config.data.name!r} does not match the item catalog of '
                      f'{workdir_lib.path(self.workdir, workdir_lib.CATALOG)} (different item '
                      'ids or order)', field='data.name')
    if self.content_np is not None:
      self.content_rows = ContentRows(ds.items, self.cfg.content, self.config.content)
    if not bootstrap_histories:
      return
    user_raw = [str(u) for u in ds.users.raw_ids]
    for u, seq in enumerate(ds.sequences()):
      if u == 0 or not len(seq):
        continue
      self.histories[user_raw[u]] = seq.astype(np.int32).tolist()
      if len(seq) >= 2:
        self.replay.add(np.stack([_window(seq[:t], int(seq[t]), self.train_width)
                                  for t in range(1, len(seq))]))

  _PROGRAM_ATTRS = ('spec', 'abstract', 'shardings', 'vocab_leaves', '_catalog_sharding',
                    '_content_sharding', '_step_fn', '_set_rows_fn', '_zero_rows_fn', '_rank_fn',
                    '_table_rows', '_query_and_kth')

  def _set_spec(self, spec: state_lib.ModelSpec) -> None:
    """Switches to the shardings and jitted functions of ``spec``'s vocabulary size, built on first
    use and kept: a size compiled before (e.g. by :meth:`warm_up`) compiles nothing again."""
    vocab = spec.cfg.vocab_size
    if vocab not in self._programs:
      self._build_programs(spec)
      self._programs[vocab] = {k: getattr(self, k) for k in self._PROGRAM_ATTRS}
    for k, v in self._programs[vocab].items():
      setattr(self, k, v)

  def _build_programs(self, spec: state_lib.ModelSpec) -> None:
    """Builds everything that depends on the vocabulary size: shardings and jitted functions."""
    self.spec = spec
    self.abstract, self.shardings = state_lib.state_shardings(spec, self.tx)
    self.vocab_leaves = jax.tree.map(lambda x: x.ndim >= 1 and x.shape[0] == spec.cfg.vocab_size,
                                     spec.abstract_params)
    self._catalog_sharding = jax.sharding.NamedSharding(
        self.mesh, partitioning.logical_to_mesh(('vocab',), self.rules, self.mesh,
                                                (spec.cfg.vocab_size,)))
    vocab = spec.cfg.vocab_size
    self._content_sharding = None if self.content_np is None else jax.tree.map(
        lambda x: jax.sharding.NamedSharding(self.mesh, partitioning.logical_to_mesh(
            ('vocab',) + (None,) * (np.ndim(x) - 1), self.rules, self.mesh,
            (vocab,) + tuple(np.shape(x)[1:]))), self.content_np)
    self._step_fn = self._make_step()
    self._make_row_updates()
    self._rank_fn = evaluation.make_rank_fn(spec.graphdef, exclude_seen=self.config.eval.exclude_seen,
                                            top_k=max(self.config.eval.ks))
    graphdef = spec.graphdef

    @jax.jit
    def table_rows(params, content, rows):
      model = nnx.merge(graphdef, params)
      return model.output_table(model.encode_catalog(content))[rows]
    self._table_rows = table_rows

    top_k = max(self.config.eval.ks)

    @jax.jit
    def query_and_kth(params, content, inputs, catalog):
      model = nnx.merge(graphdef, params)
      encoded = model.encode_catalog(content)
      hidden = model(inputs, encoded)[:, -1]  # [batch, d_model]
      scores = model.logits(hidden, encoded, catalog)  # [batch, vocab]
      return hidden, jax.lax.top_k(scores, top_k)[0][:, -1]
    self._query_and_kth = query_and_kth

  def _put_catalog(self) -> None:
    self.catalog_mask = jax.device_put(self.catalog.mask(), self._catalog_sharding)
    # New items' rows learn at online.new_item_learning_rate: their updates are scaled by its ratio
    # to online.learning_rate (AdamW's update is proportional to the rate).
    ratio = (self.oc.new_item_learning_rate / self.oc.learning_rate
             if self.oc.new_item_learning_rate > 0 else 1.0)
    self.row_scale = jax.device_put(new_item_row_scale(self.catalog.vocab_size,
                                                       self.catalog.num_trained, ratio),
                                    self._catalog_sharding)
    self.content = None
    if self.content_np is not None:
      self.content = state_lib.put_content(self.content_np, self.mesh, self.rules)
    self.anchor = None
    if self._trained_host is not None:
      n, vocab = self.catalog.num_trained, self.catalog.vocab_size
      def anchor_leaf(x, is_vocab):
        if not is_vocab:
          return x
        x = pad_rows(np.asarray(x), vocab)
        x[n + 1:] = 0.0
        return x
      host = jax.tree.map(anchor_leaf, self._trained_host, self.vocab_leaves)
      self.anchor = jax.device_put(host, self.shardings['params'])

  def _make_step(self):
    rows = self.oc.batch_size + self.oc.replay_batch
    loss_fn = make_loss_fn(self.spec.cfg, self.spec.graphdef, self.config.loss, max_targets=rows)
    trainable, tx, pull = self.trainable, self.tx, float(self.oc.l2_pull)
    vocab_leaves = self.vocab_leaves

    def step_fn(state, batch, content, catalog, anchor, row_scale):
      rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])

      def objective(params):
        params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
        loss, aux = loss_fn(params, batch, content, rng, catalog)
        total = loss
        if anchor is not None:
          sq = [jnp.sum(jnp.square(p - a)) for p, a, t in zip(
              jax.tree.leaves(params), jax.tree.leaves(anchor), jax.tree.leaves(trainable)) if t]
          total = loss + 0.5 * pull * sum(sq)
        return total, dict(aux, loss=loss)

      (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(state['params'])
      updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
      updates = scale_catalog_rows(updates, vocab_leaves, row_scale)
      params = optax.apply_updates(state['params'], updates)
      metrics = dict(aux, grad_norm=optax.global_norm(grads))
      return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), metrics

    batch_sharding = {'inputs': partitioning.batch_sharding(self.mesh, self.rules, 2),
                      'targets': partitioning.batch_sharding(self.mesh, self.rules, 2)}
    anchor_sharding = self.shardings['params'] if self.oc.l2_pull > 0 else None
    return jax.jit(step_fn, in_shardings=(self.shardings, batch_sharding, self._content_sharding,
                                          self._catalog_sharding, anchor_sharding,
                                          self._catalog_sharding),
                   out_shardings=(self.shardings, self.spec.replicated), donate_argnums=(0,))

  # ----------------------------------------------------------------------------------------------
  # Compiling ahead.

  def warm_up(self, buckets: int = 2) -> dict[str, Any]:
    """Compiles, for the current vocabulary size and the next ``buckets - 1`` sizes growth would
    reach (``online.grow``), every program the update and serving paths run: the step, ranking
    (this and the next seen-item width), the imprint query, the row writes of registration (every
    padded length up to ``online.batch_size`` new items) and, with an index, the table rows. Runs
    them on zero arrays, so the state is untouched. Returns the sizes and what compiling took."""
    sizes = [self.catalog.vocab_size]
    for _ in range(buckets - 1):
      sizes.append(self._next_vocab(sizes[-1] + 1, sizes[-1]))
    current = self.spec
    with CompileCounter() as counter:
      try:
        for vocab in sizes:
          spec = current if vocab == current.cfg.vocab_size else state_lib.build_model_spec(
              dataclasses.replace(self.cfg, vocab_size=vocab), self.mesh, self.rules)
          self._set_spec(spec)
          self._warm_programs(vocab)
      finally:
        self._set_spec(current)
    return {'vocab_sizes': sizes, 'compilations': counter.count,
            'compile_seconds': round(counter.seconds, 3)}

  def _warm_programs(self, vocab: int) -> None:
    """Calls the current programs (those of ``vocab``) once on zero arrays of their shapes."""
    oc, b = self.oc, self.oc.batch_size

    def zeros(abstract, shardings):
      return jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
                          abstract, shardings)
    state = zeros(self.abstract, self.shardings)
    content = None
    if self.content_np is not None:
      content = state_lib.put_content(jax.tree.map(lambda x: pad_rows(np.asarray(x), vocab),
                                                   self.content_np), self.mesh, self.rules)
    catalog = jax.device_put(np.zeros(vocab, bool), self._catalog_sharding)
    row_scale = jax.device_put(np.ones(vocab, np.float32), self._catalog_sharding)
    anchor = zeros(self.abstract['params'], self.shardings['params']) if oc.l2_pull > 0 else None
    rows = b + oc.replay_batch
    batch = self._put_batch({'inputs': np.zeros((rows, self.train_width - 1), np.int32),
                             'targets': np.zeros((rows, self.train_width - 1), np.int32)})
    state, _ = self._step_fn(state, batch, content, catalog, anchor, row_scale)
    params = state['params']
    for n in sorted({self._small_rows, b}):
      inputs = np.zeros((n, self.width - 1), np.int32)
      for seen in (self._seen_width, 2 * self._seen_width):
        batch = self._put_batch({'inputs': inputs, 'seen': np.zeros((n, seen), np.int32),
                                 'targets': np.zeros(n, np.int32)})
        self._rank_fn(params, batch, content, catalog)
      self._query_and_kth(params, content, self._put_batch({'inputs': inputs})['inputs'], catalog)
    lengths = sorted({_bucket(n) for n in range(1, b + 1)})
    for n in lengths:
      idx = jax.device_put(np.zeros(n, np.int32))
      if self._imprint_leaf is not None:
        row = self.abstract['params'][self._imprint_leaf].shape[1:]
        values = jax.device_put(np.zeros((n,) + row, np.float32))
        params = self._set_rows_fn(params, idx, values, self._imprint_leaf)
      params = self._zero_rows_fn(params, idx)
    if self.index is not None:
      for n in sorted(set(lengths) | {_bucket(n) for n in (b * oc.sync_every, vocab - 1)}):
        self._table_rows(params, content, jax.device_put(np.zeros(n, np.int32)))
    jax.block_until_ready(params)

  # ----------------------------------------------------------------------------------------------
  # Items.

  def register_items(self, raw_ids: Sequence[str],
                     features: Sequence[Mapping[str, Any] | None] | None = None) -> list[int]:
    """Registers items (new ones take free rows, growing the tables if needed) and sets the
    content of those given ``features``; returns their rows. Registered items are scorable."""
    features = list(features) if features is not None else [None] * len(raw_ids)
    new = list(dict.fromkeys(str(r) for r in raw_ids if self.catalog.get(r) == 0))
    if len(new) > self.catalog.free_rows:
      self._grow(self.catalog.num_items + len(new) + 1)
    new_rows = [self.catalog.register(r) for r in new]
    rows = [self.catalog.get(r) for r in raw_ids]
    if new_rows:
      self._zero_rows(new_rows)
    with_content = [(r, f) for r, f in zip(rows, features) if f is not None or r in new_rows]
    if self.content_np is not None and with_content:
      if self.content_rows is None:
        raise ConfigError('online.bootstrap', 'content of new items needs the training dataset '
                          '(its category vocabularies and feature statistics); keep it readable')
      self.content_np = self.content_rows.fill(self.content_np, [r for r, _ in with_content],
                                               [f for _, f in with_content])
    changed = sorted(set(new_rows) | ({r for r, _ in with_content}
                                      if self.content_np is not None else set()))
    if changed:
      self._put_catalog()
      self.upsert_index(changed)
    return rows

  def _imprint(self, events: Sequence[Event], new_rows: Iterable[int]) -> None:
    """Weight imprinting: a new item's scoring row becomes the model's query direction after the
    histories that led to it in this micro-batch (averaged), scaled so that it just enters the
    top ``max(eval.ks)`` there (the median over those histories of the k-th best score over the
    query norm). A zero row starts at score 0 and, at an online learning rate, takes hundreds of
    steps to compete; a full-norm row would outrank everything for every user."""
    new_rows = set(new_rows)
    pairs: list[tuple[int, list[int]]] = []
    extra: dict[str, list[int]] = {}
    for e in events:
      if not e.is_interaction:
        continue
      item = self.catalog.get(e.item)
      h = self.histories.get(e.user, []) + extra.get(e.user, [])
      if item in new_rows and h:
        pairs.append((item, h))
      extra.setdefault(e.user, []).append(item)
    if not pairs:
      return
    # Known items only: the new rows are still zero and must not set their own bar.
    catalog = jax.device_put(self.catalog.mask() & (np.arange(self.catalog.vocab_size) <=
                                                    self.catalog.num_trained),
                             self._catalog_sharding)
    b = self.oc.batch_size
    queries, kth = [], []
    for s in range(0, len(pairs), b):
      inputs = np.zeros((self._query_rows(len(pairs[s:s + b])), self.width - 1), np.int32)
      for i, (_, h) in enumerate(pairs[s:s + b]):
        tail = h[-(self.width - 1):]
        inputs[i, -len(tail):] = tail
      q, k = self._query_and_kth(self.state['params'], self.content,
                                 self._put_batch({'inputs': inputs})['inputs'], catalog)
      n = len(pairs[s:s + b])
      queries.append(partitioning.fetch(q)[:n].astype(np.float32))
      kth.append(partitioning.fetch(k)[:n].astype(np.float32))
    q, kth = np.concatenate(queries), np.concatenate(kth)
    norm = np.maximum(np.linalg.norm(q, axis=1), 1e-9)
    q /= norm[:, None]
    owner = np.asarray([item for item, _ in pairs])
    rows = sorted(set(owner.tolist()))
    values = np.stack([q[owner == r].mean(0) for r in rows])
    values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-9)
    scale = np.asarray([np.median(kth[owner == r] / norm[owner == r]) for r in rows])
    self._set_rows(self._imprint_leaf, rows, values * np.maximum(scale, 0.0)[:, None])

  def _make_row_updates(self) -> None:
    """The jitted row updates of item registration, built once per vocabulary size: the rows come
    padded to a few lengths (:func:`_padded_rows`), so registering items compiles nothing after
    the first registrations. Parameters stay in their shardings; the old ones are donated."""
    vocab_leaves = self.vocab_leaves

    def set_rows(params, idx, values, leaf):
      return dict(params, **{leaf: params[leaf].at[idx].set(values.astype(params[leaf].dtype))})

    def zero_rows(params, idx):
      return jax.tree.map(lambda p, v: p.at[idx].set(0.0) if v else p, params, vocab_leaves)

    out = self.shardings['params']
    self._set_rows_fn = jax.jit(set_rows, static_argnums=(3,), out_shardings=out,
                                donate_argnums=(0,))
    self._zero_rows_fn = jax.jit(zero_rows, out_shardings=out, donate_argnums=(0,))

  def _set_rows(self, leaf: str, rows: Sequence[int], values: np.ndarray) -> None:
    idx, vals = _padded_rows(rows, values)
    # device_put, not jnp.asarray: the latter compiles a small program per new shape.
    params = self._set_rows_fn(self.state['params'], jax.device_put(idx), jax.device_put(vals),
                               leaf)
    self.state = dict(self.state, params=params)

  def _zero_rows(self, rows: Sequence[int]) -> None:
    """New items start from a zero id row (with content: their content embedding alone)."""
    idx, _ = _padded_rows(rows)
    params = self._zero_rows_fn(self.state['params'], jax.device_put(idx))
    self.state = dict(self.state, params=params)

  def _next_vocab(self, needed_rows: int, current: int) -> int:
    return grown_vocab(needed_rows, current, self.oc.grow_items, self.vocab_multiple, self.oc.grow)

  def _grow(self, needed_rows: int) -> None:
    """More catalog rows: pads every catalog-sharded array (parameters, optimizer moments, content,
    catalog mask) and re-shards it for the new vocabulary size."""
    old = self.catalog.vocab_size
    vocab = self._next_vocab(needed_rows, old)
    logging.info('growing the item vocabulary %d -> %d rows', old, vocab)
    host = jax.device_get(self.state)
    self.cfg = dataclasses.replace(self.cfg, vocab_size=vocab)
    self.config.model.vocab_size = vocab
    self.catalog.vocab_size = vocab
    self._set_spec(state_lib.build_model_spec(self.cfg, self.mesh, self.rules))
    abstract_opt = jax.eval_shape(self.tx.init, self.spec.abstract_params)

    def pad(x, like):
      return pad_rows(np.asarray(x), like.shape[0]) if np.shape(x) != like.shape else np.asarray(x)
    host['params'] = jax.tree.map(pad, host['params'], self.spec.abstract_params)
    host['opt_state'] = jax.tree.map(pad, host['opt_state'], abstract_opt)
    self.state = jax.device_put(host, self.shardings)
    if self.content_np is not None:
      self.content_np = jax.tree.map(lambda x: pad_rows(np.asarray(x), vocab), self.content_np)
    self._put_catalog()

  # ----------------------------------------------------------------------------------------------
  # Events.

  def _put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    # Every process reads the same stream, so each passes the whole batch.
    return partitioning.to_global(batch, self.mesh, self.rules, whole=True)

  def recommend(self, user: str, top_k: int = 10) -> list[str]:
    """Raw ids of the adapted model's top ``top_k`` items after ``user``'s current history (seen
    items excluded when ``eval.exclude_seen``; new items included)."""
    if not 0 < top_k <= max(self.config.eval.ks):
      raise DataError(f'top_k must be in 1..{max(self.config.eval.ks)}, got {top_k}',
                      field='top_k')
    top = self._score([(self.histories.get(str(user), []), 0)])[1][0]
    return [self.catalog.raw_ids[int(i)] for i in top[:top_k]]

  def _query_rows(self, n: int) -> int:
    """Rows of a scoring batch for ``n`` queries: a small batch (8 rows, rounded to the batch
    sharding) when they fit, e.g. serving one user or imprinting a few new items, else
    ``online.batch_size``; two shapes, both compiled by :meth:`warm_up`."""
    return self._small_rows if n <= self._small_rows else self.oc.batch_size

  def _score(self, rows: list[tuple[list[int], int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ranks [n], top items [n, k]) of (history, target row) pairs, in static-shape chunks."""
    b = self.oc.batch_size
    ranks, tops = [], []
    for s in range(0, len(rows), b):
      chunk = rows[s:s + b]
      width = self._seen_width = max(self._seen_width, _bucket(max(len(h) for h, _ in chunk)))
      n = self._query_rows(len(chunk))
      inputs = np.zeros((n, self.width - 1), np.int32)
      seen = np.zeros((n, width), np.int32)
      targets = np.zeros(n, np.int32)
      for i, (h, item) in enumerate(chunk):
        tail = h[-(self.width - 1):]
        if tail:
          inputs[i, -len(tail):] = tail
          seen[i, :len(h)] = h
        targets[i] = item
      r, top = self._rank_fn(self.state['params'],
                             self._put_batch({'inputs': inputs, 'seen': seen, 'targets': targets}),
                             self.content, self.catalog_mask)
      r = partitioning.fetch(r)[:len(chunk)].astype(np.int64)
      r[targets[:len(chunk)] == 0] = max(self.catalog.num_items, 1)  # unknown item: a miss
      ranks.append(r)
      tops.append(partitioning.fetch(top)[:len(chunk)])
    return np.concatenate(ranks), np.concatenate(tops)

  def rank(self, events: Sequence[Event]) -> np.ndarray:
    """Prequential ranks (0 = top) of each interaction's item given the user's history before it,
    with the current parameters; an item the model does not know yet counts as a miss."""
    inter = [e for e in events if e.is_interaction]
    if not inter:
      return np.zeros(0, np.int64)
    extra: dict[str, list[int]] = {}
    rows = []
    for e in inter:
      h = self.histories.get(e.user, []) + extra.get(e.user, [])
      item = self.catalog.get(e.item)
      rows.append((h, item))
      if item:
        extra.setdefault(e.user, []).append(item)
    return self._score(rows)[0]

  def observe(self, events: Sequence[Event]) -> None:
    """Advances the stream without learning (a frozen model): histories grow by known items."""
    for e in events:
      if e.is_interaction:
        item = self.catalog.get(e.item)
        if item:
          self.histories.setdefault(e.user, []).append(item)
    self.position += len(events)

  def learn(self, events: Sequence[Event]) -> dict[str, float]:
    """Registers new items and applies incremental step(s) (one per ``online.batch_size``
    interactions); returns the metrics of the last step fetched to host during this call (every
    ``online.sync_every`` steps; ``{}`` if none was, e.g. no event had a history)."""
    reg = [e for e in events if not e.is_interaction or e.features is not None
           or self.catalog.get(e.item) == 0]
    before = self.catalog.num_items
    if reg:
      self.register_items([e.item for e in reg], [e.features for e in reg])
    if self.catalog.num_items > before and self._imprint_leaf is not None:
      self._imprint(events, range(before + 1, self.catalog.num_items + 1))
    windows = []
    for e in events:
      if not e.is_interaction:
        continue
      item = self.catalog.get(e.item)
      h = self.histories.setdefault(e.user, [])
      if h:  # a user's first item has nothing to be predicted from
        windows.append(_window(h, item, self.train_width))
      h.append(item)
    metrics: dict[str, float] = {}
    b = self.oc.batch_size
    for s in range(0, len(windows), b):
      metrics = self._apply(np.stack(windows[s:s + b])) or metrics
    self.position += len(events)
    return metrics

  def _apply(self, stream_rows: np.ndarray) -> dict[str, float]:
    b = self.oc.batch_size
    rows = np.zeros((b + self.oc.replay_batch, self.train_width), np.int32)
    rows[:len(stream_rows)] = stream_rows
    rows[b:] = self.replay.sample(self.oc.replay_batch)
    self.replay.add(stream_rows)
    inputs = rows[:, :-1]
    targets = np.zeros_like(inputs)
    targets[:, -1] = np.where(inputs[:, -1] > 0, rows[:, -1], 0)
    batch = self._put_batch({'inputs': inputs, 'targets': targets})
    self.state, metrics = self._step_fn(self.state, batch, self.content, self.catalog_mask,
                                        self.anchor, self.row_scale)
    self._pending_metrics.append(metrics)
    if self.index is not None:
      self._pending_rows.update(int(r) for r in stream_rows[:, -1] if r > 0)
    if len(self._pending_metrics) >= self.oc.sync_every:
      return self.sync()
    return {}

  def sync(self) -> dict[str, float]:
    """Fetches the metrics of the steps since the last sync (raising on a non-finite loss) and
    upserts the items they touched into the index; returns the last step's metrics."""
    if self._pending_metrics:
      fetched = jax.device_get(self._pending_metrics)
      self._pending_metrics = []
      for m in fetched:
        m = {k: float(v) for k, v in m.items()}
        if not math.isfinite(m['loss']):
          raise NonFiniteLossError(f'non-finite online loss before stream position '
                                   f'{self.position}: {m}. Snapshots written before are intact '
                                   '(lower online.learning_rate).')
      self._last_metrics = m
    if self._pending_rows:
      rows, self._pending_rows = sorted(self._pending_rows), set()
      self.upsert_index(rows)
    return self._last_metrics

  def upsert_index(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
    """Writes the current vectors of ``rows`` (default: every registered item) into the index."""
    if self.index is None:
      return
    rows = (np.arange(1, self.catalog.num_items + 1) if rows is None
            else np.asarray(rows, np.int64))
    if not len(rows):
      return
    idx, _ = _padded_rows(rows)  # a few lengths, each compiled once
    vectors = np.asarray(jax.device_get(self._table_rows(self.state['params'], self.content,
                                                         jax.device_put(idx))))
    self.index.upsert(rows, vectors[:len(rows)])

  # ----------------------------------------------------------------------------------------------
  # Snapshots.

  def snapshot(self) -> None:
    """Saves the adapted state with the stream position (async; :meth:`close` waits)."""
    self.sync()
    if self.snapshots.latest() == self.position:
      return
    # Every step upserts the items it touched; a full step moves all item rows a little, so the
    # index is brought up to date with every vector at each snapshot.
    self.upsert_index()
    users = sorted(self.histories)
    lengths = np.asarray([len(self.histories[u]) for u in users], np.int64)
    flat = [i for u in users for i in self.histories[u]]
    arrays = {'history_offsets': np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
              'history_items': np.asarray(flat or [0], np.int32),
              **{f'replay_{k}': v for k, v in self.replay.state().items()}}
    if self.content_np is not None:
      arrays.update({f'content_{i}': np.asarray(x)
                     for i, x in enumerate(jax.tree.leaves(self.content_np))})
    host = {'position': self.position, 'vocab_size': self.catalog.vocab_size,
            'num_trained_items': self.catalog.num_trained,
            'new_items': self.catalog.raw_ids[self.catalog.num_trained + 1:],
            'users': users, 'trained_step': self.trained_step, 'time': time.time()}
    self.snapshots.save(self.position, self.state, host, arrays)
    self._snapshot_position = self.position

  def _restore(self, position: int) -> None:
    host, arrays = self.snapshots.restore_host(position)
    self.catalog.raw_ids = self.catalog.raw_ids[:host['num_trained_items'] + 1] + list(
        host['new_items'])
    self.catalog.index = {r: i for i, r in enumerate(self.catalog.raw_ids) if i}
    self.catalog.vocab_size = host['vocab_size']
    self.config.model.vocab_size = host['vocab_size']
    self.cfg = dataclasses.replace(self.cfg, vocab_size=host['vocab_size'])
    self._set_spec(state_lib.build_model_spec(self.cfg, self.mesh, self.rules))
    self.state = self.snapshots.restore_state(position,
                                              abstract_with_shardings(self.abstract,
                                                                      self.shardings))
    offsets, flat = arrays['history_offsets'], arrays['history_items']
    self.histories = {u: flat[offsets[i]:offsets[i + 1]].astype(np.int32).tolist()
                      for i, u in enumerate(host['users'])}
    self.replay.load_state({'windows': arrays['replay_windows'],
                            'counters': arrays['replay_counters']})
    if self.content_np is not None:
      treedef = jax.tree.structure(self.content_np)
      n = treedef.num_leaves
      self.content_np = jax.tree.unflatten(treedef, [arrays[f'content_{i}'] for i in range(n)])
    self.position = int(host['position'])
    self._put_catalog()
    logging.info('resumed online learning at stream position %d', self.position)

  def close(self) -> None:
    self.snapshots.close()

  # ----------------------------------------------------------------------------------------------
  # The loop.

  def run(self, source: stream.Source | Iterable[Any], *, evaluate: bool = False,
          max_records: int | None = None) -> RunSummary:
    """Consumes ``source`` (skipping the records already applied) in micro-batches: optionally
    ranks every interaction before learning from it (prequential), learns, snapshots every
    ``online.snapshot_every`` records and at the end."""
    oc = self.oc
    summary = RunSummary()
    events = stream.open_events(source, skip=self.position, bad_events=oc.bad_events,
                                time_order=oc.time_order, skipped=summary.skipped)
    if max_records is not None:
      events = itertools.islice(events, max_records)
    counter = CompileCounter().start()
    t0 = time.perf_counter()
    for batch in stream.micro_batches(events, size=oc.batch_size, max_wait_s=oc.max_wait_s,
                                      window_s=oc.window_s):
      if evaluate:
        summary.ranks.extend(self.rank(batch).tolist())
      before = self.catalog.num_items
      t_step = time.perf_counter()
      self.learn(batch)
      summary.step_latency_ms.append(1e3 * (time.perf_counter() - t_step))
      summary.new_items += self.catalog.num_items - before
      summary.records += len(batch)
      summary.events += sum(e.is_interaction for e in batch)
      summary.steps += 1
      if oc.snapshot_every and self.position - self._snapshot_position >= oc.snapshot_every:
        self.snapshot()
    self.sync()
    jax.block_until_ready(self.state)
    summary.seconds = time.perf_counter() - t0
    summary.compilations = counter.stop().count
    self.snapshot()
    summary.position = self.position
    self._log(summary)
    return summary

  def _log(self, summary: RunSummary) -> None:
    if jax.process_index() != 0:
      return
    path = workdir_lib.path(self.workdir, workdir_lib.ONLINE_LOG)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as f:
      f.write(json.dumps({'event': 'run', **summary.to_json()}) + '\n')


def adapt(workdir: str | pathlib.Path, events: stream.Source | Iterable[Any], *,
          overrides: Mapping[str, Any] | None = None, evaluate: bool = False,
          checkpoint: str = 'best', warm_up: bool = True) -> dict[str, Any]:
  """Adapts ``workdir``'s model on ``events`` (path, '-', or iterable) and returns a summary; resumes
  from the latest snapshot. Upserts into ``WORKDIR/index`` when a ScaNN index was built there.
  ``warm_up`` compiles ahead (:meth:`OnlineLearner.warm_up`); the summary reports what that took
  and the compilations during the stream."""
  learner = OnlineLearner(workdir, overrides=overrides, checkpoint=checkpoint)
  warm = None
  try:
    if learner.oc.upsert_index:
      learner.index = _load_index(pathlib.Path(workdir))
    if warm_up:
      warm = learner.warm_up()
    summary = learner.run(events, evaluate=evaluate)
    if learner.index is not None:
      learner.upsert_index()
      learner.index.save(workdir_lib.path(workdir, workdir_lib.ONLINE_INDEX))
  finally:
    learner.close()
  out = summary.to_json()
  out.update(warm_up=warm, workdir=str(workdir), num_items=learner.catalog.num_items,
             vocab_size=learner.catalog.vocab_size,
             snapshot=str(learner.snapshots.directory / str(learner.position)))
  return out


def _load_index(workdir: pathlib.Path) -> Any:
  """The ScaNN index of ``workdir`` (the adapted copy if one was saved), or None."""
  for d in (workdir_lib.path(workdir, workdir_lib.ONLINE_INDEX),
            workdir_lib.path(workdir, workdir_lib.INDEX)):
    if (d / index_lib.META_FILE).exists():
      return index_lib.ItemIndex.load(d)
  return None
