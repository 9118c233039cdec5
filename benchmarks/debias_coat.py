"""Coat (Schnabel et al. 2016): matrix factorisation on self-selected ratings, evaluated on the
randomly exposed test ratings; naive vs debiased (SNIPS, doubly robust) training.

Protocol (as in AutoDebias and KD-Label, which keep a small slice of the random-exposure ratings
for validation): for each seed, a random ``--valid_fraction`` of the test users and all their random
ratings form the validation set; every reported number is on the other users only. Every variant,
naive included, gets the same hyper-parameter grid (``--dims`` x ``--l2s``) and the same early
stopping; the grid point and the stopping step are picked on the validation set, by validation
NDCG@5 (``variants``) and separately by validation MSE (``variants_by_valid_mse``). Nothing is
picked on the reported ratings.

Propensities: 'given' (the dataset's propensities.ascii), 'learned' (logistic model of which pairs
were rated, from user and item features and the item's count), 'nb' (naive Bayes by rating value,
P(r) from the seed's validation ratings), 'popularity' (item rating counts, power 0.5). Estimators:
SNIPS, doubly robust joint learning, and 'mnar_nb': a joint likelihood of the ratings and of which
pairs were rated, with P(rated | rating value) from the naive Bayes table
(:mod:`llm4rec_jax.debias.estimators`).
Test: NDCG@5 / Recall@5 (relevant = rating >= 4) and AUC among each user's randomly exposed items,
MSE and MAE; mean and std over seeds, and the per-seed paired difference to naive.

  python benchmarks/debias_coat.py [--quick] [--seeds 10] [--first_seed 0] [--variants ...]
      [--primary VARIANT [--primary_criterion ndcg|mse]]

``--first_seed`` shifts the seeds (the validation split and the initialisations), so a claim formed
on one set of seeds can be checked on fresh ones; ``--primary`` names the variant declared as the
claim before the run, and the output reports it against naive (``primary_beats_naive``).

(about 14 min on a quiet 2-core CPU, 6 of them for mnar_nb; dr_learned is left out by default for
time)
"""

import argparse
import json
import sys
import time

import numpy as np

