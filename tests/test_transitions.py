"""The transition prior: successor table, on-device bias, blended ranking, choice on validation."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from llm4rec_jax import config_base, evaluation, transitions
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import trainer
from llm4rec_jax.train import experiment


def _pair_counts(train, window=1):
  """(a, b) -> sum of 1 / distance over the pairs where b comes 1..window steps after a."""
  counts = collections.Counter()
  for s in train:
    s = np.asarray(s).tolist()
    for d in range(1, window + 1):
      for a, b in zip(s[:-d], s[d:]):
        counts[(a, b)] += 1.0 / d
  return counts


def _heaviest(counts, k=64):
  """The pairs a successor table of width k keeps: each item's k heaviest followers, ties by id."""
  kept = {}
  for a in {a for a, _ in counts}:
    mine = sorted(((n, -b) for (x, b), n in counts.items() if x == a), reverse=True)[:k]
    kept.update({(a, -nb): n for n, nb in mine})
  return kept


def _reference_prior(counts, newest, vocab, decay):
  """The prior of one case from the pair counts: newest items oldest first, 0 = none."""
  row = np.zeros(vocab)
  for j, item in enumerate(reversed(newest)):
    for (a, b), n in counts.items():
      if a == item and item:
        row[b] += decay ** j * np.log1p(n)
  return row


def test_successor_table_counts_pairs_and_keeps_the_most_frequent():
  rng = np.random.default_rng(0)
  train = [rng.integers(1, 9, rng.integers(0, 12)) for _ in range(60)]
  counts = _pair_counts(train)
  table = transitions.successor_table(train, vocab_size=10)
  got = {(a, int(b)): float(w) for a in range(10)
         for b, w in zip(table.ids[a], table.weights[a]) if w > 0}
  assert got == pytest.approx({k: np.log1p(v) for k, v in counts.items()})
  capped = transitions.successor_table(train, vocab_size=10, max_successors=2)
  assert capped.max_successors == 2
  for a in range(1, 9):
    mine = sorted(((v, -b) for (x, b), v in counts.items() if x == a), reverse=True)[:2]
    assert [int(i) for i in capped.ids[a] if i] == [-b for _, b in mine]
  empty = transitions.successor_table([np.array([3])], vocab_size=5)
  assert not empty.weights.any()


def test_windowed_table_and_prior_over_the_newest_items_match_a_reference():
  rng = np.random.default_rng(1)
  train = [rng.integers(1, 9, rng.integers(0, 12)) for _ in range(40)]
  table = transitions.successor_table(train, vocab_size=10, window=3, history=3, decay=0.5)
  counts = _pair_counts(train, window=3)
  got = {(a, int(b)): float(w) for a in range(10)
         for b, w in zip(table.ids[a], table.weights[a]) if w > 0}
  assert got == pytest.approx({k: np.log1p(v) for k, v in counts.items()})
  # Counted a few pairs at a time and merged: the same table (exact integer sums).
  chunked = transitions.successor_table(train, vocab_size=10, window=3, chunk_pairs=7)
  np.testing.assert_array_equal(chunked.ids, table.ids)
  np.testing.assert_array_equal(chunked.weights, table.weights)
  newest = np.array([[0, 0, 4], [2, 5, 7], [3, 3, 1]])  # oldest first, left-padded
  bias = np.asarray(transitions.prior(jnp.asarray(table.ids), jnp.asarray(table.weights),
                                      jnp.asarray(newest), 10, jnp.asarray(table.scales())))
  for r, items in enumerate(newest):
    want = _reference_prior(counts, items.tolist(), 10, 0.5)
    np.testing.assert_allclose(bias[r], want, rtol=1e-5, atol=1e-6)
    # Serving's host-side row from the whole history (only the 3 newest count).
    history = ([6, 8] if items.all() else []) + [int(i) for i in items if i]
    np.testing.assert_allclose(transitions.bias_row(table, history, 10), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='decay'):
    transitions.successor_table(train, vocab_size=10, decay=0.0)


