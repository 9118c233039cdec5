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

``--variant NAME:key=value,...`` (repeatable) adapts with several ``config.online`` settings on the
same trained models (``warm_up=False`` skips ``OnlineLearner.warm_up``); ``--adapted`` names the
variant reported as "adapted" (default: the last). Each variant is also run twice more on a fresh
learner over the whole stream, without ranking:

* sustained: every event available at once, micro-batches back to back; events/s over the stream
  (the device is synced at the end);
* paced: events arrive at each of ``--arrival_rates`` per second; a micro-batch closes when full or
  ``--max_wait_ms`` after its first event; after each update the learner serves a recommendation
  (``OnlineLearner.recommend``) for the batch's last user. Update latency = learn + device sync;
  freshness = recommendation served - event arrival, for every event. A pass that falls more than
  ``--max_backlog_s`` behind is stopped (``fell_behind``: its figures cover the events served).

XLA compilations are counted (``llm4rec_jax.online.compiles``) from the end of warm-up (without
warm-up: from the end of the first micro-batch) over the prequential, sustained and paced passes.

  python benchmarks/online_adaptation.py [--datasets ml-100k,ml-latest-small,musical-instruments]
      [--quick] [--online learning_rate=3e-4] [--dataset_online ml-100k:learning_rate=1e-4]
      [--variant fast:window=8,sync_every=16] [--set train.num_epochs=20] [--out FILE]
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

import provenance
from common import apply_overrides, parser

DATASETS = ('ml-100k', 'ml-latest-small', 'musical-instruments')
# Catalog sizes OnlineLearner.warm_up compiles ahead (this one and the next growth would reach);
# --quick warms this size only (main sets 1): its short stream does not outgrow the reserved rows.
WARM_BUCKETS = 2


def make_config(log_path: pathlib.Path, args, name: str = ''):
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
  c.online.update(dict(batch_size=64, learning_rate=1e-3, params='all'))
  c.seed = args.seed
  if args.quick:
    c.model.update(dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64))
    c.train.max_steps = 10
    c.train.eval_every = 10
  apply_overrides(c, args.set)
  apply_overrides(c, [f'online.{kv}' for kv in args.online])
  apply_overrides(c, [f'online.{kv.split(":", 1)[1]}' for kv in args.dataset_online
                      if kv.split(':', 1)[0] == name])
  return c


def parse_variants(specs: list[str]) -> dict[str, dict]:
  """``['fast:window=8,sync_every=16']`` -> ``{'fast': {'window': 8, 'sync_every': 16}}``."""
  import ast  # pylint: disable=import-outside-toplevel
  out = {}
  for spec in specs or ['adapted:']:
    name, _, body = spec.partition(':')
    fields = {}
    for kv in filter(None, body.split(',')):
      k, _, v = kv.partition('=')
      try:
        fields[k.strip()] = ast.literal_eval(v.strip())
      except (ValueError, SyntaxError):
        fields[k.strip()] = v.strip()
    out[name] = fields
  return out


def percentile(values, q) -> float | None:
  return round(float(np.percentile(values, q)), 2) if len(values) else None


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


def make_learner(workdir: pathlib.Path, config, variant: dict | None):
  """A fresh learner (no resume) with ``variant``'s online overrides, warmed up unless it says
  ``warm_up=False``; returns (learner, warm-up report or None)."""
  from llm4rec_jax.online import OnlineLearner  # pylint: disable=import-outside-toplevel
  overrides = dict(variant or {})
  warm = overrides.pop('warm_up', True) and variant is not None  # None: the frozen model
  learner = OnlineLearner(workdir, overrides={**dict(config.online), **overrides}, resume=False)
  return learner, (learner.warm_up(WARM_BUCKETS) if warm else None)


