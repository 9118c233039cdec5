"""Online adaptation: event streams, the incremental step, item registration and growth, replay,
snapshots and resume, the `llm4rec adapt` command."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from llm4rec_jax.data import events as events_lib
from llm4rec_jax.errors import ConfigError, DataError
from llm4rec_jax.online import OnlineLearner, ReplayBuffer, micro_batches, open_events
from llm4rec_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = {'train.max_steps': 4, 'train.eval_every': 4, 'train.num_epochs': 1,
         # These tests were written for one full-window step per micro-batch with its metrics
         # fetched every step and linear catalog growth (the earlier defaults): saved with the
         # workdir, so every learner here starts from them. The real-time defaults are what
         # test_warm_up_* (explicit overrides) and the online_adaptation quick benchmark run.
         'online': {'window': 0, 'sync_every': 1, 'grow': 'linear', 'reserve_items': 0}}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny model trained for a few steps on the synthetic data (8-device data-parallel mesh)."""
  workdir = tmp_path_factory.mktemp('online') / 'trained'
  trainer.train_and_evaluate(tiny_config(**SMALL), workdir)
  return workdir


@pytest.fixture
def workdir(trained, tmp_path):
  """A private copy (learners write snapshots into the workdir)."""
  return pathlib.Path(shutil.copytree(trained, tmp_path / 'w'))


def _crash_after(events, n):
  """``events``, raising after the first ``n`` (a learner process dying mid-stream)."""
  for k, e in enumerate(events):
    if k == n:
      raise RuntimeError('crash')
    yield e


def _events(n, seed=0, new_every=0):
  """``n`` interactions of known users on known items (synthetic raw ids 'u1..', 'i1..');
  every ``new_every``-th uses a new item."""
  rng = np.random.default_rng(seed)
  out = []
  for k in range(n):
    item = f'new{k}' if new_every and k % new_every == 0 else f'i{rng.integers(1, 121)}'
    out.append({'user': f'u{rng.integers(1, 40)}', 'item': item, 'timestamp': 1000 + k})
  return out


def _params(learner):
  return jax.tree_util.tree_leaves_with_path(jax.device_get(learner.state['params']))


@pytest.mark.parametrize('selection,expect', [
    ('item_embed', {"['item_embed']"}),
    ('blocks.0.mlp', {"['blocks'][0]['mlp']['w_down']", "['blocks'][0]['mlp']['w_gate']",
                      "['blocks'][0]['mlp']['w_up']"}),
])
def test_one_step_changes_only_the_chosen_parameters(workdir, selection, expect):
  learner = OnlineLearner(workdir, overrides={'params': selection, 'learning_rate': 1e-2,
                                              'batch_size': 8, 'replay_batch': 8})
  before = _params(learner)
  events = [events_lib.parse_event(e) for e in _events(8)]
  metrics = learner.learn(events)
  assert int(learner.state['step']) == 1 and np.isfinite(metrics['loss'])
  changed = {jax.tree_util.keystr(p) for (p, a), (_, b) in zip(before, _params(learner))
             if not np.array_equal(a, b)}
  assert changed == expect
  # Sharded exactly as in training: the item table along the catalog axis.
  assert learner.state['params']['item_embed'].sharding.spec == learner.shardings['params'][
      'item_embed'].spec
  learner.close()


def test_unknown_parameter_selection_is_a_config_error(workdir):
  with pytest.raises(ConfigError, match='online.params'):
    OnlineLearner(workdir, overrides={'params': 'no_such_layer'})
  with pytest.raises(ConfigError, match='online.batch_size'):
    OnlineLearner(workdir, overrides={'batch_size': 12})  # 8-way data parallel mesh
  with pytest.raises(ConfigError, match='online.learning_rat'):
    OnlineLearner(workdir, overrides={'learning_rat': 1e-3})


