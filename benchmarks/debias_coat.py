"""Coat (Schnabel et al. 2016): matrix factorisation on self-selected ratings, evaluated on the
randomly exposed test ratings; naive vs inverse-propensity-weighted training.

Propensities: 'popularity' (item rating counts, power 0.5), 'learned' (logistic model of which pairs
were rated, from user and item features and the item's count), 'given' (the dataset's
propensities.ascii). Hyper-parameters are fixed a priori and shared by every variant; the training
ratings are split 90/10 at random for early stopping (validation loss weighted like the training
loss). Test: MSE, MAE, and NDCG@5 / Recall@5 (relevant = rating >= 4) and AUC among each user's
randomly exposed items. Several seeds; mean and std reported.

  python benchmarks/debias_coat.py [--quick] [--seeds 5]
"""

import argparse
import json
import sys
import time

import numpy as np


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--quick', action='store_true')
  p.add_argument('--seeds', type=int, default=5)
  p.add_argument('--dim', type=int, default=8)
  p.add_argument('--l2', type=float, default=1e-2)
  p.add_argument('--steps', type=int, default=3000)
  args = p.parse_args()
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.debias import mf, propensity, unbiased_eval  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  ds = readers.load_dataset('coat')
  nu, ni = ds.num_users, ds.num_items
  counts = propensity.item_counts([ds.item], ni)
  test = ds.extras['random_test']

  # Pair propensities [users+1, items+1].
  props = {'popularity': np.broadcast_to(
      propensity.popularity_propensity(counts, power=0.5, smoothing=1.0)[None], (nu + 1, ni + 1))}
  uf, itf = mf.one_hot_features(ds.users), mf.one_hot_features(ds.items)
  itf = np.concatenate([itf, np.log1p(counts)[:, None].astype(np.float32)], axis=1)
  gu, gi = np.meshgrid(np.arange(1, nu + 1), np.arange(1, ni + 1), indexing='ij')
  gu, gi = gu.reshape(-1), gi.reshape(-1)
  observed = np.zeros((nu + 1, ni + 1), bool)
  observed[ds.user, ds.item] = True
  x = propensity.pair_features(uf, itf, gu, gi)
  model = propensity.LogisticPropensity.fit(x, observed[gu, gi], l2=1e-4,
                                            steps=100 if args.quick else 500)
  learned = np.ones((nu + 1, ni + 1))
  learned[gu, gi] = model.predict(x)
  props['learned'] = learned
  if 'propensities' in ds.extras:
    props['given'] = ds.extras['propensities']

  variants = {'naive': (None, 'snips'), 'ips_popularity': ('popularity', 'ips'),
              'snips_popularity': ('popularity', 'snips'), 'snips_learned': ('learned', 'snips')}
  if 'given' in props:
    variants['snips_given'] = ('given', 'snips')
  seeds = 1 if args.quick else args.seeds
  steps = 100 if args.quick else args.steps
  results = {name: [] for name in variants}
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    is_valid = rng.random(len(ds.user)) < 0.1
    for name, (source, norm) in variants.items():
      if source is None:
        w = np.ones(len(ds.user))
      else:
        w = propensity.inverse_weights(props[source][ds.user, ds.item], clip_min=0.01,
                                       self_normalize=True)
      rows = (ds.user, ds.item, ds.rating, w)
      train = tuple(r[~is_valid] for r in rows)
      valid = tuple(r[is_valid] for r in rows)
      cfg = mf.MFConfig(dim=args.dim, l2=args.l2, steps=steps, normalization=norm, seed=seed)
      m, info = mf.fit(*train, num_users=nu, num_items=ni, cfg=cfg, valid=valid)
      pred = np.asarray(m(test['user'], test['item']))
      metrics = unbiased_eval.rating_metrics(test['user'], test['rating'], pred, k=5)
      results[name].append({**metrics, 'best_step': info['best_step']})

  summary = {}
  for name, runs in results.items():
    summary[name] = {k: {'mean': round(float(np.mean([r[k] for r in runs])), 4),
                         'std': round(float(np.std([r[k] for r in runs])), 4)}
                     for k in ('ndcg@5', 'recall@5', 'auc', 'mse', 'mae')}
  naive = summary['naive']
  best = min((n for n in summary if n != 'naive'), key=lambda n: summary[n]['mse']['mean'])
  wins = {k: (summary[best][k]['mean'] < naive[k]['mean']) if k in ('mse', 'mae')
          else (summary[best][k]['mean'] > naive[k]['mean'])
          for k in ('ndcg@5', 'recall@5', 'auc', 'mse', 'mae')}
  print(json.dumps({'benchmark': 'debias_coat', 'quick': args.quick, 'seeds': seeds,
                    'model': {'dim': args.dim, 'l2': args.l2, 'steps': steps},
                    'test_ratings': len(test['rating']), 'variants': summary,
                    'best_debiased_by_mse': best, 'best_debiased_beats_naive': wins,
                    'wall_s': round(time.perf_counter() - t0, 1),
                    'command': 'python ' + ' '.join(['benchmarks/debias_coat.py', *sys.argv[1:]])}))


if __name__ == '__main__':
  main()
