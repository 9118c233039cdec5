"""Retrieval-augmented generation: no leakage into training context, causal visibility in the
decoder, and a training run with retrieval refreshed on a schedule."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import read_log, tiny_config
from llm4rec_jax.data import pipeline
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


def _batches(exp):
  windows, users = pipeline.make_windows(exp.split.train, exp.config.data.max_len)
  ds = pipeline.train_dataset(windows, users, global_batch_size=64, seed=0, num_epochs=1)
  return list(ds.to_iter_dataset())


@pytest.mark.parametrize('source', ['items', 'users', 'both'])
def test_training_context_never_holds_target_or_later_items(experiment, source):
  exp = experiment
  rcfg = exp.config.retrieval.as_configdict()  # a mutable copy of the frozen config
  rcfg.source = source
  retriever = context_lib.Retriever(rcfg, exp.dataset.num_items, exp.config.data.max_len,
                                    exp.split.train, [np.unique(s) for s in exp.dataset.sequences()])
  rng = np.random.default_rng(0)
  retriever.refresh(rng.normal(size=(exp.spec.cfg.vocab_size, 8)).astype(np.float32), step=0)
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
