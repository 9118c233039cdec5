"""The compiled programs of an online learner, one set per vocabulary size, built once and kept.

Everything whose shape follows the catalog lives here: the state shardings, the donated step, the
row writes of item registration, ranking, the imprint query and the item-vector lookup of index
upserts. :class:`ProgramCache` builds a :class:`Programs` on a vocabulary size's first use and keeps
it, so a size compiled before (by :meth:`ProgramCache.warm`, or on earlier use) compiles nothing
again; the row counts the programs see come padded to a few lengths (:func:`bucket`,
:func:`padded_rows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from llm4rec_jax import evaluation, partitioning
from llm4rec_jax.online.catalog import pad_content
from llm4rec_jax.online.optimizer import scale_catalog_rows
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train.objective import make_loss_fn


def bucket(n: int) -> int:
  """A padded length: a power of two >= n (>= 8), so programs compile for few shapes."""
  return max(8, 1 << max(0, int(n) - 1).bit_length())


def padded_rows(rows: Sequence[int], values: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """``rows`` (and their ``values`` [n, ...]) padded to :func:`bucket` length by repeating the
  first row and its value: writing a row twice with the same value changes nothing, and the row
  updates compile for a few lengths only."""
  n = len(rows)
  idx = np.full(bucket(n), rows[0], np.int32)
  idx[:n] = rows
  if values is None:
    return idx, None
  values = np.asarray(values, np.float32)
  padded = np.repeat(values[:1], len(idx), axis=0)
  padded[:n] = values
  return idx, padded


@dataclasses.dataclass(frozen=True)
class Programs:
  """The shardings and jitted functions of one vocabulary size."""
  spec: state_lib.ModelSpec
  abstract: Any  # the train state's ShapeDtypeStructs
  shardings: Any  # the train state's shardings
  vocab_leaves: Any  # bool tree like the parameters: which are catalog-sharded
  catalog_sharding: jax.sharding.NamedSharding  # a [vocab] array
  content_sharding: Any  # the item content's, or None without content
  # (state, batch, content, catalog, anchor, row_scale) -> (state, metrics); state donated.
  step: Callable[..., Any]
  set_rows: Callable[..., Any]  # (params, idx, values, leaf) -> params; params donated
  zero_rows: Callable[..., Any]  # (params, idx) -> params, every catalog-sharded leaf; donated
  rank: Callable[..., Any]  # (params, batch, content, catalog) -> (ranks, top items)
  table_rows: Callable[..., Any]  # (params, content, rows) -> item vectors [rows, d]
  query_and_kth: Callable[..., Any]  # (params, content, inputs, catalog) -> (query, k-th score)

  @property
  def vocab_size(self) -> int:
    return self.spec.cfg.vocab_size


class ProgramCache:
  """:class:`Programs` by vocabulary size, built on first use and kept.

  Args:
    config: the learner's (frozen) config.
    mesh, rules: the mesh and its logical-axis rules.
    tx, trainable: the online optimizer and its parameter mask.
    content: the host item content (any size: its row shapes), or None without content.
    train_width: items of a training example (history window + target).
    width: items of a ranking row (``data.max_len`` history items + the target).
    small_rows: rows of a scoring batch for a few queries (serving one user, imprinting).
  """

  def __init__(self, config: ml_collections.FrozenConfigDict, mesh: jax.sharding.Mesh, rules: Any,
               tx: optax.GradientTransformation, trainable: Any, content: Any, *,
               train_width: int, width: int, small_rows: int):
    self.config, self.oc, self.mesh, self.rules = config, config.online, mesh, rules
    self.tx, self.trainable, self.content = tx, trainable, content
    self.train_width, self.width, self.small_rows = train_width, width, small_rows
    self._built: dict[int, Programs] = {}

  def get(self, cfg: Any, spec: state_lib.ModelSpec | None = None) -> Programs:
    """The programs of the decoder config ``cfg``'s vocabulary size, built now if this size is new
    (from ``spec`` when given: the model spec of ``cfg``)."""
    vocab = cfg.vocab_size
    if vocab not in self._built:
      spec = spec or state_lib.build_model_spec(cfg, self.mesh, self.rules)
      self._built[vocab] = self._build(spec)
    return self._built[vocab]

  def _build(self, spec: state_lib.ModelSpec) -> Programs:
    vocab = spec.cfg.vocab_size
    abstract, shardings = state_lib.state_shardings(spec, self.tx)
    vocab_leaves = jax.tree.map(lambda x: x.ndim >= 1 and x.shape[0] == vocab,
                                spec.abstract_params)
    catalog_sharding = jax.sharding.NamedSharding(
        self.mesh, partitioning.logical_to_mesh(('vocab',), self.rules, self.mesh, (vocab,)))
    content_sharding = None if self.content is None else jax.tree.map(
        lambda x: jax.sharding.NamedSharding(self.mesh, partitioning.logical_to_mesh(
            ('vocab',) + (None,) * (np.ndim(x) - 1), self.rules, self.mesh,
            (vocab,) + tuple(np.shape(x)[1:]))), self.content)
    step = self._make_step(spec, shardings, vocab_leaves, catalog_sharding, content_sharding)
    set_rows, zero_rows = _make_row_updates(shardings['params'], vocab_leaves)
    ks = self.config.eval.ks
    rank = evaluation.make_rank_fn(spec.graphdef, exclude_seen=self.config.eval.exclude_seen,
                                   top_k=max(ks))
    graphdef, top_k = spec.graphdef, max(ks)

    @jax.jit
    def table_rows(params, content, rows):
      model = nnx.merge(graphdef, params)
      return model.output_table(model.encode_catalog(content))[rows]

    @jax.jit
    def query_and_kth(params, content, inputs, catalog):
      model = nnx.merge(graphdef, params)
      encoded = model.encode_catalog(content)
      hidden = model(inputs, encoded)[:, -1]  # [batch, d_model]
      scores = model.logits(hidden, encoded, catalog)  # [batch, vocab]
      return hidden, jax.lax.top_k(scores, top_k)[0][:, -1]

    return Programs(spec=spec, abstract=abstract, shardings=shardings, vocab_leaves=vocab_leaves,
                    catalog_sharding=catalog_sharding, content_sharding=content_sharding,
                    step=step, set_rows=set_rows, zero_rows=zero_rows, rank=rank,
                    table_rows=table_rows, query_and_kth=query_and_kth)

  def _make_step(self, spec, shardings, vocab_leaves, catalog_sharding, content_sharding):
    oc = self.oc
    rows = oc.batch_size + oc.replay_batch
    loss_fn = make_loss_fn(spec.cfg, spec.graphdef, self.config.loss, max_targets=rows)
    trainable, tx, pull = self.trainable, self.tx, float(oc.l2_pull)

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
    anchor_sharding = shardings['params'] if oc.l2_pull > 0 else None
    return jax.jit(step_fn, in_shardings=(shardings, batch_sharding, content_sharding,
                                          catalog_sharding, anchor_sharding, catalog_sharding),
                   out_shardings=(shardings, spec.replicated), donate_argnums=(0,))

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch on the mesh, rows sharded like training's. Every process reads the same
    stream, so each passes the whole batch."""
    return partitioning.to_global(batch, self.mesh, self.rules, whole=True)

  def warm(self, p: Programs, *, content: Any, seen_width: int, imprint_leaf: str | None,
           with_index: bool) -> None:
    """Calls ``p``'s programs once on zero arrays of every shape the update and serving paths
    use at its vocabulary size (``content``: the host item content, padded to it here): the step,
    ranking (``seen_width`` and the next width, one user or a full batch), the imprint query, the
    row writes of registration (every padded length up to ``online.batch_size`` new items) and,
    ``with_index``, the item-vector lookup of index upserts."""
    oc, b, vocab = self.oc, self.oc.batch_size, p.vocab_size

    def zeros(abstract, shardings):
      return jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s),
                          abstract, shardings)
    state = zeros(p.abstract, p.shardings)
    if content is not None:
      content = state_lib.put_content(pad_content(content, vocab), self.mesh, self.rules)
    catalog = jax.device_put(np.zeros(vocab, bool), p.catalog_sharding)
    row_scale = jax.device_put(np.ones(vocab, np.float32), p.catalog_sharding)
    anchor = zeros(p.abstract['params'], p.shardings['params']) if oc.l2_pull > 0 else None
    rows = b + oc.replay_batch
    batch = self.put_batch({'inputs': np.zeros((rows, self.train_width - 1), np.int32),
                            'targets': np.zeros((rows, self.train_width - 1), np.int32)})
    state, _ = p.step(state, batch, content, catalog, anchor, row_scale)
    params = state['params']
    for n in sorted({self.small_rows, b}):
      inputs = np.zeros((n, self.width - 1), np.int32)
      for seen in (seen_width, 2 * seen_width):
        batch = self.put_batch({'inputs': inputs, 'seen': np.zeros((n, seen), np.int32),
                                'targets': np.zeros(n, np.int32)})
        p.rank(params, batch, content, catalog)
      p.query_and_kth(params, content, self.put_batch({'inputs': inputs})['inputs'], catalog)
    lengths = sorted({bucket(n) for n in range(1, b + 1)})
    for n in lengths:
      idx = jax.device_put(np.zeros(n, np.int32))
      if imprint_leaf is not None:
        row = p.abstract['params'][imprint_leaf].shape[1:]
        values = jax.device_put(np.zeros((n,) + row, np.float32))
        params = p.set_rows(params, idx, values, imprint_leaf)
      params = p.zero_rows(params, idx)
    if with_index:
      for n in sorted(set(lengths) | {bucket(n) for n in (b * oc.sync_every, vocab - 1)}):
        p.table_rows(params, content, jax.device_put(np.zeros(n, np.int32)))
    jax.block_until_ready(params)


def _make_row_updates(param_shardings: Any, vocab_leaves: Any) -> tuple[Callable, Callable]:
  """The jitted row updates of item registration, built once per vocabulary size: the rows come
  padded to a few lengths (:func:`padded_rows`), so registering items compiles nothing after the
  first registrations. Parameters stay in their shardings; the old ones are donated."""

  def set_rows(params, idx, values, leaf):
    return dict(params, **{leaf: params[leaf].at[idx].set(values.astype(params[leaf].dtype))})

  def zero_rows(params, idx):
    return jax.tree.map(lambda p, v: p.at[idx].set(0.0) if v else p, params, vocab_leaves)

  return (jax.jit(set_rows, static_argnums=(3,), out_shardings=param_shardings,
                  donate_argnums=(0,)),
          jax.jit(zero_rows, out_shardings=param_shardings, donate_argnums=(0,)))