def test_new_items_become_scorable_and_learnable_and_the_tables_grow(workdir):
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8,
                                              'learning_rate': 3e-2, 'grow_items': 1})
  vocab, n = learner.catalog.vocab_size, learner.catalog.num_items
  assert (vocab, n) == (128, 120)
  probe = [events_lib.Event(user='u5', item='fresh')]
  assert learner.rank(probe)[0] >= n  # unknown: a miss
  learner.register_items(['fresh'])
  row = learner.catalog.get('fresh')
  assert row == n + 1 and bool(np.asarray(learner.catalog_mask)[row])
  assert learner.rank(probe)[0] < n + 1  # scorable now
  # Learning "user -> fresh" moves it up the user's ranking.
  first = learner.rank(probe)[0]
  for _ in range(5):  # other users (the probe's own history must not contain it: seen items
    learner.learn([events_lib.Event(user=f'u{u}', item='fresh') for u in range(10, 18)])
  assert learner.rank(probe)[0] < first
  recs = learner.recommend('u5', 5)  # the adapted model serves raw ids, seen items excluded
  assert len(set(recs)) == 5 and not {learner.catalog.get(r) for r in recs} & set(
      learner.histories['u5'])
  # Capacity: 7 free rows; 20 new items grow every catalog-sharded array to the next multiple.
  old = jax.device_get(learner.state['params']['item_embed'])
  learner.register_items([f'more{k}' for k in range(20)])
  assert learner.catalog.vocab_size == 256 and learner.catalog.num_items == n + 21
  emb = learner.state['params']['item_embed']
  assert emb.shape == (256, 32)
  assert emb.sharding.spec == learner.shardings['params']['item_embed'].spec
  grown = np.asarray(jax.device_get(emb))
  np.testing.assert_array_equal(grown[:n + 1], old[:n + 1])  # trained rows kept
  assert not grown[n + 2:n + 22].any()  # new items start from zero rows
  assert np.asarray(learner.catalog_mask).sum() == n + 21
  learner.learn([events_lib.Event(user='u7', item=f'more{k}') for k in range(20)])
  assert learner.rank([events_lib.Event(user='u8', item='more19')])[0] < n + 21
  # The vocabulary size is learner state; the validated config stays as loaded, read-only.
  assert learner.cfg.vocab_size == 256 and learner.config.model.vocab_size == 128
  with pytest.raises(AttributeError, match='immutable'):
    learner.config.model.vocab_size = 256
  learner.close()


def test_new_item_rows_learn_at_new_item_learning_rate_and_other_rows_do_not(workdir):
  """online.new_item_learning_rate applies to the rows of items registered online only."""
  events = [events_lib.parse_event(e) for e in _events(8, seed=5, new_every=3)]

  def one_step(new_lr):
    learner = OnlineLearner(workdir, resume=False, overrides={
        'batch_size': 8, 'replay_batch': 8, 'learning_rate': 1e-3, 'params': 'all',
        'new_item_init': 'zero', 'new_item_learning_rate': new_lr})
    start = np.asarray(jax.device_get(learner.state['params']['item_embed']))
    learner.learn(events)
    params = jax.device_get(learner.state['params'])
    new_rows = [learner.catalog.get(f'new{k}') for k in (0, 3, 6)]
    learner.close()
    return start, params, new_rows

  start, base, rows = one_step(0.0)  # = online.learning_rate
  _, fast, rows_fast = one_step(1e-2)
  assert rows == rows_fast == [121, 122, 123]
  n = 120
  emb, emb_fast = np.asarray(base['item_embed']), np.asarray(fast['item_embed'])
  # Trained items and the padding row: the very same update at either scale (and they did move).
  np.testing.assert_array_equal(emb_fast[:n + 1], emb[:n + 1])
  assert not np.array_equal(emb[1:n + 1], start[1:n + 1])
  # New items start from zero rows: one step moves them 10x as far.
  assert np.abs(emb[rows]).sum(axis=1).min() > 0  # each new row moved
  np.testing.assert_allclose(emb_fast[rows], 10.0 * emb[rows], rtol=1e-5, atol=1e-9)
  # Every other parameter is unaffected by the scale.
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(base),
                               jax.tree_util.tree_leaves_with_path(fast)):
    if jax.tree_util.keystr(path) != "['item_embed']":
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match='online.new_item_learning_rate'):
    OnlineLearner(workdir, overrides={'new_item_learning_rate': -1.0})


