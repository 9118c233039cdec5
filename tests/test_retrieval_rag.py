"""Retrieval-augmented generation: training context built only from the history (as at evaluation)
or, with train_exclude='user', never holding any item of the user; causal visibility in the
decoder, and a training run with retrieval refreshed on a schedule."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import read_log, tiny_config
from llm4rec_jax.data import pipeline, splits
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.retrieval import context as context_lib
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import experiment as experiment_lib
from llm4rec_jax.train import trainer

CONTENT = {'content.categorical': 'all', 'content.numeric': 'all', 'content.dense': 'all'}


def rag_config(**overrides):
  return tiny_config(**CONTENT, **{'model.item_repr': 'both', 'model.cross_attention_every': 1,
                                   'retrieval.rag': True, 'retrieval.num_context': 6,
                                   'retrieval.num_cutoffs': 4, 'retrieval.query_window': 2,
                                   **overrides})


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
  return experiment_lib.build_experiment(rag_config(), tmp_path_factory.mktemp('rag'))


def _batches(exp, train=None, all_windows=False):
  windows, users = pipeline.make_windows(exp.split.train if train is None else train,
                                         exp.config.data.max_len, all_windows=all_windows)
  ds = pipeline.train_dataset(windows, users, global_batch_size=64, seed=0, num_epochs=1)
  return list(ds.to_iter_dataset())


def _retriever(exp, train=None, table_seed=0, **overrides):
  # A mutable copy of the frozen config (``as_configdict`` returns one shared, cached copy).
  rcfg = ml_collections.ConfigDict(exp.config.retrieval.to_dict())
  rcfg.update(overrides)
  train = exp.split.train if train is None else train
  # The user's whole sequence: ``train`` then the validation and test items.
  full = [np.unique(np.concatenate([t, s[len(t):]])) for t, s in zip(train, exp.dataset.sequences())]
  retriever = context_lib.Retriever(rcfg, exp.dataset.num_items, exp.config.data.max_len, train,
                                    full)
  rng = np.random.default_rng(table_seed)
  retriever.refresh(rng.normal(size=(exp.spec.cfg.vocab_size, 8)).astype(np.float32), step=0)
  return retriever


@pytest.mark.parametrize('source', ['items', 'users', 'both'])
def test_user_exclusion_never_holds_target_or_later_items(experiment, source):
  """train_exclude='user' (the rule before 'history'): no item of the row's user, ever."""
  exp = experiment
  retriever = _retriever(exp, source=source, train_exclude='user')
  rcfg = retriever.cfg
  # Later in time than a training window: its own targets, and the user's validation/test items.
  later = {int(u): set() for u in exp.split.valid.users}
  for ex in (exp.split.valid, exp.split.test):
    for u, t in zip(ex.users, ex.targets):
      later[int(u)].add(int(t))
  checked = leaks_without_exclusion = 0
  for batch in _batches(exp):
    ctx = retriever.train_batch(batch)['context']  # [b, seq, C]
    unfiltered = retriever.context(batch['inputs'], [[] for _ in batch['users']], batch['users'])
    assert ctx.shape == batch['inputs'].shape + (rcfg.num_context,)
    for r, u in enumerate(batch['users']):
      window = np.concatenate([batch['inputs'][r], batch['targets'][r][-1:]])  # items in time order
      for p in np.flatnonzero(ctx[r].any(axis=1)):
        assert p in retriever.cutoffs and batch['inputs'][r, p] > 0
        future = set(window[p + 1:].tolist()) | later.get(int(u), set())
        future.discard(0)
        got = set(ctx[r, p].tolist()) - {0}
        assert not got & future, (r, p, got & future)
        assert not got & set(window[:p + 1].tolist())  # the history is in memory already
        checked += 1
        leaks_without_exclusion += bool(set(unfiltered[r, p].tolist()) & future)
  assert checked > 50
  # The exclusion is what keeps them out: unfiltered retrieval does hit later items.
  assert leaks_without_exclusion > 0


def _later_changed(train, users_cut, num_items, seed):
  """``train`` with every item after position ``cut`` of each (user, cut) replaced at random (by
  other items)."""
  rng = np.random.default_rng(seed)
  out = list(train)
  for u, cut in users_cut.items():
    seq = np.array(out[u])
    seq[cut + 1:] = (seq[cut + 1:] + rng.integers(1, num_items, len(seq) - cut - 1) - 1) % num_items + 1
    out[u] = seq
  return out


