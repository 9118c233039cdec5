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
3. upserts the touched items into a ScaNN index, if one is attached (:mod:`.upserts`: only rows
   whose vectors changed since their last upsert);
4. every ``online.snapshot_every`` events, writes an Orbax snapshot with the stream position
   (:mod:`.snapshots`; it brings the index up to date first).

The learner is a façade over its parts: :mod:`.config` (the frozen, validated config),
:mod:`.optimizer` (what adapts and how), :mod:`.programs` (the jitted programs of each vocabulary
size), :mod:`.registration` (new items, catalog growth, imprinting), :mod:`.scoring` (ranks and
recommendations), :mod:`.snapshots` and :mod:`.upserts`.

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
import math
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm4rec_jax import partitioning
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import registry
from llm4rec_jax.data.events import Event
from llm4rec_jax.errors import DataError, NonFiniteLossError
from llm4rec_jax.online import config as online_config
from llm4rec_jax.online import registration, scoring, snapshots, stream
from llm4rec_jax.online.catalog import ContentRows, ItemCatalog
from llm4rec_jax.online.compiles import CompileCounter
from llm4rec_jax.online.optimizer import make_online_optimizer, trainable_mask
from llm4rec_jax.online.programs import ProgramCache, bucket, padded_rows
from llm4rec_jax.online.replay import ReplayBuffer, example_window
from llm4rec_jax.online.summary import RunSummary
from llm4rec_jax.online.upserts import IndexUpserts
from llm4rec_jax.retrieval import index as index_lib
from llm4rec_jax.train import restore
from llm4rec_jax.train import state as state_lib