def test_l2_pull_keeps_the_adapted_weights_near_the_trained_ones(workdir):
  events = [events_lib.parse_event(e) for e in _events(40, seed=3)]

  def drift(pull):
    learner = OnlineLearner(workdir, resume=False, overrides={
        'batch_size': 8, 'replay_batch': 0, 'learning_rate': 1e-2, 'l2_pull': pull,
        'params': 'item_embed'})
    start = np.asarray(jax.device_get(learner.state['params']['item_embed']))
    for s in range(0, 40, 8):
      learner.learn(events[s:s + 8])
    end = np.asarray(jax.device_get(learner.state['params']['item_embed']))
    learner.close()
    return np.linalg.norm(end - start)

  assert drift(50.0) < 0.5 * drift(0.0)


def test_resume_from_a_snapshot_continues_at_the_recorded_position(workdir, tmp_path):
  path = tmp_path / 'events.jsonl'
  events_lib.write_jsonl(path, _events(56, seed=1, new_every=9))
  overrides = {'batch_size': 8, 'replay_batch': 8, 'snapshot_every': 16, 'learning_rate': 1e-2}
  reference_dir = pathlib.Path(shutil.copytree(workdir, tmp_path / 'ref'))

  learner = OnlineLearner(workdir, overrides=overrides)
  with pytest.raises(RuntimeError, match='crash'):
    learner.run(_crash_after(open_events(path), 44))
  learner.close()
  # Snapshots after 16 and 32 records; the 8 records applied after the last one are lost.
  resumed = OnlineLearner(workdir, overrides=overrides)
  assert resumed.position == 32 and int(resumed.state['step']) == 4
  summary = resumed.run(path)
  assert summary.records == 24 and resumed.position == 56

  reference = OnlineLearner(reference_dir, overrides=overrides)
  reference.run(path)
  assert reference.catalog.raw_ids == resumed.catalog.raw_ids
  assert reference.histories == resumed.histories
  for (p, a), (_, b) in zip(_params(reference), _params(resumed)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(p))
  resumed.close(), reference.close()


def test_recommender_serves_the_adapted_snapshot(workdir):
  from llm4rec_jax.errors import CheckpointError, UnknownIdError  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.serving import Recommender  # pylint: disable=import-outside-toplevel
  with pytest.raises(CheckpointError, match='no online snapshot'):
    Recommender(workdir, snapshot='latest')
  trained = Recommender(workdir, snapshot='auto')  # no snapshot yet: the training checkpoint
  assert trained.snapshot_position is None
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8,
                                              'learning_rate': 3e-2})
  learner.run(_events(40, seed=4, new_every=5))
  learner.close()
  history = [learner.catalog.raw_ids[i] for i in learner.histories['u5']]
  expected = learner.recommend('u5', 5)
  for which in ('auto', 'latest', 40):
    adapted = Recommender(workdir, snapshot=which)
    assert adapted.snapshot_position == 40 and adapted.raw_ids == learner.catalog.raw_ids
    assert [r['item'] for r in adapted.recommend(history, 5)['recommendations']] == expected
  # The adapted parameters, not the training ones; new items are known only to the snapshot.
  none = Recommender(workdir, snapshot='none')
  assert none.snapshot_position is None
  assert adapted.recommend(history, 5) != none.recommend(history, 5)
  assert adapted.recommend(['new0'], 3)['snapshot_position'] == 40
  with pytest.raises(UnknownIdError):
    none.recommend(['new0'], 3)
  with pytest.raises(CheckpointError, match='no online snapshot at stream position 7'):
    Recommender(workdir, snapshot=7)


def test_a_text_finetuned_workdir_is_refused_with_a_clear_error(workdir):
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  (workdir / workdir_lib.TEXT_ENCODER).write_text('{}')  # what a text fine-tuning run leaves
  with pytest.raises(ConfigError, match='text_finetune.enabled.*trained with text fine-tuning'):
    OnlineLearner(workdir)