def stream_ranks(workdir: pathlib.Path, events: list, config, *, learn: bool,
                 variant: dict | None = None) -> dict:
  """Prequential ranks over ``events``; ``learn`` adapts after each micro-batch."""
  import jax  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online import micro_batches, open_events  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learner, warm = make_learner(workdir, config, variant if learn else None)
  counter = CompileCounter().start() if warm else None
  ranks, latency, sizes = [], [], []
  t_rank = 0.0
  for batch in micro_batches(open_events(events), size=learner.oc.batch_size):
    t0 = time.perf_counter()
    ranks.extend(learner.rank(batch).tolist())
    t1 = time.perf_counter()
    t_rank += t1 - t0
    if learn:
      learner.learn(batch)
      jax.block_until_ready(learner.state['params'])
      latency.append(time.perf_counter() - t1)
      sizes.append(len(batch))
    else:
      learner.observe(batch)
    counter = counter or CompileCounter().start()  # without warm-up: after the first batch
  out = {'ranks': np.asarray(ranks), 'rank_seconds': t_rank,
         'new_items': learner.catalog.num_items - learner.catalog.num_trained,
         'vocab_size': learner.catalog.vocab_size}
  if learn:
    learner.sync()
    lat = np.asarray(latency[1:]) * 1e3  # the first step compiles
    out.update(events_per_s=round(sum(sizes[1:]) / max(sum(latency[1:]), 1e-9), 1),
               update_latency_ms_p50=round(float(np.percentile(lat, 50)), 1),
               update_latency_ms_p99=round(float(np.percentile(lat, 99)), 1),
               first_step_ms=round(latency[0] * 1e3, 1), steps=len(latency),
               compilations_after_warm_up=counter.count, warm_up=warm)
  learner.close()
  return out


def sustained(workdir: pathlib.Path, events: list, config, variant: dict) -> dict:
  """Events/s over the whole stream, micro-batches back to back (no ranking, no serving)."""
  import jax  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online import micro_batches, open_events  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learner, warm = make_learner(workdir, config, variant)
  batches = list(micro_batches(open_events(events), size=learner.oc.batch_size))
  counter, t0, done = None, None, 0
  if warm:
    counter, t0 = CompileCounter().start(), time.perf_counter()
  for batch in batches:
    learner.learn(batch)
    if counter is None:  # without warm-up the clock starts after the first (compiling) batch
      jax.block_until_ready(learner.state['params'])
      counter, t0 = CompileCounter().start(), time.perf_counter()
    else:
      done += len(batch)
  learner.sync()
  jax.block_until_ready(learner.state['params'])
  seconds = time.perf_counter() - t0
  out = {'events': done, 'seconds': round(seconds, 3),
         'events_per_s': round(done / max(seconds, 1e-9), 1),
         'compilations_after_warm_up': counter.count, 'vocab_size': learner.catalog.vocab_size}
  learner.close()
  return out


def paced(workdir: pathlib.Path, events: list, config, variant: dict, args, rate: float) -> dict:
  """Events arriving at ``rate``/s: update latency and freshness (event arrival -> a
  recommendation for its user served after the update that learned it)."""
  import jax  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online import open_events  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.online.compiles import CompileCounter  # pylint: disable=import-outside-toplevel
  learner, warm = make_learner(workdir, config, variant)
  parsed = list(open_events(events))
  size, rate, wait = learner.oc.batch_size, float(rate), args.max_wait_ms / 1e3
  counter = CompileCounter().start() if warm else None
  update_ms, fresh_ms, served, fell_behind = [], [], 0, False
  t0 = time.perf_counter()
  i = 0
  while i < len(parsed):
    now = time.perf_counter() - t0
    arrived = min(len(parsed), int(now * rate) + 1)  # event j arrives at j / rate
    if arrived <= i or (arrived - i < size and now < i / rate + wait):
      time.sleep(max(0.0, min((i + size - 1) / rate, i / rate + wait) - now))
      continue
    if now - i / rate > args.max_backlog_s:
      fell_behind = True
      break
    j = min(arrived, i + size)
    batch = parsed[i:j]
    t_start = time.perf_counter()
    learner.learn(batch)
    jax.block_until_ready(learner.state['params'])
    t_updated = time.perf_counter()
    learner.recommend(batch[-1].user)
    t_served = time.perf_counter() - t0
    if counter is None:  # without warm-up: compilations counted after the first batch
      counter = CompileCounter().start()
    else:
      update_ms.append(1e3 * (t_updated - t_start))
      fresh_ms.extend(1e3 * (t_served - k / rate) for k in range(i, j))
      served += j - i
    i = j
  learner.sync()
  out = {'arrival_rate': rate, 'events_served': served, 'fell_behind': fell_behind,
         'update_latency_ms_p50': percentile(update_ms, 50),
         'update_latency_ms_p99': percentile(update_ms, 99),
         'freshness_ms_p50': percentile(fresh_ms, 50),
         'freshness_ms_p99': percentile(fresh_ms, 99),
         'mean_batch': round(served / max(len(update_ms), 1), 1),
         'compilations_after_warm_up': counter.count if counter else None}
  learner.close()
  return out


