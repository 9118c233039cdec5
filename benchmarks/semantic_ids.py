"""Semantic-ID head vs full-softmax head on Amazon Beauty (leave-one-out, seen items excluded).

1. Trains the softmax model (``configs/beauty.py``), or reuses ``--softmax_workdir``.
2. Quantises item embeddings into code tuples with residual k-means (``--source``: ``softmax`` =
   the trained softmax model's item table, or ``features`` = the S3-Rec attributes), and trains the
   same decoder with the semantic-ID head (``model.head=semantic_id``).
3. Evaluates both on the test users: NDCG@10 / HR@10 and inference time per user (the whole
   jitted ranking: decoder + full-catalog scores + top-k, or decoder + trie-constrained beam
   search), timed after compilation.

  python benchmarks/semantic_ids.py [--quick] [--workdir DIR] [--source softmax|features]
"""

import copy
import json
import pathlib
import tempfile
import time

from common import load_config, make_quick, parser, train_and_report


def timed_test_pass(config, workdir: pathlib.Path) -> tuple[dict, float]:
  """(test metrics, seconds per test user) for the best checkpoint, after a warm-up pass."""
  from llm4rec_jax import evaluation  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.build_experiment(config, workdir)
  _, params = experiment.restore_params(exp, 'best')
  rank_fn, arrays = exp.rank_fn(), exp.eval_arrays('test')
  run = lambda: evaluation.evaluate_arrays(rank_fn, params, arrays, config.eval.batch_size,
                                           exp.put, config.eval.ks, content=exp.content)
  run()  # compile
  t0 = time.perf_counter()
  m, ranks, _ = run()
  return m, (time.perf_counter() - t0) / len(ranks)


def main():
  p = parser(__doc__)
  p.add_argument('--softmax_workdir', default=None, help='a trained configs/beauty.py workdir')
  p.add_argument('--source', default='softmax', help="'softmax' or 'features' (see docstring)")
  args = p.parse_args()
  root = pathlib.Path(args.workdir or tempfile.mkdtemp())
  out = {'benchmark': 'semantic_ids', 'dataset': 'beauty', 'protocol': 'leave_one_out',
         'exclude_seen': True, 'quick': args.quick, 'source': args.source}

  softmax_cfg = load_config('beauty', 'sasrec')  # the runs these results record
  if args.quick:
    make_quick(softmax_cfg)
  if args.softmax_workdir:
    softmax_dir = pathlib.Path(args.softmax_workdir)
    from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
    softmax_cfg = config_base.load(softmax_dir)
  else:
    softmax_dir = root / 'softmax'
    sargs = copy.copy(args)
    sargs.workdir = str(softmax_dir)
    line = train_and_report(softmax_cfg, sargs, benchmark='semantic_ids')
    out['softmax_train'] = {k: line[k] for k in ('best_epoch', 'time_to_best_epoch_s', 'wall_s')}

  # The same decoder as the softmax model; only the head differs.
  sid_cfg = copy.deepcopy(softmax_cfg)
  sid_cfg.model.vocab_size = 0
  if args.quick:
    sid_cfg.semantic_ids.codebook_size = 16
  sid_cfg.model.head = 'semantic_id'
  sid_cfg.semantic_ids.source = str(softmax_dir) if args.source == 'softmax' else args.source
  if args.source == 'features':
    sid_cfg.content.categorical = 'all'
  gargs = copy.copy(args)
  gargs.workdir = str(root / 'semantic_id')
  line = train_and_report(sid_cfg, gargs, benchmark='semantic_ids')
  out['semantic_id_train'] = {k: line[k] for k in ('best_epoch', 'time_to_best_epoch_s', 'wall_s')}

  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.model.semantic_ids import SemanticIds  # pylint: disable=import-outside-toplevel
  sid = SemanticIds.load(workdir_lib.path(root / 'semantic_id', workdir_lib.SEMANTIC_IDS))
  out['codes'] = {'codebook_sizes': list(sid.codebook_sizes),
                  'collision_rate': round(sid.collision_rate, 4)}
  for name, cfg, workdir in (('softmax', softmax_cfg, softmax_dir),
                             ('semantic_id', sid_cfg, root / 'semantic_id')):
    m, per_user = timed_test_pass(cfg, workdir)
    out[name] = {'ndcg@10': round(m['ndcg@10'], 4), 'hr@10': round(m['hr@10'], 4),
                 'ndcg@20': round(m['ndcg@20'], 4), 'hr@20': round(m['hr@20'], 4),
                 'inference_ms_per_user': round(per_user * 1e3, 3),
                 'eval_batch_size': cfg.eval.batch_size}
  out['beam_size'] = sid_cfg.semantic_ids.beam_size
  out['command'] = 'python benchmarks/semantic_ids.py' + (' --quick' if args.quick else '') + (
      f' --source {args.source}' if args.source != 'softmax' else '') + (
          f' --softmax_workdir={args.softmax_workdir}' if args.softmax_workdir else '')
  print(json.dumps(out))


if __name__ == '__main__':
  main()