def test_replay_buffer_policies_capacity_and_exact_restore():
  windows = np.arange(1, 1001, dtype=np.int32)[:, None].repeat(3, axis=1)
  recent = ReplayBuffer(10, 3, policy='recent')
  recent.add(windows)
  assert len(recent) == 10 and set(recent.windows[:, 0]) == set(range(991, 1001))
  # Reservoir: a uniform sample of everything offered (old items stay represented).
  kept = []
  for seed in range(20):
    r = ReplayBuffer(100, 3, seed=seed)
    r.add(windows)
    assert len(r) == 100 and r.offered == 1000
    kept.append(r.windows[:, 0])
  kept = np.concatenate(kept)
  assert 0.4 < (kept <= 500).mean() < 0.6
  # Sampling draws stored rows; a restored buffer continues exactly like the original.
  r = ReplayBuffer(100, 3, seed=1)
  r.add(windows[:300])
  clone = ReplayBuffer(100, 3, seed=1)
  clone.load_state(r.state())
  r.add(windows[300:]), clone.add(windows[300:])
  np.testing.assert_array_equal(r.sample(16), clone.sample(16))
  assert set(r.sample(64)[:, 0]) <= set(r.windows[:, 0])
  assert not ReplayBuffer(5, 3).sample(4).any()  # empty: padding rows (no targets)
  with pytest.raises(ConfigError, match='online.replay_policy'):
    ReplayBuffer(5, 3, policy='lifo')


def test_replay_rows_are_mixed_into_every_step(workdir):
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 16})
  assert len(learner.replay) > 0  # seeded from the training data
  draws, offered = learner.replay.draws, learner.replay.offered
  metrics = learner.learn([events_lib.parse_event(e) for e in _events(8, seed=2)])
  assert learner.replay.draws == draws + 1
  assert learner.replay.offered == offered + 8  # every event's user has a history
  assert metrics['num_targets'] > 8  # stream rows (at most 8) + replay rows
  learner.close()


def test_event_files_report_bad_lines_and_batch_by_size_and_time(tmp_path):
  path = tmp_path / 'e.jsonl'
  path.write_text('{"user": "u1", "item": "a", "timestamp": 5}\n\n{"user": "u1", "item": }\n')
  with pytest.raises(DataError, match=r'e.jsonl:3: not valid JSON'):
    list(open_events(path))
  path.write_text('{"user": "u1", "item": "a"}\n{"user": "u1", "itme": "b"}\n')
  with pytest.raises(DataError, match=r"e.jsonl:2, field 'itme': unknown key"):
    list(open_events(path))
  path.write_text('{"user": "u1", "item": "a", "timestamp": "noon"}\n')
  with pytest.raises(DataError, match=r"e.jsonl:1, field 'timestamp'"):
    list(open_events(path))
  events = [events_lib.Event(user='u', item=str(k), timestamp=float(t))
            for k, t in enumerate([0, 1, 2, 10, 11, 30, 31, 32, 33])]
  assert [len(b) for b in micro_batches(events, size=4)] == [4, 4, 1]
  assert [len(b) for b in micro_batches(events, size=4, window_s=5)] == [3, 2, 4]
  assert [e.item for e in open_events(iter([{'user': 1, 'item': 2}] * 3), skip=2)] == ['2']

  release = threading.Event()

  def slow():  # two events, then a pause far longer than max_wait_s
    yield from events[:2]
    release.wait(timeout=10)
    yield events[2]

  batches = micro_batches(slow(), size=4, max_wait_s=0.05)
  assert len(next(batches)) == 2  # closed by the wait, not by the size
  release.set()
  assert [len(b) for b in batches] == [1]


def test_event_log_trains_a_model_and_adapt_command_reads_stdin(tmp_path):
  rng = np.random.default_rng(0)
  log = [{'user': f'u{u}', 'item': f'i{int(rng.integers(0, 30))}', 'timestamp': 100 * u + k,
          'features': {'genre': [f'g{k % 3}']}} for u in range(64) for k in range(6)]
  events_lib.write_jsonl(tmp_path / 'log.jsonl', log)
  ds = events_lib.read_events_dataset(tmp_path / 'log.jsonl')
  assert ds.num_users == 64 and ds.has_timestamps and 'genre' in ds.items.categorical
  config = tiny_config(**{'data.name': f'events:{tmp_path / "log.jsonl"}', 'train.max_steps': 2,
                          'train.eval_every': 2, 'mesh.num_devices': 1, 'mesh.shape': (1, 1, 1)})
  workdir = tmp_path / 'w'
  trainer.train_and_evaluate(config, workdir)
  stream = '\n'.join(json.dumps({'user': 'u1', 'item': i}) for i in ('i3', 'brand-new', 'i4'))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'adapt', f'--workdir={workdir}',
                         '--events=-', '--online=batch_size=2', '--online=replay_batch=2',
                         '--prequential'], input=stream, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out['records'] == 3 and out['new_items'] == 1 and out['position'] == 3
  assert out['prequential']['num_cases'] == 3
  # adapt warms up, so the stream itself compiles nothing (registration of 'brand-new' included).
  assert out['warm_up']['compilations'] > 0 and out['compilations'] == 0
  # The same settings as above, so its warm-up loads the programs compiled above from the tests'
  # compilation cache.
  bad = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'adapt', f'--workdir={workdir}',
                        '--events=-', '--online=batch_size=2', '--online=replay_batch=2'],
                       input='{"user": "u1"}\n', cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "<stdin>:1, field 'item': missing item id" in bad.stderr
  # `llm4rec recommend` serves the adapted snapshot by default (the new item is known to it).
  rec = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'recommend',
                        f'--workdir={workdir}', '--history=i3,brand-new', '--top_k=3'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert rec.returncode == 0, rec.stderr[-3000:]
  out = json.loads(rec.stdout)
  assert out['snapshot_position'] == 3 and len(out['recommendations']) == 3