def test_saved_table_keeps_its_settings(tmp_path):
  train = [np.array([1, 2, 3, 2, 3])]
  table = transitions.successor_table(train, vocab_size=5, window=2, history=3, decay=0.25)
  transitions.save(tmp_path, table, 1.5)
  loaded, weight = transitions.load(tmp_path)
  assert weight == 1.5
  assert (loaded.window, loaded.history, loaded.decay) == (2, 3, 0.25)
  np.testing.assert_array_equal(loaded.weights, table.weights)
  # A file from before these settings (ids, weights, weight only) is the first-order prior.
  np.savez(tmp_path / transitions.FILENAME, ids=table.ids, weights=table.weights,
           weight=np.float64(2.0))
  old, _ = transitions.load(tmp_path)
  assert (old.window, old.history, old.decay) == (1, 1, 1.0)


def test_prior_matches_the_table_rows():
  train = [np.array([1, 2, 3, 2, 3]), np.array([2, 4])]
  table = transitions.successor_table(train, vocab_size=6)
  bias = np.asarray(transitions.prior(jnp.asarray(table.ids), jnp.asarray(table.weights),
                                      jnp.asarray([2, 0, 4]), 6))
  want = np.zeros((3, 6))
  want[0, 3], want[0, 4] = np.log1p(2), np.log1p(1)  # 2 -> 3 twice, 2 -> 4 once
  np.testing.assert_allclose(bias, want, rtol=1e-6)  # empty history and no successor: zero rows


def test_blended_ranks_equal_a_numpy_reference(tmp_path):
  window, history, decay = 2, 3, 0.5
  c = tiny_config(**{'eval.transition_window': window, 'eval.transition_history': history,
                     'eval.transition_decay': decay, 'eval.transition_counts': 'known'})
  exp = experiment.build_experiment(c, tmp_path)
  params = state_lib.init_params(exp.spec, 0)
  arrays = exp.eval_arrays('test')
  w = 1.5
  _, ranks, _ = exp.evaluate_arrays(exp.rank_fn(transition_weight=w, which='test'), params, arrays)
  _, plain, _ = exp.evaluate_arrays(exp.rank_fn(), params, arrays)
  model = nnx.merge(exp.spec.graphdef, params)
  # 'known': at test, the pairs that end in a validation target count too.
  seqs = [np.append(s, t) if t else s for s, t in zip(exp.split.train, _valid_targets(exp))]
  counts = _heaviest(_pair_counts(seqs, window), 64 * window)
  want = []
  for i in np.flatnonzero(arrays.valid):
    s = np.array(evaluation.scores_for(model, jnp.asarray(arrays.inputs[i:i + 1]), None))[0]
    s[arrays.history(i)] = -np.inf
    s += w * _reference_prior(counts, arrays.inputs[i, -history:].tolist(), len(s), decay)
    t = s[arrays.targets[i]]
    want.append(int((s > t).sum() + (s == t).sum() - 1))
  np.testing.assert_array_equal(ranks, want)
  assert (ranks != plain).any()
  # Another weight runs the same compiled program (choosing a weight compiles once, not per weight).
  program = evaluation.rank_program(exp.spec.graphdef, True, max(exp.config.eval.ks))
  compiled = program._cache_size()  # pylint: disable=protected-access
  _, other, _ = exp.evaluate_arrays(exp.rank_fn(transition_weight=0.5, which='test'), params,
                                    arrays)
  assert program._cache_size() == compiled  # pylint: disable=protected-access
  assert (other != ranks).any()
  # Validation (leave-one-out) counts the training sequences, as eval.transition_counts='train'
  # does for every split.
  train_table = transitions.successor_table(exp.split.train, exp.spec.cfg.vocab_size,
                                            max_successors=64 * window, window=window)
  np.testing.assert_array_equal(exp.transition_table('valid').weights, train_table.weights)
  assert not np.array_equal(exp.transition_table('test').weights, train_table.weights)


def _valid_targets(exp):
  """[users + 1]: each user's validation target (0 = none), from the split's validation cases."""
  out = np.zeros(len(exp.split.train), np.int64)
  out[exp.split.valid.users] = exp.split.valid.targets
  return out


def test_weight_is_chosen_on_validation_and_applied_to_test(tmp_path):
  c = tiny_config(**{'train.num_epochs': 3, 'eval.transition_weights': (0.0, 0.5, 4.0)})
  results = trainer.train_and_evaluate(c, tmp_path)
  blend = results['transition_blend']
  by = {float(k): v for k, v in blend['valid_ndcg@10'].items()}
  assert set(by) == {0.0, 0.5, 4.0}
  assert blend['chosen_weight'] == max(by, key=lambda w: (by[w], -w))
  assert results['valid']['ndcg@10'] == pytest.approx(by[blend['chosen_weight']])
  again = trainer.evaluate(c, tmp_path)  # the same choice and test figures from the checkpoint
  assert again['transition_blend'] == blend and again['test'] == pytest.approx(results['test'])