class OnlineLearner:
  """Adapts a trained workdir's model to a stream of events. See the module docstring.

  Args:
    workdir: a workdir written by ``llm4rec train``.
    overrides: ``config.online`` fields (e.g. ``{'learning_rate': 3e-4, 'params': 'embeddings'}``).
    checkpoint: the training checkpoint to start from: 'best', 'latest' or a step.
    resume: continue from the latest snapshot in ``WORKDIR/online/snapshots`` when there is one.
    index: an ``llm4rec_jax.retrieval.ItemIndex`` to upsert new and changed items into.

  ``config`` is frozen once validated; what changes as the stream runs is learner state: the catalog
  (``catalog.vocab_size`` and ``cfg``, the decoder config at the current vocabulary size), the
  device state, histories, replay and the stream ``position``. The parts of the learner live in
  their own modules (``programs``, ``registration``, ``scoring``, ``snapshots``, ``upserts``); its
  methods call them.
  """

  def __init__(self, workdir: str | pathlib.Path, *, overrides: Mapping[str, Any] | None = None,
               checkpoint: str = 'best', resume: bool = True, index: Any = None):
    self.workdir = workdir_lib.root(workdir)
    config = online_config.load(self.workdir, overrides)
    self.mesh = partitioning.make_mesh(config.mesh)
    self.rules = config.mesh.rules
    self.dp = partitioning.data_parallel_size(self.mesh, self.rules)
    online_config.validate(config, self.dp)
    self.config = ml_collections.FrozenConfigDict(config)
    oc = self.oc = self.config.online
    items = workdir_lib.read_catalog(self.workdir)
    cfg, self.content_np, _ = restore.saved_model_config(self.workdir, self.config,
                                                         items['num_items'], self.mesh)
    shards = math.prod(self.mesh.shape[a] for a in partitioning.rule_axes(self.rules, 'vocab')
                       if a in self.mesh.shape)
    self.vocab_multiple = 128 * shards
    if not (cfg.uses_content or cfg.title_tokens):
      self.content_np = None
    self.cfg = cfg
    self.width = self.config.data.max_len + 1  # ranking: max_len history items + the target
    # Training examples (stream and replay rows): the last online.window items + the target.
    self.train_width = min(oc.window + 1, self.width) if oc.window > 0 else self.width
    # Scoring batch of a few queries (8 rows, rounded to the batch sharding).
    self.small_rows = min(oc.batch_size, -(-8 // self.dp) * self.dp)
    self.catalog = ItemCatalog(items['raw_ids'], cfg.vocab_size)
    self.histories: dict[str, list[int]] = {}
    self.replay = ReplayBuffer(oc.replay_size, self.train_width, policy=oc.replay_policy,
                               seed=self.config.seed)
    self._pending_metrics: list[Any] = []  # device metrics of the steps since the last sync
    self._pending_rows: set[int] = set()  # items touched since the last index upsert
    self._last_metrics: dict[str, float] = {}
    self.position = 0
    self.index = index
    self.content_rows: ContentRows | None = None

    spec = state_lib.build_model_spec(cfg, self.mesh, self.rules)
    self.trainable = trainable_mask(spec.abstract_params, oc.params)
    self.tx = make_online_optimizer(oc, self.trainable)
    self._program_cache = ProgramCache(
        self.config, self.mesh, self.rules, self.tx, self.trainable, self.content_np,
        train_width=self.train_width, width=self.width, small_rows=self.small_rows)
    self.trained_step, trained, _ = restore.restore_params(self.workdir, spec, checkpoint)
    self.imprint_leaf = online_config.imprint_target(self.cfg, oc.new_item_init)
    # The pull target: the full-training weights (host copy; rows of items registered online are 0).
    self.trained_host = jax.device_get(trained) if oc.l2_pull > 0 else None

    self.snapshots = workdir_lib.snapshots(self.workdir, max_to_keep=oc.keep_snapshots)
    latest = self.snapshots.latest() if resume else None
    if oc.bootstrap or cfg.uses_content:
      self._bootstrap(bootstrap_histories=oc.bootstrap and latest is None)
    if latest is not None:
      snapshots.restore(self, latest)
    else:
      self.programs = self._program_cache.get(cfg, spec)
      opt_state = jax.jit(self.tx.init, out_shardings=self.shardings['opt_state'])(trained)
      step = jax.device_put(jnp.zeros((), jnp.int32), spec.replicated)
      rng = jax.device_put(jax.random.key_data(jax.random.fold_in(
          jax.random.key(self.config.seed), 2)), spec.replicated)
      self.state = {'step': step, 'params': trained, 'opt_state': opt_state, 'rng': rng}
      registration.put_catalog(self)
    # Seen-item width of ranking: only ever grows (a bucket), so it rarely changes shape.
    self.seen_width = bucket(max(map(len, self.histories.values()), default=0))
    if self.catalog.free_rows < oc.reserve_items:
      registration.grow(self, self.catalog.num_items + 1 + oc.reserve_items)
    self.snapshot_position = self.position

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
    if self.cfg.uses_content:  # (a title-only model's new items enter with no title tokens)
      self.content_rows = ContentRows(ds.items, self.cfg.content, self.config.content)
    if not bootstrap_histories:
      return
    user_raw = [str(u) for u in ds.users.raw_ids]
    for u, seq in enumerate(ds.sequences()):
      if u == 0 or not len(seq):
        continue
      self.histories[user_raw[u]] = seq.astype(np.int32).tolist()
      if len(seq) >= 2:
        self.replay.add(np.stack([example_window(seq[:t], int(seq[t]), self.train_width)
                                  for t in range(1, len(seq))]))

  # The shardings and programs of the current vocabulary size.
  @property
  def spec(self) -> state_lib.ModelSpec:
    return self.programs.spec

  @property
  def abstract(self) -> Any:
    return self.programs.abstract

  @property
  def shardings(self) -> Any:
    return self.programs.shardings

  def use_vocab_size(self, vocab: int) -> None:
    """Switches ``cfg`` and the programs to ``vocab`` catalog rows (built on first use and kept:
    a size compiled before, e.g. by :meth:`warm_up`, compiles nothing again). The caller moves
    the state to the new size."""
    self.cfg = dataclasses.replace(self.cfg, vocab_size=vocab)
    self.programs = self._program_cache.get(self.cfg)

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return self._program_cache.put_batch(batch)

  @property
  def index(self) -> Any:
    """The item index new and changed items are upserted into (None: none)."""
    return self._upserts.index if self._upserts is not None else None

  @index.setter
  def index(self, index: Any) -> None:
    # What the index holds is unknown: every row's first upsert writes it.
    self._upserts = IndexUpserts(index) if index is not None else None

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
      sizes.append(registration.next_vocab(self, sizes[-1] + 1, sizes[-1]))
    with CompileCounter() as counter:
      for vocab in sizes:
        programs = self._program_cache.get(dataclasses.replace(self.cfg, vocab_size=vocab))
        self._program_cache.warm(programs, content=self.content_np, seen_width=self.seen_width,
                                 imprint_leaf=self.imprint_leaf, with_index=self.index is not None)
    return {'vocab_sizes': sizes, 'compilations': counter.count,
            'compile_seconds': round(counter.seconds, 3)}

  # ----------------------------------------------------------------------------------------------
  # Items.

  def register_items(self, raw_ids: Sequence[str],
                     features: Sequence[Mapping[str, Any] | None] | None = None) -> list[int]:
    """Registers items (new ones take free rows, growing the tables if needed) and sets the
    content of those given ``features``; returns their rows. Registered items are scorable."""
    return registration.register_items(self, raw_ids, features)

  # ----------------------------------------------------------------------------------------------
  # Scoring and learning.

  def recommend(self, user: str, top_k: int = 10) -> list[str]:
    """Raw ids of the adapted model's top ``top_k`` items after ``user``'s current history (seen
    items excluded when ``eval.exclude_seen``; new items included)."""
    return scoring.recommend(self, user, top_k)

  def rank(self, events: Sequence[Event]) -> np.ndarray:
    """Prequential ranks (0 = top) of each interaction's item given the user's history before it,
    with the current parameters; an item the model does not know yet counts as a miss."""
    return scoring.rank(self, events)

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
    if self.catalog.num_items > before and self.imprint_leaf is not None:
      registration.imprint(self, events, range(before + 1, self.catalog.num_items + 1))
    windows = []
    for e in events:
      if not e.is_interaction:
        continue
      item = self.catalog.get(e.item)
      h = self.histories.setdefault(e.user, [])
      if h:  # a user's first item has nothing to be predicted from
        windows.append(example_window(h, item, self.train_width))
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
    batch = self.put_batch({'inputs': inputs, 'targets': targets})
    self.state, metrics = self.programs.step(self.state, batch, self.content, self.catalog_mask,
                                             self.anchor, self.row_scale)
    self._pending_metrics.append(metrics)
    if self.index is not None:
      self._pending_rows.update(int(r) for r in stream_rows[:, -1] if r > 0)
    if len(self._pending_metrics) >= self.oc.sync_every:
      return self.sync()
    return {}

  def sync(self, *, all_rows: bool = False) -> dict[str, float]:
    """Fetches the metrics of the steps since the last sync (raising on a non-finite loss) and
    upserts the items they touched into the index (``all_rows``: every item whose vector changed,
    in the same call); returns the last step's metrics."""
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
    if self._pending_rows or all_rows:
      rows = None if all_rows else sorted(self._pending_rows)
      self._pending_rows = set()
      self.upsert_index(rows)
    return self._last_metrics

  def upsert_index(self, rows: Sequence[int] | np.ndarray | None = None) -> int:
    """Writes the current vectors of ``rows`` (default: every registered item) into the index,
    those that changed since their last upsert only, in one call; returns how many it wrote."""
    if self._upserts is None:
      return 0
    rows = (np.arange(1, self.catalog.num_items + 1) if rows is None
            else np.asarray(rows, np.int64))
    if not len(rows):
      return 0
    idx, _ = padded_rows(rows)  # a few lengths, each compiled once
    vectors = np.asarray(jax.device_get(self.programs.table_rows(
        self.state['params'], self.content, jax.device_put(idx))))
    return self._upserts.upsert(rows, vectors[:len(rows)])

  # ----------------------------------------------------------------------------------------------
  # Snapshots.

  def snapshot(self) -> None:
    """Saves the adapted state with the stream position (async; :meth:`close` waits)."""
    snapshots.save(self)

  def close(self) -> None:
    self.snapshots.close()

  # ----------------------------------------------------------------------------------------------
  # The loop.

  def run(self, source: stream.Source | Iterable[Any], *, evaluate: bool = False,
          max_records: int | None = None) -> RunSummary:
    """Consumes ``source`` (skipping the records already applied) in micro-batches: optionally
    ranks every interaction before learning from it (prequential), learns, snapshots every
    ``online.snapshot_every`` records or ``online.snapshot_every_s`` seconds, and at the end."""
    oc = self.oc
    summary = RunSummary()
    events = stream.open_events(source, skip=self.position, bad_events=oc.bad_events,
                                time_order=oc.time_order, skipped=summary.skipped)
    if max_records is not None:
      events = itertools.islice(events, max_records)
    counter = CompileCounter().start()
    t0 = t_snapshot = time.perf_counter()
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
      if ((oc.snapshot_every and self.position - self.snapshot_position >= oc.snapshot_every)
          or (oc.get('snapshot_every_s', 0.0)
              and time.perf_counter() - t_snapshot >= oc.snapshot_every_s)):
        self.snapshot()
        t_snapshot = time.perf_counter()
        summary.snapshots += 1
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
    with path.open('a') as f:
      f.write(json.dumps({'event': 'run', **summary.to_json()}) + '\n')


def adapt(workdir: str | pathlib.Path, events: stream.Source | Iterable[Any], *,
          overrides: Mapping[str, Any] | None = None, evaluate: bool = False,
          checkpoint: str = 'best', warm_up: bool = True,
          on_ready: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Adapts ``workdir``'s model on ``events`` (path, '-', or iterable) and returns a summary; resumes
  from the latest snapshot. Upserts into ``WORKDIR/index`` when a ScaNN index was built there.
  ``warm_up`` compiles ahead (:meth:`OnlineLearner.warm_up`); the summary reports what that took
  and the compilations during the stream. ``on_ready(position)`` is called once the learner is
  loaded and warmed up, just before the first event is read."""
  learner = OnlineLearner(workdir, overrides=overrides, checkpoint=checkpoint)
  warm = None
  try:
    if learner.oc.upsert_index:
      learner.index = _load_index(workdir_lib.root(workdir))
    if warm_up:
      warm = learner.warm_up()
    if on_ready is not None:
      on_ready(learner.position)
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


def _load_index(workdir: workdir_lib.PathLike) -> Any:
  """The ScaNN index of ``workdir`` (the adapted copy if one was saved), or None."""
  for d in (workdir_lib.path(workdir, workdir_lib.ONLINE_INDEX),
            workdir_lib.path(workdir, workdir_lib.INDEX)):
    if (d / index_lib.META_FILE).exists():
      return index_lib.ItemIndex.load(d)
  return None