def test_new_items_get_content_rows_in_a_content_model(tmp_path):
  config = tiny_config(**SMALL, **{'content.categorical': 'category', 'content.numeric': 'price',
                                   'model.item_repr': 'both', 'mesh.num_devices': 1,
                                   'mesh.shape': (1, 1, 1)})
  trainer.train_and_evaluate(config, tmp_path)
  learner = OnlineLearner(tmp_path, overrides={'batch_size': 8, 'replay_batch': 8})
  rows = learner.register_items(['gadget', 'bare'], [{'category': ['cat_03'], 'price': 12.5},
                                                       None])
  c = learner.content_np
  cat = learner.content_rows.cat_index['category']['cat_03']
  assert c.categorical[0][rows[0], 0] == cat and c.numeric_mask[rows[0], 0]
  assert not c.categorical[0][rows[1]].any() and not c.numeric_mask[rows[1]].any()
  assert c.id_known[rows[0]] and c.id_known[rows[1]]  # real softmax candidates from now on
  mu, sd = learner.content_rows.num_stats['price']
  np.testing.assert_allclose(c.numeric[rows[0], 0], (12.5 - mu) / sd, rtol=1e-6)
  # With a zero id row, the new item's vector is exactly its fused content embedding.
  graphdef, params = learner.spec.graphdef, learner.state['params']
  model = nnx.merge(graphdef, params)
  content = learner.content
  table = np.asarray(model.encode_catalog(content).table)
  emb = np.asarray(model.fusion(content)[0])
  np.testing.assert_allclose(table[rows[0]], emb[rows[0]], rtol=1e-6, atol=1e-6)
  assert np.abs(table[rows[0]]).sum() > 0
  assert learner.rank([events_lib.Event(user='u3', item='gadget')])[0] < learner.catalog.num_items
  learner.close()


def test_new_and_changed_items_are_upserted_into_the_scann_index(workdir):
  from llm4rec_jax.retrieval import ItemIndex  # pylint: disable=import-outside-toplevel
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8})
  n = learner.catalog.num_items

  def table():
    rows = np.arange(1, learner.catalog.num_items + 1)
    return rows, np.asarray(learner.programs.table_rows(learner.state['params'], learner.content, rows))
  learner.index = ItemIndex.build(table()[1], table()[0])  # brute force at this size: exact
  learner.learn([events_lib.Event(user='u3', item='i5'), events_lib.Event(user='u4', item='novel')])
  assert learner.catalog.get('novel') == n + 1 and n + 1 in set(learner.index.ids.tolist())
  learner.snapshot()  # every vector up to date
  rows, vectors = table()
  queries = np.random.default_rng(0).normal(size=(4, vectors.shape[1])).astype(np.float32)
  ids, _ = learner.index.search_batched(queries, 5)
  np.testing.assert_array_equal(ids, rows[np.argsort(-(queries @ vectors.T), axis=1)[:, :5]])
  learner.close()


