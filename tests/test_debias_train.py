"""Debiasing inside the trainer: confounding on the synthetic data, PDA adjustment, IPS and the
adversary in the train step, beyond-accuracy metrics in metrics.json, defaults unchanged."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import SUBPROCESS_XLA_FLAGS, tiny_config
from llm4rec_jax import config_base, serving
from llm4rec_jax.data import pipeline, registry
from llm4rec_jax.debias import mf, objectives, unbiased_eval
from llm4rec_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _top10(workdir, ds) -> np.ndarray:
  """Test top-10 lists (internal ids) from WORKDIR/rankings_test.jsonl."""
  index = ds.items.id_of()
  lines = (workdir / 'rankings_test.jsonl').read_text().splitlines()
  return np.asarray([[index[r] for r in json.loads(l)['top'][:10]] for l in lines])


def test_naive_training_over_recommends_popular_items_and_pda_adjustment_reduces_it(tmp_path):
  config = tiny_config(**{'train.num_epochs': 3, 'eval.save_rankings': True})
  results = trainer.train_and_evaluate(config, tmp_path)
  ds, split = registry.load_split(config.data)
  gt = ds.extras['ground_truth']
  arrays = pipeline.eval_arrays(split.test, config.data.max_len, config.eval.batch_size)
  n = len(split.test)
  gains = unbiased_eval.true_gains(gt, arrays.users[:n], arrays.inputs[:n], arrays.dense_seen(slice(0, n)))
  truth_top = np.argsort(-gains, axis=1)[:, :10]
  # The exposure confounding is real: the naive model's lists are far more exposure-prone (latent
  # propensity of the generator) than the lists the users' true preferences would give.
  naive_prop = gt.propensity[_top10(tmp_path, ds)].mean()
  truth_prop = gt.propensity[truth_top].mean()
  assert naive_prop > 1.5 * truth_prop, (naive_prop, truth_prop)
  test = results['test']
  for key in ('coverage@10', 'gini@10', 'arp@10', 'tail_share@10', 'head_share@10', 'novelty@10',
              'ild@10', 'activity_ndcg@10_gap', 'group_ndcg@10_gap'):
    assert np.isfinite(test[key])
  assert set(results['groups']['test']['group']) >= {'group_a', 'group_b', 'ndcg@10_gap'}
  assert results['ild_vectors'] == 'dense:embedding'
  assert json.loads((tmp_path / 'metrics.json').read_text()) == results
  # Popularity deconfounding at inference on the same trained model: lists closer to the truth's.
  adjusted = config_base.load(tmp_path)
  adjusted.debias.adjust_strength = 1.0
  after = trainer.evaluate(adjusted, tmp_path)['test']
  adjusted_prop = gt.propensity[_top10(tmp_path, ds)].mean()
  assert adjusted_prop < 0.8 * naive_prop, (adjusted_prop, naive_prop)
  assert after['arp@10'] < test['arp@10']


def test_ips_with_adversary_trains_and_serves(tmp_path):
  config = tiny_config(**{'train.max_steps': 6, 'train.eval_every': 6,
                          'debias.method': 'ips', 'debias.fairness': 'adversarial',
                          'debias.sensitive_attribute': 'group'})
  results = trainer.train_and_evaluate(config, tmp_path)
  assert np.isfinite(results['test']['ndcg@10'])
  saved = config_base.load(tmp_path)
  assert saved.debias.num_groups == 2
  logs = [json.loads(l) for l in (tmp_path / 'train_log.jsonl').read_text().splitlines()]
  assert all(0.0 <= l['adv_accuracy'] <= 1.0 and np.isfinite(l['adv_loss']) for l in logs)
  # The adversary head is part of the saved model: serving restores it.
  raw = json.loads((tmp_path / 'items.json').read_text())['raw_ids']
  out = serving.recommend(tmp_path, raw[1:4], top_k=5)
  assert len(out['recommendations']) == 5


def test_debias_defaults_keep_training_unchanged_and_bad_values_are_named():
  config = tiny_config()
  ds, split = registry.load_split(config.data)
  assert objectives.build(config, ds, split.train, 128) is None  # off: the step is not touched
  for field, value in (('method', 'ipw'), ('fairness', 'fair'), ('clip', 0.0),
                       ('propensity', 'counts'), ('num_windows', 0)):
    bad = tiny_config(**{f'debias.{field}': value})
    with pytest.raises(Exception, match=f'debias.{field}'):
      config_base.validate(bad)
  bad = tiny_config(**{'debias.method': 'ips', 'loss.type': 'sampled_softmax'})
  with pytest.raises(Exception, match='debias.method'):
    config_base.validate(bad)


def test_windowed_propensity_weights_reach_the_train_step(tmp_path):
  config = tiny_config(**{'debias.method': 'snips', 'debias.propensity': 'windowed',
                          'debias.num_windows': 3})
  ds, split = registry.load_split(config.data)
  obj = objectives.build(config, ds, split.train, 128)
  weights = obj.sequence_weights
  assert [len(w) for w in weights] == [len(s) for s in split.train]
  flat_w = np.concatenate(weights)
  assert flat_w.mean() == pytest.approx(1.0, rel=1e-5)
  # The same item weighs differently in different time windows (its popularity drifts).
  flat_i = np.concatenate(split.train)
  spread = [np.ptp(flat_w[flat_i == i]) for i in np.unique(flat_i)[:40]]
  assert max(spread) > 0.1
  # The pipeline's target_weights line up with the targets: with one window per user (ending at
  # the user's last training item), target -j is the user's j-th last interaction.
  windows, users = pipeline.make_windows(split.train, config.data.max_len)
  ww = pipeline.window_weights(weights, config.data.max_len)
  batch = next(iter(pipeline.train_dataset(windows, users, global_batch_size=8, seed=0,
                                           num_epochs=1, weights=ww)))
  for row in range(8):
    u = int(batch['users'][row])
    n = int(np.sum(batch['targets'][row] > 0))
    np.testing.assert_array_equal(batch['targets'][row, -n:], split.train[u][-n:])
    np.testing.assert_allclose(batch['target_weights'][row, -n:], weights[u][-n:])
    assert (batch['target_weights'][row, :-n] == 0).all()
  # End to end: the weights change the training loss (same data order and initialisation).
  losses_by = {}
  for source in ('windowed', 'popularity'):
    run = tiny_config(**{'train.max_steps': 2, 'train.eval_every': 2, 'debias.method': 'snips',
                         'debias.propensity': source, 'debias.num_windows': 3,
                         'debias.beyond_accuracy': False})
    trainer.train_and_evaluate(run, tmp_path / source)
    logs = [json.loads(l) for l in (tmp_path / source / 'train_log.jsonl').read_text().splitlines()]
    losses_by[source] = [l['loss'] for l in logs if 'loss' in l]
  assert np.isfinite(losses_by['windowed']).all()
  assert losses_by['windowed'][0] != pytest.approx(losses_by['popularity'][0], rel=1e-4)


def test_learned_propensity_is_shared_by_items_of_a_kind():
  config = tiny_config(**{'debias.method': 'ips', 'debias.propensity': 'learned'})
  ds, split = registry.load_split(config.data)
  obj = objectives.build(config, ds, split.train, 128)
  w = np.asarray(obj.item_weights)[:ds.num_items + 1]
  counts = np.bincount(np.concatenate(split.train), minlength=ds.num_items + 1).astype(float)
  assert np.sum(counts[1:] * w[1:]) / counts[1:].sum() == pytest.approx(1.0, rel=1e-5)
  # Only the item's features enter (category and tags here): items with the same features get the
  # same weight whatever their own counts, and items of often-chosen kinds weigh less.
  features = mf.one_hot_features(ds.items)[1:]
  _, kind = np.unique(features, axis=0, return_inverse=True)
  kind = kind.reshape(-1)
  for k in np.unique(kind):
    assert np.ptp(w[1:][kind == k]) < 1e-5
  kind_count = np.asarray([counts[1:][kind == k].mean() for k in kind])
  assert np.corrcoef(kind_count, w[1:])[0, 1] < -0.3


def test_recommend_applies_adjust_strength(tmp_path):
  config = tiny_config(**{'train.max_steps': 3, 'train.eval_every': 3,
                          'debias.beyond_accuracy': False})
  trainer.train_and_evaluate(config, tmp_path)
  catalog = json.loads((tmp_path / 'items.json').read_text())
  raw, counts = catalog['raw_ids'], np.asarray(catalog['train_counts'], float)
  ds, split = registry.load_split(config.data)
  assert counts.sum() == sum(len(s) for s in split.train)
  log_pop = objectives.log_popularity(counts, 128, smoothing=1.0)
  history = raw[1:4]
  everything = len(raw) - 1 - len(history)
  plain = serving.Recommender(tmp_path)
  base = {r['item']: r['score'] for r in plain.recommend(history, everything)['recommendations']}
  adjusted = serving.recommend(tmp_path, history, everything, adjust_strength=1.5)
  index = {r: i for i, r in enumerate(raw)}
  for r in adjusted['recommendations']:  # every score is the model's minus 1.5 log popularity
    assert r['score'] == pytest.approx(base[r['item']] - 1.5 * log_pop[index[r['item']]],
                                       abs=1e-4)
  top = [index[r['item']] for r in adjusted['recommendations'][:10]]
  top_plain = [index[i] for i in list(base)[:10]]
  assert counts[top].mean() < counts[top_plain].mean()
  # The saved config's strength is what serving (Python API and CLI) applies by default.
  saved = json.loads((tmp_path / 'config.json').read_text())
  saved['debias']['adjust_strength'] = 1.5
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  from_config = serving.recommend(tmp_path, history, 10)
  assert [r['item'] for r in from_config['recommendations']] == [raw[i] for i in top]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=SUBPROCESS_XLA_FLAGS)
  proc = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'recommend',
                         f'--workdir={tmp_path}', f'--history={",".join(history)}', '--top_k=10'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [r['item'] for r in json.loads(proc.stdout)['recommendations']] == [raw[i] for i in top]