METRICS = ('ndcg@5', 'recall@5', 'auc', 'mse', 'mae')
LOWER_IS_BETTER = ('mse', 'mae')
FAMILY = 'debiased_family'  # estimator + propensity source picked per seed on validation
DEFAULT_VARIANTS = ['snips_given', 'snips_learned', 'snips_nb', 'snips_popularity', 'dr_given',
                    'dr_nb', 'mnar_nb']


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--quick', action='store_true')
  p.add_argument('--seeds', type=int, default=10)
  p.add_argument('--first_seed', type=int, default=0,
                 help='seeds are first_seed .. first_seed + seeds - 1')
  p.add_argument('--primary', default=None,
                 help='the debiased variant declared as the claim before the run')
  p.add_argument('--primary_criterion', choices=['ndcg', 'mse'], default='ndcg',
                 help='the validation criterion (for naive and the primary alike) of the claim')
  p.add_argument('--valid_fraction', type=float, default=0.3)
  p.add_argument('--dims', type=int, nargs='+', default=[16, 32, 64])
  p.add_argument('--l2s', type=float, nargs='+', default=[0.3, 1.0, 3.0, 10.0])
  p.add_argument('--steps', type=int, default=800)
  p.add_argument('--learning_rate', type=float, default=0.02)
  p.add_argument('--clip', type=float, default=0.01)
  p.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS,
                 help='subset of snips_{given,learned,nb,popularity}, dr_{given,learned,nb}, '
                      'mnar_nb (naive always runs)')
  p.add_argument('--valid_only', action='store_true',
                 help='report validation metrics only (for designing the grid without the test)')
  args = p.parse_args()
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.debias import estimators, mf, propensity, unbiased_eval

  t0 = time.perf_counter()
  ds = readers.load_dataset('coat')
  nu, ni = ds.num_users, ds.num_items
  counts = propensity.item_counts([ds.item], ni)
  test = ds.extras['random_test']
  seeds = 2 if args.quick else args.seeds
  steps = 50 if args.quick else args.steps  # quick: 2 evaluations of each model
  dims = args.dims[:1] if args.quick else args.dims
  l2s = args.l2s[:2] if args.quick else args.l2s

  # Per-seed split of the random-exposure users into validation and reported test users.
  test_users = np.unique(test['user'])
  splits = []
  seed_values = args.first_seed + np.arange(seeds)
  for seed in seed_values:
    perm = np.random.default_rng(int(seed)).permutation(test_users)
    n_valid = int(round(args.valid_fraction * len(test_users)))
    is_valid = np.isin(test['user'], perm[:n_valid])
    splits.append(is_valid)

  # Pair propensities [users + 1, items + 1], or per model for the per-seed naive Bayes ones.
  pair_props = {'popularity': np.broadcast_to(
      propensity.popularity_propensity(counts, power=0.5, smoothing=1.0)[None], (nu + 1, ni + 1))}
  uf, itf = mf.one_hot_features(ds.users), mf.one_hot_features(ds.items)
  itf = np.concatenate([itf, np.log1p(counts)[:, None].astype(np.float32)], axis=1)
  gu, gi = np.meshgrid(np.arange(1, nu + 1), np.arange(1, ni + 1), indexing='ij')
  gu, gi = gu.reshape(-1), gi.reshape(-1)
  observed = np.zeros((nu + 1, ni + 1), bool)
  observed[ds.user, ds.item] = True
  x = propensity.pair_features(uf, itf, gu, gi)
  logistic = propensity.LogisticPropensity.fit(x, observed[gu, gi], l2=1e-4,
                                               steps=50 if args.quick else 500)
  learned = np.ones((nu + 1, ni + 1))
  learned[gu, gi] = logistic.predict(x)
  pair_props['learned'] = learned
  if 'propensities' in ds.extras:
    pair_props['given'] = ds.extras['propensities']

  def nb_table(seed: int) -> np.ndarray:
    """P(rated | rating level) [levels + 1], from the seed's validation ratings."""
    return propensity.naive_bayes_propensity(
        ds.rating, test['rating'][splits[seed]], observed_fraction=len(ds.rating) / (nu * ni))

  def weights(source: str, seed: int) -> np.ndarray:
    if source == 'nb':
      p_obs = nb_table(seed)[np.asarray(ds.rating, np.int64)]
    else:
      p_obs = pair_props[source][ds.user, ds.item]
    return propensity.inverse_weights(p_obs, clip_min=args.clip, self_normalize=True)

  variants = {'naive': ('naive', None)}
  for source in ('given', 'learned', 'nb', 'popularity'):
    if source == 'nb' or source in pair_props:
      variants[f'snips_{source}'] = ('snips', source)
  for source in ('given', 'learned', 'nb'):
    if source == 'nb' or source in pair_props:
      variants[f'dr_{source}'] = ('dr', source)
  variants['mnar_nb'] = ('mnar', 'nb')  # missing-not-at-random likelihood, P(rated | r) from nb
  if args.variants:
    unknown = set(args.variants) - set(variants)
    if unknown:
      p.error(f'unknown variants {sorted(unknown)}; choose from {sorted(variants)}')
    variants = {k: v for k, v in variants.items() if k in args.variants or k == 'naive'}
  claimable = [n for n in variants if n != 'naive'] + ([FAMILY] if len(variants) > 2 else [])
  if args.primary is not None and args.primary not in claimable:
    p.error(f'--primary {args.primary!r} is not among the variants run')

  # One vmapped fit per (variant, dim): K = seeds x l2 models.
  grid_seed = np.repeat(np.arange(seeds), len(l2s))
  grid_l2 = np.tile(np.asarray(l2s, np.float64), seeds)
  valid_sets = [estimators.RandomRatings.from_rows(
      *(test[f][splits[s]] for f in ('user', 'item', 'rating'))) for s in range(seeds)]
  # candidates[variant][criterion][seed] = list of (validation value, test metrics, point)
  candidates = {v: {c: [[] for _ in range(seeds)] for c in estimators.CRITERIA} for v in variants}
  fit_s = {}
  for name, (estimator, source) in variants.items():
    t_fit = time.perf_counter()
    w = (np.stack([weights(source, int(s)) for s in grid_seed]) if source is not None
         else np.ones((len(grid_seed), len(ds.rating))))
    for dim in dims:
      cfg = estimators.FitConfig(estimator=estimator, dim=dim, learning_rate=args.learning_rate,
                                 steps=steps, eval_every=25)
      graphdef, params, info = estimators.fit_many(
          ds.user, ds.item, ds.rating, w, grid_l2, seed_values[grid_seed] * 1000 + dim,
          [valid_sets[s] for s in grid_seed], num_users=nu, num_items=ni, cfg=cfg,
          level_propensity=(np.stack([nb_table(int(s)) for s in grid_seed])
                            if estimator == 'mnar' else None))
      for crit in estimators.CRITERIA:
        for k, (seed, l2) in enumerate(zip(grid_seed, grid_l2)):
          model_params = _index(params[crit], k)
          pred = np.asarray(estimators.dense_predictions(graphdef, model_params))
          held = ~splits[seed]
          metrics = {}
          if not args.valid_only:
            metrics = unbiased_eval.rating_metrics(test['user'][held], test['rating'][held],
                                                   pred[test['user'][held], test['item'][held]],
                                                   k=5)
          point = {'dim': dim, 'l2': float(l2), 'step': int(info[crit]['step'][k])}
          candidates[name][crit][seed].append((float(info[crit]['value'][k]), metrics, point))
    fit_s[name] = round(time.perf_counter() - t_fit, 1)
    print(f'{name}: {fit_s[name]} s', file=sys.stderr, flush=True)

  # The debiased family as one learner: per seed, the estimator and propensity source are chosen
  # on validation together with the grid point and step (as naive chooses its grid point).
  debiased = [n for n in variants if n != 'naive']
  if len(debiased) > 1:
    candidates[FAMILY] = {c: [[(v, m, {**pt, 'variant': n}) for n in debiased
                               for v, m, pt in candidates[n][c][seed]] for seed in range(seeds)]
                          for c in estimators.CRITERIA}

  def select(crit: str) -> tuple[dict, dict]:
    """Per variant and seed, the candidate with the best validation value; summary over seeds."""
    summary, chosen = {}, {}
    for name in candidates:
      picks = []
      for seed in range(seeds):
        cands = candidates[name][crit][seed]
        best = (max if crit == 'ndcg' else min)(cands, key=lambda c: c[0])
        picks.append(best)
      chosen[name] = picks
      s = {f'valid_{crit}': _stat([c[0] for c in picks]),
           'points': [c[2] for c in picks]}
      if not args.valid_only:
        s.update({m: _stat([c[1][m] for c in picks]) for m in METRICS})
      summary[name] = s
    if not args.valid_only:  # paired per-seed differences to naive (positive = better)
      for name in candidates:
        if name == 'naive':
          continue
        diff = {}
        for m in METRICS:
          sign = -1.0 if m in LOWER_IS_BETTER else 1.0
          d = [sign * (a[1][m] - b[1][m]) for a, b in zip(chosen[name], chosen['naive'])]
          diff[m] = {**_stat(d), 'seeds_better': int(np.sum(np.asarray(d) > 0))}
        summary[name]['gain_over_naive'] = diff
    return summary, chosen

  by_ndcg, _ = select('ndcg')
  by_mse, _ = select('mse')
  out = {'benchmark': 'debias_coat', 'quick': args.quick, 'seeds': seeds,
         'seed_values': [int(x) for x in seed_values],
         'protocol': {'valid_fraction': args.valid_fraction,
                      'valid_users': int(round(args.valid_fraction * len(test_users))),
                      'reported_users': len(test_users) - int(round(args.valid_fraction *
                                                                    len(test_users))),
                      'grid': {'dims': dims, 'l2s': l2s}, 'steps': steps,
                      'learning_rate': args.learning_rate, 'clip': args.clip,
                      'selection': 'per variant and seed: grid point and early-stopping step with '
                                   'the best validation NDCG@5 (variants) or MSE '
                                   '(variants_by_valid_mse)'},
         'variants': by_ndcg, 'variants_by_valid_mse': by_mse, 'fit_s': fit_s}
  # The debiased variant to compare with naive is chosen on validation too (the best mean
  # validation NDCG@5, resp. MSE), not as the best of many on the test ratings.
  for key, table, crit in (('best_debiased_beats_naive', by_ndcg, 'ndcg'),
                           ('best_debiased_beats_naive_by_valid_mse', by_mse, 'mse')):
    others = [n for n in table if n not in ('naive', FAMILY)]
    if not others or args.valid_only:
      continue
    pick = (max if crit == 'ndcg' else min)(others,
                                           key=lambda n, c=crit: table[n][f'valid_{c}']['mean'])
    out[key] = {'variant': pick, **_wins(table[pick], table['naive'])}
    if FAMILY in table:
      out[key.replace('best_debiased', FAMILY)] = _wins(table[FAMILY], table['naive'])
  if args.primary is not None and not args.valid_only:
    table = by_ndcg if args.primary_criterion == 'ndcg' else by_mse
    out['primary_beats_naive'] = {'variant': args.primary, 'selected_on': args.primary_criterion,
                                  **_wins(table[args.primary], table['naive']),
                                  'gain_over_naive': table[args.primary]['gain_over_naive']}
  out['wall_s'] = round(time.perf_counter() - t0, 1)
  out['command'] = 'python ' + ' '.join(['benchmarks/debias_coat.py', *sys.argv[1:]])
  print(json.dumps(out))


def _wins(variant: dict, naive: dict) -> dict:
  """Per metric, whether the variant's mean over seeds beats naive's."""
  return {m: bool(variant[m]['mean'] < naive[m]['mean'] if m in LOWER_IS_BETTER
                  else variant[m]['mean'] > naive[m]['mean']) for m in METRICS}


def _index(tree, k: int):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda x: x[k], tree)


def _stat(values) -> dict:
  return {'mean': round(float(np.mean(values)), 4), 'std': round(float(np.std(values)), 4)}


if __name__ == '__main__':
  main()