def test_registering_items_compiles_nothing_after_warm_up(workdir):
  """Item registration (zero rows, imprinted rows, the step after it) reuses compiled programs."""
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8})
  assert learner.oc.new_item_init == 'imprint'
  rng = np.random.default_rng(0)

  def learn_with(new_items):
    items = list(new_items) + [f'i{k}' for k in rng.integers(1, 121, 8 - len(new_items))]
    learner.learn([events_lib.Event(user=f'u{u}', item=it) for u, it in zip(range(10, 18), items)])

  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learn_with(['warm0'])  # compiles the step, the row updates and the imprint query
  learner.register_items(['warm1'])
  with CompileCounter() as counter:
    learn_with(['new0'])
    learner.register_items(['new1', 'new2'])
    learn_with(['new3', 'new4'])
  assert learner.catalog.num_items == 127 and learner.catalog.vocab_size == 128  # no growth
  assert counter.count == 0, f'{counter.count} compilations after warm-up'
  assert learner.programs.zero_rows._cache_size() == 1  # pylint: disable=protected-access
  learner.close()


def test_warm_up_compiles_ahead_so_growth_and_serving_compile_nothing(workdir):
  """With pow2 growth, warm_up compiles the next catalog size too: registering items past the
  reserve (in a step and on their own), stepping, syncing and serving compile nothing (counted by
  jax.monitoring)."""
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8, 'grow': 'pow2',
                                              'window': 4, 'sync_every': 3})
  assert learner.train_width == 5 and learner.replay.width == 5
  info = learner.warm_up()
  assert info['vocab_sizes'] == [128, 256] and info['compilations'] > 0
  rng = np.random.default_rng(0)
  metrics = []
  with CompileCounter() as counter:
    for k in range(6):  # 6 x 2 new items: past the 7 free rows, into the 256-row bucket
      items = [f'fresh{k}a', f'fresh{k}b'] + [f'i{j}' for j in rng.integers(1, 121, 6)]
      metrics.append(learner.learn([events_lib.Event(user=f'u{u}', item=it)
                                    for u, it in zip(range(10, 18), items)]))
      learner.recommend(f'u{10 + k}')
    assert learner.register_items(['extra0', 'extra1']) == [133, 134]  # outside a step too
    learner.sync()
  assert learner.catalog.vocab_size == 256 and learner.catalog.num_items == 134
  assert counter.count == 0, f'{counter.count} compilations after warm-up'
  # Metrics reach the host every third step only.
  assert [bool(m) for m in metrics] == [False, False, True, False, False, True]
  assert np.isfinite(metrics[2]['loss'])
  assert learner.rank([events_lib.Event(user='u3', item='fresh5b')])[0] < learner.catalog.num_items
  learner.close()


def test_reserve_items_grows_at_load_and_pow2_sizes(workdir):
  from llm4rec_jax.online.catalog import grown_vocab  # pylint: disable=import-outside-toplevel
  assert grown_vocab(1793, 1792, 1024, 128) == 2816
  assert grown_vocab(1793, 1792, 1024, 128, 'pow2') == 2048
  assert grown_vocab(2049, 2048, 1, 128, 'pow2') == 4096
  assert grown_vocab(129, 128, 1, 384, 'pow2') == 384  # still a multiple of the catalog shards
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8, 'grow': 'pow2',
                                              'reserve_items': 100})
  assert learner.catalog.vocab_size == 256 and learner.catalog.free_rows >= 100
  assert learner.state['params']['item_embed'].shape[0] == 256
  learner.close()
  with pytest.raises(ConfigError, match='online.grow'):
    OnlineLearner(workdir, overrides={'grow': 'cubic'})
  with pytest.raises(ConfigError, match='online.sync_every'):
    OnlineLearner(workdir, overrides={'sync_every': 0})


