"""Debiasing inside the trainer: confounding on the synthetic data, PDA adjustment, IPS and the
adversary in the train step, beyond-accuracy metrics in metrics.json, defaults unchanged."""

import json

import numpy as np
import pytest

from conftest import tiny_config
from llm4rec_jax import config_base, serving
from llm4rec_jax.data import pipeline, registry
from llm4rec_jax.debias import objectives, unbiased_eval
from llm4rec_jax.train import trainer


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
  gains = unbiased_eval.true_gains(gt, arrays.users[:n], arrays.inputs[:n], arrays.seen[:n])
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
  for field, value in (('method', 'ipw'), ('fairness', 'fair'), ('clip', 0.0)):
    bad = tiny_config(**{f'debias.{field}': value})
    with pytest.raises(Exception, match=f'debias.{field}'):
      config_base.validate(bad)
  bad = tiny_config(**{'debias.method': 'ips', 'loss.type': 'sampled_softmax'})
  with pytest.raises(Exception, match='debias.method'):
    config_base.validate(bad)