@pytest.mark.parametrize('source', ['items', 'users', 'both'])
def test_training_context_at_a_cutoff_ignores_later_items(experiment, source):
  """train_exclude='history': the context at cutoff p of a window is a function of the user's
  items up to p (with a fixed index): replacing the targets and every later item changes nothing
  at p. Under train_exclude='user' it does change (the exclusion reads the later items)."""
  exp = experiment
  m = exp.config.data.max_len
  base = _retriever(exp, source=source)
  batch = _batches(exp, all_windows=True)[0]
  starts = base.window_ends(batch['inputs'], batch['targets'], batch['users']) - m - 1
  # One (row, cutoff) per user: a cutoff whose target exists, picked at random.
  rng = np.random.default_rng(1)
  picks = {}
  for r, u in enumerate(batch['users'].tolist()):
    ps = [p for p in base.cutoffs if batch['inputs'][r, p] > 0 and batch['targets'][r, p] > 0]
    if u not in picks and ps:
      picks[u] = (r, int(rng.choice(ps)))
  # One user changed at a time: the 'users' source reads other users' sequences, whole.
  differs = {'history': [], 'user': []}
  for mode in differs:
    before = _retriever(exp, source=source, train_exclude=mode).train_batch(batch)['context']
    for u, (r, p) in picks.items():
      changed_train = _later_changed(exp.split.train, {u: starts[r] + p}, exp.dataset.num_items,
                                     seed=u)
      window = pipeline.make_windows([changed_train[u][:starts[r] + m + 1]], m)[0][0]
      assert np.array_equal(window[:p + 1], batch['inputs'][r, :p + 1])
      changed_batch = dict(batch, inputs=batch['inputs'].copy(), targets=batch['targets'].copy())
      changed_batch['inputs'][r] = window[:-1]
      changed_batch['targets'][r] = np.where(window[:-1] > 0, window[1:], 0)
      assert not np.array_equal(changed_batch['targets'][r], batch['targets'][r])
      changed = _retriever(exp, changed_train, source=source, train_exclude=mode)
      for name in ('table', 'index', 'user_index'):  # a fixed index: the one before the change
        setattr(changed, name, getattr(base, name))
      after = changed.train_batch(changed_batch)['context']
      if not np.array_equal(before[r, :p + 1], after[r, :p + 1]):
        differs[mode].append(u)
  assert not differs['history'], differs
  assert differs['user']  # the old rule's exclusion reads the later items
  assert len(picks) > 20


@pytest.mark.parametrize('source', ['items', 'users', 'both'])
def test_training_context_equals_evaluation_context_of_the_same_history(experiment, source):
  """The context at cutoff p of a training window is the evaluation context of a case whose
  history is the user's training sequence up to p: the same query, the same exclusion. Every
  position is a cutoff, windows start mid-sequence, so the queries read items before them too."""
  exp = experiment
  m = exp.config.data.max_len
  retriever = _retriever(exp, source=source, num_cutoffs=m, query_window=3)
  users, histories, train_ctx = [], [], []
  for batch in _batches(exp, all_windows=True)[:2]:
    ctx = retriever.train_batch(batch)['context']
    starts = retriever.window_ends(batch['inputs'], batch['targets'], batch['users']) - m - 1
    for r, u in enumerate(batch['users'].tolist()):
      for p in np.flatnonzero(batch['inputs'][r] > 0):
        users.append(u)
        histories.append(exp.split.train[u][:starts[r] + p + 1])
        train_ctx.append(ctx[r, p])
  assert min(len(h) for h in histories) == 1 and max(len(h) for h in histories) > m
  cases = splits.EvalExamples.from_lists(users, histories, np.ones(len(users), np.int32))
  arrays = retriever.eval_arrays(pipeline.eval_arrays(cases, m, 64))
  np.testing.assert_array_equal(arrays.context[:len(users), -1], np.stack(train_ctx))
  assert (np.stack(train_ctx) > 0).sum(axis=1).min() > 0


def test_training_rows_must_be_windows_of_the_user(experiment):
  exp = experiment
  retriever = _retriever(exp)
  batch = _batches(exp)[0]
  wrong = dict(batch, users=np.roll(batch['users'], 1))
  with pytest.raises(ValueError, match="row 0 is not a window of user"):
    retriever.train_batch(wrong)