def test_bad_events_and_time_order_policies_raise_or_skip_with_line_numbers(tmp_path):
  path = tmp_path / 'e.jsonl'
  path.write_text('{"user": "u1", "item": "a", "timestamp": 5}\n'
                  '{"user": "u1", "item": }\n'
                  '{"user": "u1", "itme": "b", "timestamp": 6}\n'
                  '{"user": "u2", "item": "c", "timestamp": 4}\n'
                  '{"user": "u2", "item": "d", "timestamp": 7}\n')
  with pytest.raises(DataError, match=r'e.jsonl:2: not valid JSON'):
    list(open_events(path))
  skipped = []
  events = list(open_events(path, bad_events='skip', skipped=skipped))
  assert [e.item for e in events] == ['a', 'c', 'd']  # out of order accepted by default
  assert len(skipped) == 2 and 'e.jsonl:2' in skipped[0] and "e.jsonl:3, field 'itme'" in skipped[1]
  with pytest.raises(DataError, match=r"e.jsonl:4, field 'timestamp': timestamp 4 is before"):
    list(open_events(path, bad_events='skip', time_order='raise'))
  skipped = []
  events = list(open_events(path, bad_events='skip', time_order='skip', skipped=skipped, skip=1))
  assert [e.item for e in events] == ['d'] and len(skipped) == 3 and 'e.jsonl:4' in skipped[2]
  records = [{'user': 'u', 'item': 'x', 'timestamp': 2}, {'user': 'u', 'itm': 'y'},
             {'user': 'u', 'item': 'z', 'timestamp': 1}]
  skipped = []
  assert [e.item for e in open_events(records, bad_events='skip', time_order='skip',
                                      skipped=skipped)] == ['x']
  assert "<iterator>:2, field 'itm'" in skipped[0] and '<iterator>:3' in skipped[1]


def test_warm_up_with_an_index_and_skipping_bad_records_in_run(workdir, tmp_path):
  """Index upserts (batched to the syncs) compile nothing after warm-up; run() applies the
  bad-record and time-order policies and counts what it skipped."""
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.retrieval import ItemIndex  # pylint: disable=import-outside-toplevel
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8, 'sync_every': 2,
                                              'bad_events': 'skip', 'time_order': 'skip'})
  rows = np.arange(1, learner.catalog.num_items + 1)
  vectors = np.asarray(learner.programs.table_rows(learner.state['params'], learner.content, rows))
  learner.index = ItemIndex.build(vectors, rows)
  learner.warm_up()
  path = tmp_path / 'events.jsonl'
  records = _events(16, seed=3, new_every=5)
  lines = [json.dumps(r) for r in records]
  lines.insert(3, '{"user": "u1", "item": ')  # malformed
  lines.insert(9, json.dumps({'user': 'u2', 'item': 'i3', 'timestamp': 1}))  # back in time
  path.write_text('\n'.join(lines) + '\n')
  with CompileCounter() as counter:
    summary = learner.run(path)
  assert summary.records == 16 and len(summary.skipped) == 2
  assert 'events.jsonl:4' in summary.skipped[0] and 'events.jsonl:10' in summary.skipped[1]
  assert summary.compilations == 0 and counter.count == 0
  new = learner.catalog.get('new0')
  assert new in set(learner.index.ids.tolist())  # upserted at a sync
  learner.close()


def test_warm_up_covers_the_l2_pull_step(workdir):
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8, 'l2_pull': 1.0,
                                              'window': 3})
  learner.warm_up()
  with CompileCounter() as counter:
    metrics = learner.learn([events_lib.parse_event(e) for e in _events(8, seed=4, new_every=4)])
  assert counter.count == 0 and np.isfinite(metrics['loss'])
  learner.close()


def test_resumed_runs_report_each_skipped_record_once_and_keep_the_grown_catalog(workdir, tmp_path):
  """A stream stopped after 24 records and resumed: the two runs' summaries name every malformed
  line once between them (the resumed run does not re-count those before its position); the
  snapshot carries the grown vocabulary while the config keeps the trained one."""
  overrides = {'batch_size': 8, 'replay_batch': 8, 'bad_events': 'skip', 'grow_items': 1}
  lines = [json.dumps(r) for r in _events(40, seed=6, new_every=2)]  # 20 new items: 7 rows free
  for at in (2, 9, 20, 30):  # malformed lines 3, 10 and 21 before record 25, 31 after it
    lines.insert(at, '{"user": "u1", "item": ')
  path = tmp_path / 'events.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  learner = OnlineLearner(workdir, overrides=overrides)
  first = learner.run(path, max_records=24)
  learner.close()
  assert first.position == 24 and learner.catalog.vocab_size == 256
  resumed = OnlineLearner(workdir, overrides=overrides)
  assert resumed.position == 24 and resumed.catalog.raw_ids == learner.catalog.raw_ids
  assert resumed.catalog.vocab_size == resumed.cfg.vocab_size == 256
  assert resumed.state['params']['item_embed'].shape[0] == 256
  assert resumed.config.model.vocab_size == 128  # the trained size, as saved with the workdir
  second = resumed.run(path)
  resumed.close()
  assert second.records == 16 and resumed.position == 40
  def lines_of(summary):
    return [int(re.search(r'events\.jsonl:(\d+)', m).group(1)) for m in summary.skipped]
  assert lines_of(first) == [3, 10, 21] and lines_of(second) == [31]
  assert first.to_json()['skipped_records'] + second.to_json()['skipped_records'] == 4


