"""The deployed path: ``llm4rec adapt --events=-`` fed by a producer writing to its stdin at a fixed rate.

A model is trained on the first ``--train_fraction`` of the dataset's interactions in time order (as
``online_adaptation.py`` does); then ``llm4rec adapt --workdir=W --events=-`` runs as its own process
with the library's ``online`` defaults (plus ``--online`` overrides), and once it logs that it is
ready (after warm-up) a producer thread writes the remaining interactions to its stdin as JSON lines,
``--rate`` per second, in ticks of 5 ms. A producer that finds the pipe full waits: it then falls
behind its schedule, which is what "not keeping up" looks like from outside.

Reported (one JSON line): the producer's lateness against its schedule (p50 / p99 / max, ms), the
stream's duration as written and the time from the last line written to the adapt process's summary
(``drain_s``: the events still queued, the last micro-batch, the final snapshot and the index save),
and adapt's own summary (records, events/s over its run, update latency, compilations after
warm-up, snapshots written during the stream). ``kept_up``: the producer's lateness p99 stayed
within 1 s (issue 22's freshness target).

  python benchmarks/online_stdin.py [--dataset ml-100k] [--rate 5000] [--quick]
      [--online snapshot_every_s=5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import online_adaptation
import provenance
from common import parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TICK_S = 0.005
READY = 'llm4rec adapt: ready'


def produce(proc: subprocess.Popen, lines: list[str], rate: float) -> dict:
  """Writes ``lines`` to ``proc``'s stdin at ``rate`` per second; returns the schedule lateness."""
  per_tick = max(1, int(round(rate * TICK_S)))
  late = []
  t0 = time.perf_counter()
  for k, start in enumerate(range(0, len(lines), per_tick)):
    due = t0 + k * per_tick / rate
    now = time.perf_counter()
    if now < due:
      time.sleep(due - now)
    late.append(max(0.0, time.perf_counter() - due))
    proc.stdin.write(''.join(lines[start:start + per_tick]))
    proc.stdin.flush()  # blocks while the pipe is full: the reader is behind
  t_end = time.perf_counter()
  proc.stdin.close()
  late_ms = 1e3 * np.asarray(late)
  return {'lines': len(lines), 'rate': rate, 'written_s': round(t_end - t0, 3),
          'scheduled_s': round(len(lines) / rate, 3), 't_end': t_end,
          'lateness_ms_p50': round(float(np.percentile(late_ms, 50)), 2),
          'lateness_ms_p99': round(float(np.percentile(late_ms, 99)), 2),
          'lateness_ms_max': round(float(late_ms.max()), 2)}


def run(args) -> dict:
  from llm4rec_jax.data import readers  # pylint: disable=import-outside-toplevel
  tmp = pathlib.Path(args.workdir or tempfile.mkdtemp())
  tmp.mkdir(parents=True, exist_ok=True)
  records = online_adaptation.event_records(readers.load_dataset(args.dataset))
  if args.quick:
    records = records[:4000]
  cut = int(len(records) * args.train_fraction)
  train_args = argparse.Namespace(preset=args.preset, seed=args.seed, quick=args.quick, set=args.set,
                                  online=[], dataset_online=[])
  workdir, _, train_s = online_adaptation.train(records[:cut], tmp, f'{args.dataset}-stdin',
                                                train_args)
  stream = records[cut:]
  lines = [json.dumps(r) + '\n' for r in stream]
  cmd = [sys.executable, '-m', 'llm4rec_jax.cli', 'adapt', f'--workdir={workdir}', '--events=-',
         *[f'--online={kv}' for kv in args.online]]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  t_start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  err_lines: list[str] = []
  ready = threading.Event()

  def read_stderr():
    for line in proc.stderr:
      err_lines.append(line)
      if READY in line:
        ready.set()
  reader = threading.Thread(target=read_stderr, daemon=True)
  reader.start()
  while not ready.wait(0.2):
    if proc.poll() is not None:
      reader.join(5)
      raise SystemExit(f'adapt exited with {proc.returncode} before reading:\n'
                       + ''.join(err_lines[-30:]))
  t_ready = time.perf_counter()
  try:
    produced = produce(proc, lines, args.rate)
  except BrokenPipeError:  # adapt exited mid-stream: show why
    proc.wait(timeout=60)
    reader.join(5)
    raise SystemExit(f'adapt exited with {proc.returncode} while reading stdin:\n'
                     + ''.join(err_lines[-30:])) from None
  out = proc.stdout.read()  # the summary line, printed when adapt is done
  t_done = time.perf_counter()
  proc.wait(timeout=600)
  reader.join(5)
  if proc.returncode != 0:
    raise SystemExit(f'adapt failed ({proc.returncode}):\n' + ''.join(err_lines[-30:]))
  summary = json.loads(out)
  t_end = produced.pop('t_end')
  keep = ('records', 'events', 'steps', 'new_items', 'seconds', 'events_per_s',
          'update_latency_ms_p50', 'update_latency_ms_p99', 'compilations',
          'snapshots_during_stream', 'skipped_records', 'warm_up')
  return {'dataset': args.dataset, 'train_events': cut, 'stream_events': len(stream),
          'train_seconds': round(train_s, 1), 'start_to_ready_s': round(t_ready - t_start, 2),
          'producer': produced, 'drain_s': round(t_done - t_end, 3),
          'kept_up': bool(produced['lateness_ms_p99'] <= 1000.0),
          'adapt': {k: summary.get(k) for k in keep}, 'online_overrides': args.online}


def main():
  p = parser(__doc__)
  p.add_argument('--dataset', default='ml-100k')
  p.add_argument('--rate', type=float, default=5000.0, help='events per second written to stdin')
  p.add_argument('--train_fraction', type=float, default=0.7)
  p.add_argument('--preset', default='small')
  p.add_argument('--online', action='append', default=[], metavar='KEY=VALUE',
                 help='a config.online override passed to llm4rec adapt (repeatable)')
  p.add_argument('--out', default='', help='also write the JSON line to this file')
  args = p.parse_args()
  record = provenance.start()
  record['seeds'] = [args.seed]
  result = {'benchmark': 'online_stdin', 'quick': args.quick, 'seed': args.seed,
            **run(args), 'command': ' '.join(['python benchmarks/online_stdin.py', *sys.argv[1:]])}
  result['provenance'] = provenance.finish(record)
  line = json.dumps(result)
  if args.out:
    pathlib.Path(args.out).write_text(line + '\n')
  print(line)


if __name__ == '__main__':
  main()