def train(records: list, tmp: pathlib.Path, name: str, args) -> tuple[pathlib.Path, dict, float]:
  from llm4rec_jax.data import events as events_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  log = tmp / f'{name}.jsonl'
  events_lib.write_jsonl(log, records)
  config = make_config(log, args, name.rsplit('-w', 1)[0])
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
  variants = parse_variants(args.variant)
  primary = args.adapted or list(variants)[-1]
  measured = {}
  for vname, variant in variants.items():
    run = stream_ranks(workdir0, stream, config, learn=True, variant=variant)
    measured[vname] = {
        'online': variant, 'overall': ndcg_hr(run['ranks']),
        'prequential_pass': {k: run[k] for k in (
            'events_per_s', 'update_latency_ms_p50', 'update_latency_ms_p99', 'first_step_ms',
            'steps', 'vocab_size', 'compilations_after_warm_up', 'warm_up')},
        'sustained': sustained(workdir0, stream, config, variant),
        'paced_at': {str(r): paced(workdir0, stream, config, variant, args, r)
                     for r in args.arrival_rates},
        'ranks': run['ranks']}
    measured[vname]['paced'] = measured[vname]['paced_at'][str(args.arrival_rates[0])]
    print(json.dumps({'dataset': name, 'variant': vname,
                      **{k: v for k, v in measured[vname].items() if k != 'ranks'}}),
          file=sys.stderr, flush=True)
  adapted = dict(measured[primary]['prequential_pass'], ranks=measured[primary]['ranks'],
                 new_items=run['new_items'])
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
      'adapted_variant': primary,
      'config': config.to_dict(),
      'variants': {
          k: dict({f: v for f, v in m.items() if f != 'ranks'},
                  on_retrained_windows=ndcg_hr(subset(m['ranks'], sorted(retrained_ranks))))
          for k, m in measured.items()},
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
  p.add_argument('--dataset_online', action='append', default=[], metavar='DATASET:KEY=VALUE',
                 help='config.online override for one dataset (repeatable)')
  p.add_argument('--variant', action='append', default=[], metavar='NAME:KEY=VALUE,...',
                 help='an adapted variant (repeatable); warm_up=False skips the warm-up')
  p.add_argument('--adapted', default='', help='the variant reported as adapted (default: last)')
  p.add_argument('--arrival_rates', default='5000',
                 help='paced passes: events arriving per second, comma-separated (the first is '
                      'reported as "paced")')
  p.add_argument('--max_wait_ms', type=float, default=50.0,
                 help='paced pass: a partial micro-batch closes this long after its first event')
  p.add_argument('--max_backlog_s', type=float, default=30.0,
                 help='paced pass: stop when this far behind the arrivals')
  p.add_argument('--out', default='', help='also write the JSON line to this file')
  args = p.parse_args()
  args.arrival_rates = [float(r) for r in args.arrival_rates.split(',')]
  record = provenance.start()
  if args.quick:
    global WARM_BUCKETS  # pylint: disable=global-statement
    args.datasets, args.windows, WARM_BUCKETS = 'ml-100k', 2, 1
  tmp = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp())
  tmp.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  results = {}
  for name in args.datasets.split(','):
    results[name] = run_dataset(name, args, tmp)
  if not args.workdir:
    shutil.rmtree(tmp, ignore_errors=True)
  record['seeds'] = [args.seed]
  line = json.dumps({
      'benchmark': 'online_adaptation', 'quick': args.quick, 'by_dataset': results,
      'protocol': f'prequential, first {args.train_fraction:.0%} of events by time trains, rest '
                  f'streamed in {args.windows} windows; full ranking, seen items excluded',
      'preset': args.preset, 'online_overrides': args.online, 'set': args.set,
      'wall_s': round(time.perf_counter() - t0, 1),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'command': 'python ' + ' '.join(['benchmarks/online_adaptation.py', *sys.argv[1:]]),
      'arrival_rates': args.arrival_rates, 'max_wait_ms': args.max_wait_ms,
      'provenance': provenance.finish(record),
  })
  print(line)
  if args.out:
    pathlib.Path(args.out).write_text(line + '\n')


if __name__ == '__main__':
  main()
