"""Amazon-Electronics-2023-shaped release at a fraction of full scale: generate the raw JSON lines,
prepare them with the Beam pipeline (DirectRunner), read them back through the per-process Grain
input; writes benchmarks/results/electronics_scale.json (one entry per scale, merged).

  python benchmarks/electronics_scale.py --scale 0.05 --scale 0.1

Peak memory of the preparation is the peak of the summed RSS of the ``python -m
llm4rec_jax.data.prepare`` process and all its children, sampled every 0.1 s with psutil.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import psutil

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm4rec_jax import workdir as workdir_lib  # noqa: E402  pylint: disable=wrong-import-position
from llm4rec_jax.data.prepare import generate, source  # noqa: E402  pylint: disable=wrong-import-position

RESULTS = ROOT / 'benchmarks' / 'results' / 'electronics_scale.json'


def machine() -> dict:
  model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo', encoding='utf-8')
                if line.startswith('model name')), platform.processor())
  return dict(cpu=model, cores=os.cpu_count(), memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
              python=platform.python_version())


def run_tree_peak(cmd: list[str]) -> tuple[float, int, str]:
  """Wall seconds, peak summed RSS (bytes) of the process tree, stdout."""
  t = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
  root, peak = psutil.Process(proc.pid), 0
  while proc.poll() is None:
    try:
      rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
      peak = max(peak, rss)
    except psutil.Error:
      pass
    time.sleep(0.1)
  out, err = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f'{cmd} failed:\n{err[-3000:]}')
  return time.perf_counter() - t, peak, out


def read_throughput(prepared_dir: str, seconds: float, batch: int = 256) -> dict:
  """Process 0 of 2: training windows per second through the Grain dataset (shuffled access),
  iterated as a ``MapDataset`` (one thread) and as the trainer does (``to_iter_dataset()``, Grain's
  default read threads)."""
  prep = source.Prepared(prepared_dir)
  t = time.perf_counter()
  ds = source.train_dataset(prep, max_len=50, global_batch_size=2 * batch, seed=0, num_epochs=1,
                            process_index=0, process_count=2)
  out = dict(windows_in_slice=len(ds) * batch, setup_s=round(time.perf_counter() - t, 2))
  for name, it in (('map_dataset', iter(ds)), ('iter_dataset', iter(ds.to_iter_dataset()))):
    n, t = 0, time.perf_counter()
    for b in it:
      n += len(b['inputs'])
      if time.perf_counter() - t > seconds:
        break
    out[f'{name}_sequences_per_s'] = round(n / (time.perf_counter() - t))
  return out


TRAIN_OVERRIDES = {  # configs/beauty.py:sasrec with a 1.6M-item catalog
    'loss.type': 'sampled_softmax', 'loss.num_negatives': 2048, 'eval.batch_size': 64,
    'eval.max_cases': 10_000, 'train.log_every': 10, 'train.progress_bar': False,
    'debias.beyond_accuracy': False, 'train.keep_checkpoints': 1}


def train_on(prepared: pathlib.Path, work: pathlib.Path, steps: int) -> dict:
  """``llm4rec train`` on ``records:PREPARED`` for ``steps`` steps, then the full-ranking
  evaluation (over every item) of a seeded sample of users; wall time and peak RSS of the process."""
  workdir = work / 'train'
  shutil.rmtree(workdir, ignore_errors=True)
  overrides = {**TRAIN_OVERRIDES, 'data.name': f'records:{prepared}', 'train.max_steps': steps,
               'train.eval_every': steps}
  cmd = [sys.executable, '-m', 'llm4rec_jax.cli', 'train', '--config=configs/beauty.py:sasrec',
         f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()]
  wall, peak, _ = run_tree_peak(cmd)
  events = workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.EVENTS))
  start = next(e for e in events if e['event'] == 'start')
  done = next(e for e in events if e['event'] == 'train_done')
  metrics = json.loads(workdir_lib.path(workdir, workdir_lib.METRICS).read_text())
  test_s = metrics['eval_seconds']['test']
  out = dict(command=' '.join(['llm4rec'] + cmd[3:]), overrides=overrides, wall_s=round(wall, 1),
             peak_rss_mb=round(peak / 2**20), num_params=start['num_params'],
             catalog=start['items'], steps=done['steps_run'],
             train_sequences_per_s=round(done['steady_examples_per_sec'] or 0.0, 1),
             valid_eval_s=round(next(e for e in events if e['event'] == 'eval')['eval_s'], 1),
             test_eval_s=round(test_s, 1),
             eval_users=metrics['test']['num_cases'],
             eval_users_per_s=round(metrics['test']['num_cases'] / test_s, 1),
             test={k: round(metrics['test'][k], 5) for k in ('ndcg@10', 'hr@10')})
  shutil.rmtree(workdir, ignore_errors=True)
  return out


def run_scale(scale: float, work: pathlib.Path, num_shards: int, read_s: float,
              keep: bool = False, train_steps: int = 0) -> dict:
  raw, out = work / f'raw-{scale}', work / f'prepared-{scale}'
  shutil.rmtree(raw, ignore_errors=True)
  shutil.rmtree(out, ignore_errors=True)
  t = time.perf_counter()
  gen = generate.generate(raw, scale=scale, seed=0)
  gen_s = time.perf_counter() - t
  raw_bytes = os.path.getsize(gen['path'])
  cmd = [sys.executable, '-m', 'llm4rec_jax.data.prepare', '--input', str(raw), '--output', str(out),
         '--runner', 'DirectRunner', '--num_shards', str(num_shards)]
  wall, peak, stdout = run_tree_peak(cmd)
  manifest = json.loads(stdout.strip().splitlines()[-1])
  size = sum(f.stat().st_size for f in out.iterdir())
  result = dict(
      generated=gen, generate_s=round(gen_s, 1), raw_mb=round(raw_bytes / 2**20, 1),
      prepare_command=' '.join(cmd[1:]), prepare_wall_s=round(wall, 1),
      prepare_peak_rss_mb=round(peak / 2**20), prepare_mb_per_s=round(raw_bytes / 2**20 / wall, 1),
      output_mb=round(size / 2**20, 1),
      manifest={k: manifest[k] for k in ('num_users', 'num_items', 'num_interactions',
                                         'num_eval_users', 'max_length', 'num_shards')},
      grain_read_process_0_of_2=read_throughput(str(out), read_s))
  shutil.rmtree(raw, ignore_errors=True)
  if train_steps:
    result['train'] = train_on(out, work, train_steps)
  if not keep:
    shutil.rmtree(out, ignore_errors=True)
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--scale', type=float, action='append', required=True)
  p.add_argument('--num_shards', type=int, default=16)
  p.add_argument('--workdir', default='/tmp/electronics_scale')
  p.add_argument('--read_seconds', type=float, default=20.0)
  p.add_argument('--train_steps', type=int, default=0,
                 help='then train this many steps on the shards (sampled softmax) and evaluate')
  p.add_argument('--keep', action='store_true',
                 help='keep the prepared shards (WORKDIR/prepared-SCALE), e.g. to train on them')
  args = p.parse_args()
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {'runs': {}}
  commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  for scale in args.scale:
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    r = run_scale(scale, work, args.num_shards, args.read_seconds, keep=args.keep,
                  train_steps=args.train_steps)
    r.update(command='python benchmarks/electronics_scale.py ' + ' '.join(sys.argv[1:]),
             git_commit=commit, date=started, machine=machine(), load_average_start=load0,
             load_average_end=os.getloadavg(),
             config=dict(num_shards=args.num_shards, runner='DirectRunner', shuffle='files',
                         chunk_mb=256, block_mb=16, seed=0, read_max_len=50, read_batch=256))
    results['runs'][f'scale={scale},num_shards={args.num_shards}'] = r
    print(json.dumps({scale: r}), flush=True)
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(results, indent=1) + '\n')


if __name__ == '__main__':
  main()