def test_snapshots_upsert_only_the_changed_item_vectors_in_one_call(workdir):
  """After incremental upserts the index holds what a full rebuild would (same top-k); a snapshot
  writes, in one call, exactly the rows whose vectors changed since they were last written."""
  from llm4rec_jax.online.programs import padded_rows  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.retrieval import ItemIndex  # pylint: disable=import-outside-toplevel

  class Recording:
    """The index, recording every upsert and the vector it holds per row."""

    def __init__(self, index):
      self.index, self.calls, self.held = index, [], {}

    def upsert(self, ids, vectors):
      self.calls.append(np.asarray(ids).tolist())
      self.held.update(zip(np.asarray(ids).tolist(), np.array(vectors)))
      self.index.upsert(ids, vectors)

  # Steps adapt one MLP only: item vectors move by registration and imprinting alone.
  learner = OnlineLearner(workdir, overrides={'batch_size': 8, 'replay_batch': 8, 'sync_every': 4,
                                              'params': 'blocks.0.mlp'})
  assert learner.imprint_leaf is not None

  def table():  # rows padded like the learner's upserts: the same program, the same numbers
    rows = np.arange(1, learner.catalog.num_items + 1)
    idx, _ = padded_rows(rows)
    return rows, np.asarray(learner.programs.table_rows(learner.state['params'], learner.content,
                                                        idx))[:len(rows)]
  rows, vectors = table()
  index = Recording(ItemIndex.build(vectors, rows))
  learner.index = index
  assert learner.upsert_index() == len(rows) == 120  # what a handed-over index holds is unknown
  assert learner.upsert_index() == 0 and len(index.calls) == 1
  for k in range(2):
    learner.learn([events_lib.Event(user=f'u{u}', item=f'fresh{k}' if u < 12 else f'i{u}')
                   for u in range(10, 18)])
  assert len(index.calls) == 3  # each registration wrote its new (zero) rows
  rows, now = table()
  changed = [int(r) for r, v in zip(rows, now) if not np.array_equal(index.held[int(r)], v)]
  assert changed == [121, 122]  # imprinted after registration; the trained rows did not move
  learner.snapshot()
  assert len(index.calls) == 4 and index.calls[-1] == changed
  assert all(np.array_equal(index.held[int(r)], v) for r, v in zip(rows, now))
  full = ItemIndex.build(now, rows)
  queries = np.random.default_rng(1).normal(size=(5, now.shape[1])).astype(np.float32)
  np.testing.assert_array_equal(index.index.search_batched(queries, 10)[0],
                                full.search_batched(queries, 10)[0])
  # Nothing moved: a later step and snapshot write nothing.
  learner.learn([events_lib.Event(user=f'u{u}', item=f'i{u}') for u in range(20, 28)])
  learner.snapshot()
  assert len(index.calls) == 4
  learner.close()


def test_snapshots_on_a_time_budget_bound_what_a_crash_loses(workdir):
  """online.snapshot_every_s: a snapshot once that much wall time passed since the last, so a crash
  loses at most that long of learning (here: every micro-batch, the budget being tiny)."""
  overrides = {'batch_size': 8, 'replay_batch': 8, 'snapshot_every_s': 1e-6, 'keep_snapshots': 5}

  learner = OnlineLearner(workdir, overrides=overrides)
  with pytest.raises(RuntimeError, match='crash'):
    learner.run(_crash_after(_events(40, seed=2), 28))
  learner.close()
  resumed = OnlineLearner(workdir, overrides=overrides)
  assert resumed.snapshots.all_steps() == [8, 16, 24] and resumed.position == 24
  summary = resumed.run(_events(40, seed=2))
  assert summary.records == 16 and summary.snapshots == 2 and resumed.position == 40
  resumed.close()
  with pytest.raises(ConfigError, match='online.snapshot_every_s'):
    OnlineLearner(workdir, overrides={'snapshot_every_s': -1.0})