def test_eval_context_excludes_only_the_history(experiment):
  exp = experiment
  retriever = context_lib.for_experiment(exp)
  retriever.refresh(np.random.default_rng(1).normal(size=(exp.spec.cfg.vocab_size, 8)), step=0)
  arrays = retriever.eval_arrays(exp.eval_arrays('valid'))
  n = int(arrays.valid.sum())
  assert arrays.context.shape == arrays.inputs.shape + (exp.config.retrieval.num_context,)
  filled = arrays.context[:n, -1]  # the last position always has a cutoff
  assert (filled > 0).sum(axis=1).min() > 0
  for row, seen in zip(filled, arrays.histories(slice(0, n))):
    assert not (set(row.tolist()) - {0}) & (set(seen.tolist()) - {0})


def test_decoder_sees_context_only_from_its_cutoff_on(experiment):
  exp = experiment
  params = state_lib.init_params(exp.spec, 0)
  params = jax.tree_util.tree_map_with_path(  # open the zero-initialised cross-attention gates
      lambda path, x: jnp.ones_like(x) if 'gate' in jax.tree_util.keystr(path) else x, params)

  @jax.jit
  def hidden(params, items, ctx):
    model = nnx.merge(exp.spec.graphdef, params)
    catalog = model.encode_catalog(exp.content)
    return model(items, catalog, context=ctx), model(items, catalog)

  seq = exp.config.data.max_len
  items = jnp.asarray(np.arange(1, seq + 1)[None] % exp.dataset.num_items + 1, jnp.int32)
  ctx = np.zeros((1, seq, 3), np.int32)
  base, plain = hidden(params, items, jnp.asarray(ctx))
  p = seq // 2
  ctx[0, p] = [5, 9, 11]
  with_ctx, _ = hidden(params, items, jnp.asarray(ctx))
  base, plain, with_ctx = (np.asarray(x[0]) for x in (base, plain, with_ctx))
  np.testing.assert_allclose(base[:p], with_ctx[:p], atol=1e-6)
  assert np.abs(base[p:] - with_ctx[p:]).max(axis=-1).min() > 1e-4
  np.testing.assert_allclose(base, plain, atol=1e-6)  # empty context = the plain model


def test_rag_config_errors():
  with pytest.raises(ConfigError, match='retrieval.rag.*cross_attention_every'):
    context_lib.validate(tiny_config(**{'retrieval.rag': True}))
  with pytest.raises(ConfigError, match='retrieval.source'):
    context_lib.validate(rag_config(**{'retrieval.source': 'friends'}))
  with pytest.raises(ConfigError, match='retrieval.train_exclude'):
    context_lib.validate(rag_config(**{'retrieval.train_exclude': 'window'}))


def test_training_with_rag_refreshes_and_evaluates(tmp_path, monkeypatch):
  built = []
  real = context_lib.Retriever.refresh
  monkeypatch.setattr(context_lib.Retriever, 'refresh',
                      lambda self, table, step=None: (built.append(step), real(self, table, step)))
  c = rag_config(**{'retrieval.refresh_every': 2, 'train.max_steps': 5, 'train.eval_every': 3})
  results = trainer.train_and_evaluate(c, tmp_path)
  # Rebuilt before the first step, at every 2nd step, at the evaluations (3, 5) and for the final
  # evaluation of the best checkpoint; the step-4 rebuild comes from the schedule, not an evaluation.
  assert built[:5] == [0, 2, 3, 4, 5], built
  assert len(built) >= 6
  assert 0.0 <= results['test']['ndcg@10'] <= results['test']['hr@10'] <= 1.0
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'train_log.jsonl').read_text().splitlines()
            if 'loss' in l]
  assert len(losses) == 5 and all(np.isfinite(losses))


def test_interrupted_rag_run_resumes_exactly(tmp_path):
  """The retrieval snapshot is checkpointed: stopping between refreshes and resuming retrieves what
  the uninterrupted run retrieved, so every logged loss matches."""
  c = rag_config(**{'retrieval.refresh_every': 12, 'train.num_epochs': 3,
                    'train.eval_every': 1000, 'optimizer.learning_rate': 1e-2})
  full = trainer.train_and_evaluate(c, tmp_path / 'full')
  # Step 11: eleven steps after the step-0 build, before the step-12 one; a resumed run that
  # rebuilt the index from the step-11 parameters would retrieve different context.
  assert trainer.train_and_evaluate(c, tmp_path / 'resumed', stop_after_steps=11)['step'] == 11
  resumed = trainer.train_and_evaluate(c, tmp_path / 'resumed')
  a, b = read_log(tmp_path / 'full'), read_log(tmp_path / 'resumed')
  assert sorted(a) == sorted(b) and len(a) > 8
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  assert resumed['test'] == pytest.approx(full['test'])