def test_known_counts_keep_one_table_at_a_time(tmp_path, monkeypatch):
  c = tiny_config(**{'train.num_epochs': 1, 'eval.transition_weights': (4.0,),
                     'eval.transition_counts': 'known'})
  held = []  # the sources whose tables the experiment holds, each time a table is asked for
  build = experiment.Experiment._transitions  # pylint: disable=protected-access

  def recording(self, source):
    out = build(self, source)
    held.append(sorted(self.transitions))
    return out

  monkeypatch.setattr(experiment.Experiment, '_transitions', recording)
  results = trainer.train_and_evaluate(c, tmp_path)
  assert results['transition_blend']['chosen_weight'] == 4.0
  # Validation's table is dropped once validation is ranked, before test's is built.
  assert ['valid'] in held and ['test'] in held and all(len(h) == 1 for h in held)
  from llm4rec_jax import workdir  # pylint: disable=import-outside-toplevel
  assert workdir.read_transitions(tmp_path)[1] == 4.0  # saved for serving: test's table
  c.eval.transition_weights = ()
  trainer.evaluate(c, tmp_path)  # an evaluation without a blend removes the saved one
  assert workdir.read_transitions(tmp_path) is None


def test_transition_weights_config_is_checked():
  with pytest.raises(ConfigError, match='transition_weights'):
    config_base.validate(tiny_config(**{'eval.transition_weights': (-1.0,)}))
  with pytest.raises(ConfigError, match='transition_weights'):
    config_base.validate(tiny_config(**{'eval.transition_weights': (1.0,),
                                        'data.name': 'records:/tmp/x'}))
  for field, bad in (('transition_window', 0), ('transition_history', -1),
                     ('transition_decay', 1.5), ('transition_counts', 'all')):
    with pytest.raises(ConfigError, match=field):
      config_base.validate(tiny_config(**{f'eval.{field}': bad}))


def test_serving_applies_the_chosen_blend(tmp_path):
  from llm4rec_jax import serving  # pylint: disable=import-outside-toplevel
  c = tiny_config(**{'train.num_epochs': 1, 'eval.transition_weights': (2.0,)})
  trainer.train_and_evaluate(c, tmp_path)
  from llm4rec_jax import workdir  # pylint: disable=import-outside-toplevel
  table, weight = workdir.read_transitions(tmp_path)
  assert weight == 2.0
  counts = _pair_counts(experiment.build_experiment(c, tmp_path / 'again').split.train)
  last = max(counts, key=counts.get)[0]  # an item with training successors
  blended = serving.Recommender(tmp_path, use_index=False)
  plain = serving.Recommender(tmp_path, use_index=False, transition_weight=0.0)
  history = [blended.raw_ids[last]]
  n = len(blended.index) - 1
  got = {r['item']: r['score'] for r in blended.recommend(history, top_k=n)['recommendations']}
  base = {r['item']: r['score'] for r in plain.recommend(history, top_k=n)['recommendations']}
  want = dict(base)
  for (a, b), count in counts.items():
    if a == last and b != last:
      want[blended.raw_ids[b]] += weight * np.log1p(count)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
  assert [want[i] for i in got] == pytest.approx(sorted(want.values(), reverse=True))  # ranked
  assert got != pytest.approx(base)
  assert table.ids.shape[0] == blended.spec.cfg.vocab_size
  # Through the ScaNN index: the ANN candidates and the lifted successors, re-scored with the blend.
  from llm4rec_jax.serving import index as workdir_index  # pylint: disable=import-outside-toplevel
  workdir_index.build_index(tmp_path)
  indexed = serving.Recommender(tmp_path)
  assert indexed.ann_index is not None
  top = indexed.recommend(history, top_k=5)['recommendations']
  assert [r['score'] for r in top] == pytest.approx(sorted(want.values(), reverse=True)[:5],
                                                    rel=1e-4, abs=1e-4)
