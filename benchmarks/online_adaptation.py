"""Online adaptation on time-ordered data: frozen vs adapted vs fully retrained, prequentially.

Per dataset: every interaction in time order; the first ``--train_fraction`` trains a model
(``llm4rec train`` on an event log), the rest is streamed in ``--windows`` equal windows. Each event
is ranked (full catalog, seen items excluded) *before* anything learns from it:

* frozen: the trained model, never updated (its users' histories do grow; unknown items are misses);
* adapted: the online learner (``llm4rec_jax.online``), registering new items and taking one step
  per micro-batch after ranking it;
* retrained: before window k, a model trained from scratch on everything before window k (same
  config), then frozen over window k (window 0's is the initial model).

Prints one JSON line: NDCG@10 / HR@10 per window and overall for each, adapted events/s and update
latency (one micro-batch: registration + one jitted step, synced; the first, compiling, step is
reported apart).

  python benchmarks/online_adaptation.py [--datasets ml-100k,ml-latest-small,musical-instruments]
      [--quick] [--online learning_rate=3e-4] [--set train.num_epochs=20]
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from common import apply_overrides, parser

DATASETS = ('ml-100k', 'ml-latest-small', 'musical-instruments')


def make_config(log_path: pathlib.Path, args):
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  c = config_base.apply_preset(config_base.base_config(), args.preset)
  c.data.name = f'events:{log_path}'
  c.data.split = 'leave_one_out'
  c.data.max_len = 50
  c.data.all_windows = True
  c.model.dropout = 0.2
  c.train.batch_size = 64
  c.train.num_epochs = 30
  c.train.patience = 3
  c.train.progress_bar = False
  c.train.log_every = 100
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.eval.batch_size = 256
  c.online.update(dict(batch_size=64, replay_batch=64, learning_rate=1e-3, params='all'))
  c.seed = args.seed
  if args.quick:
    c.model.update(dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64))
    c.train.max_steps = 10
    c.train.eval_every = 10
  apply_overrides(c, args.set)
  apply_overrides(c, [f'online.{kv}' for kv in args.online])
  return c


def event_records(ds) -> list[dict]:
  """Every interaction of ``ds`` as an event record, in time order (stable within a second)."""
  order = np.lexsort((np.arange(ds.num_interactions), ds.timestamp))
  users, items = ds.users.raw_ids, ds.items.raw_ids
  return [{'user': str(users[ds.user[i]]), 'item': str(items[ds.item[i]]),
           'timestamp': int(ds.timestamp[i])} for i in order]


def ndcg_hr(ranks: np.ndarray) -> dict[str, float]:
  ranks = np.asarray(ranks)
  hit = ranks < 10
  return {'ndcg@10': round(float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()), 4),
          'hr@10': round(float(hit.mean()), 4), 'events': int(len(ranks))}


def stream_ranks(workdir: pathlib.Path, events: list, config, *, learn: bool) -> dict:
  """Prequential ranks over ``events``; ``learn`` adapts after each micro-batch."""
  from llm4rec_jax.online import OnlineLearner, micro_batches, open_events  # pylint: disable=import-outside-toplevel
  learner = OnlineLearner(workdir, overrides=dict(config.online), resume=False)
  ranks, latency, sizes = [], [], []
  t_rank = 0.0
  for batch in micro_batches(open_events(events), size=config.online.batch_size):
    t0 = time.perf_counter()
    ranks.extend(learner.rank(batch).tolist())
    t1 = time.perf_counter()
    t_rank += t1 - t0
    if learn:
      learner.learn(batch)
      latency.append(time.perf_counter() - t1)
      sizes.append(len(batch))
    else:
      learner.observe(batch)
  out = {'ranks': np.asarray(ranks), 'rank_seconds': t_rank,
         'new_items': learner.catalog.num_items - learner.catalog.num_trained,
         'vocab_size': learner.catalog.vocab_size}
  if learn:
    lat = np.asarray(latency[1:]) * 1e3  # the first step compiles
    out.update(events_per_s=round(sum(sizes[1:]) / max(sum(latency[1:]), 1e-9), 1),
               update_latency_ms_p50=round(float(np.percentile(lat, 50)), 1),
               update_latency_ms_p99=round(float(np.percentile(lat, 99)), 1),
               first_step_ms=round(latency[0] * 1e3, 1), steps=len(latency))
  learner.close()
  return out


def train(records: list, tmp: pathlib.Path, name: str, args) -> tuple[pathlib.Path, dict, float]:
  from llm4rec_jax.data import events as events_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  log = tmp / f'{name}.jsonl'
  events_lib.write_jsonl(log, records)
  config = make_config(log, args)
  workdir = tmp / name
  t0 = time.perf_counter()
  trainer.train_and_evaluate(config, workdir)
  return workdir, config, time.perf_counter() - t0


def run_dataset(name: str, args, tmp: pathlib.Path) -> dict:
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  ds = readers.load_dataset(name)
  records = event_records(ds)
  if args.quick:
    records = records[:4000]
  cut = int(len(records) * args.train_fraction)
  stream = records[cut:cut + args.max_stream_events] if args.max_stream_events else records[cut:]
  bounds = np.linspace(0, len(stream), args.windows + 1).astype(int)
  windows = [stream[bounds[k]:bounds[k + 1]] for k in range(args.windows)]

  workdir0, config, train_s = train(records[:cut], tmp, f'{name}-w0', args)
  frozen = stream_ranks(workdir0, stream, config, learn=False)
  adapted = stream_ranks(workdir0, stream, config, learn=True)
  # Window 0's retrained model is the initial one; 'last' retrains before the last window only.
  retrained_ranks = {0: frozen['ranks'][:bounds[1]]}
  retrain_s = {0: round(train_s, 1)}
  todo = {'all': range(1, args.windows), 'last': [args.windows - 1], 'none': []}[args.retrain]
  for k in todo:
    workdir_k, config_k, s = train(records[:cut + bounds[k]], tmp, f'{name}-w{k}', args)
    retrain_s[k] = round(s, 1)
    retrained_ranks[k] = stream_ranks(workdir_k, windows[k], config_k, learn=False)['ranks']

  def per_window(ranks):
    return [ndcg_hr(ranks[bounds[k]:bounds[k + 1]])['ndcg@10'] for k in range(args.windows)]

  def subset(ranks, ks):  # the windows that have a retrained model
    return np.concatenate([ranks[bounds[k]:bounds[k + 1]] for k in ks])

  first_time = [stream[int(b)]['timestamp'] if b < len(stream) else stream[-1]['timestamp']
                for b in bounds[:-1]]
  return {
      'interactions': len(records), 'train_events': cut, 'stream_events': len(stream),
      'users': ds.num_users, 'items': ds.num_items,
      'new_items_in_stream': adapted['new_items'],
      'window_start_timestamps': first_time,
      'ndcg@10_by_window': {'frozen': per_window(frozen['ranks']),
                            'adapted': per_window(adapted['ranks']),
                            'retrained': [(ndcg_hr(retrained_ranks[k])['ndcg@10']
                                           if k in retrained_ranks else None)
                                          for k in range(args.windows)]},
      'overall': {'frozen': ndcg_hr(frozen['ranks']), 'adapted': ndcg_hr(adapted['ranks'])},
      # The three models on the windows with a retrained model (all windows with --retrain all).
      'retrained_windows': sorted(retrained_ranks),
      'on_retrained_windows': {
          'frozen': ndcg_hr(subset(frozen['ranks'], sorted(retrained_ranks))),
          'adapted': ndcg_hr(subset(adapted['ranks'], sorted(retrained_ranks))),
          'retrained': ndcg_hr(np.concatenate([retrained_ranks[k]
                                               for k in sorted(retrained_ranks)]))},
      'adapted_throughput': {k: adapted[k] for k in ('events_per_s', 'update_latency_ms_p50',
                                                     'update_latency_ms_p99', 'first_step_ms',
                                                     'steps', 'vocab_size')},
      'train_seconds': retrain_s,
      'online_config': {k: config.online[k] for k in ('params', 'learning_rate', 'batch_size',
                                                       'replay_batch', 'replay_size', 'l2_pull',
                                                       'new_item_init', 'new_item_learning_rate')},
  }


def main():
  p = parser(__doc__)
  p.add_argument('--datasets', default=','.join(DATASETS))
  p.add_argument('--train_fraction', type=float, default=0.7)
  p.add_argument('--windows', type=int, default=4)
  p.add_argument('--preset', default='small')
  p.add_argument('--max_stream_events', type=int, default=0,
                 help='> 0: stream only the first N events after the training part')
  p.add_argument('--retrain', choices=('all', 'last', 'none'), default='all',
                 help='retrain from scratch before every window, before the last one only, or '
                      'never (window 0 always uses the initial model)')
  p.add_argument('--online', action='append', default=[], metavar='KEY=VALUE',
                 help='config.online override, e.g. --online learning_rate=3e-4 (repeatable)')
  args = p.parse_args()
  if args.quick:
    args.datasets, args.windows = 'ml-100k', 2
  tmp = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp())
  tmp.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  results = {}
  for name in args.datasets.split(','):
    results[name] = run_dataset(name, args, tmp)
  if not args.workdir:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps({
      'benchmark': 'online_adaptation', 'quick': args.quick, 'by_dataset': results,
      'protocol': f'prequential, first {args.train_fraction:.0%} of events by time trains, rest '
                  f'streamed in {args.windows} windows; full ranking, seen items excluded',
      'preset': args.preset, 'online_overrides': args.online, 'set': args.set,
      'wall_s': round(time.perf_counter() - t0, 1),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'command': 'python ' + ' '.join(['benchmarks/online_adaptation.py', *sys.argv[1:]]),
  }))


if __name__ == '__main__':
  main()
