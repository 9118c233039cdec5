"""Generates the tables and plot of ``docs/scale.md`` from ``benchmarks/results/movielens_scale.json``
(MovieLens-25M cost curve) and ``benchmarks/results/electronics_scale.json`` (Beam preparation and
training from shards).

  python benchmarks/movielens_scale_report.py   # rewrites the table in docs/scale.md, docs/scale.png

Every figure comes from the result file; nothing is typed in by hand. The table sits between the
markers ``<!-- movielens_scale:start -->`` and ``<!-- movielens_scale:end -->``; ``--check`` exits
non-zero when the committed table differs from what the result file gives (tests/test_docs_scale.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / 'benchmarks' / 'results' / 'movielens_scale.json'
DOC = ROOT / 'docs' / 'scale.md'
PLOT = ROOT / 'docs' / 'scale.png'
START, END = '<!-- movielens_scale:start -->', '<!-- movielens_scale:end -->'
ELECTRONICS = ROOT / 'benchmarks' / 'results' / 'electronics_scale.json'
E_START, E_END = '<!-- electronics_scale:start -->', '<!-- electronics_scale:end -->'


def rows(record: dict) -> list[dict]:
  out = []
  for size in record['sizes']:
    run, load, rel = size['run'], size['load_only'], size['release']
    if 'error' in run or 'error' in load:
      out.append({'interactions': rel['interactions'], 'error': run.get('error') or load['error']})
      continue
    out.append({
        'interactions': rel['interactions'], 'users': rel['users'],
        'max_per_user': rel['ratings_per_user']['max'],
        'load_s': load['load_s'], 'split_s': load['split_s'], 'load_rss_gb': load['peak_rss_gb'],
        'run_rss_gb': run['peak_rss_gb'], 'train_seq_s': run['train_sequences_per_s'],
        'eval_users_s': run['eval_users_per_s'], 'test_eval_s': run['test_eval_s'],
        'wall_s': run['wall_s'], 'test_ndcg10': run['test']['ndcg@10']})
  return out


def table(record: dict) -> str:
  head = ('| interactions | users | most by one user | load (s) | split (s) | load peak RSS (GB) '
          '| whole-run peak RSS (GB) | train seq/s | eval users/s | test eval (s) | run wall (s) |')
  lines = [head, '|' + ' --- |' * (head.count('|') - 1)]
  for r in rows(record):
    if 'error' in r:
      lines.append(f"| {r['interactions']:,} | failed: {r['error']} |" + ' |' * 9)
      continue
    lines.append(f"| {r['interactions']:,} | {r['users']:,} | {r['max_per_user']:,} | {r['load_s']} "
                 f"| {r['split_s']} | {r['load_rss_gb']:.2f} | {r['run_rss_gb']:.2f} "
                 f"| {r['train_seq_s']} | {r['eval_users_s']} | {r['test_eval_s']} "
                 f"| {r['wall_s']} |")
  m = record['machine']
  lines.append('')
  lines.append(f"From `benchmarks/results/movielens_scale.json`: `{record['command']}`, commit "
               f"`{record['commit'][:12]}`, {record['date']}, {m['cpu_model']} ({m['cores']} cores, "
               f"{m['memory_gb']} GB), load average {m['load_avg_start'][0]} at start, "
               f"{m['load_avg_end'][0]} at end; {record['steps']} training steps per size, "
               f"seed {record['seeds'][0]}.")
  return '\n'.join(lines) + '\n'


def plot(record: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rs = [r for r in rows(record) if 'error' not in r]
  x = [r['interactions'] / 1e6 for r in rs]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  axes[0].plot(x, [r['load_s'] for r in rs], 'o-', label='load (s)')
  axes[0].plot(x, [r['test_eval_s'] for r in rs], 's-', label='full-ranking test evaluation (s)')
  axes[0].plot(x, [r['wall_s'] for r in rs], '^-', label='whole run (s)')
  axes[0].set_xlabel('interactions (millions)')
  axes[0].set_ylabel('seconds')
  axes[0].legend(fontsize=8)
  axes[1].plot(x, [r['load_rss_gb'] for r in rs], 'o-', label='load + split')
  axes[1].plot(x, [r['run_rss_gb'] for r in rs], 's-', label='whole run')
  axes[1].axhline(6.0, color='grey', ls=':', label='6 GB target')
  axes[1].set_xlabel('interactions (millions)')
  axes[1].set_ylabel('peak RSS (GB)')
  axes[1].legend(fontsize=8)
  fig.suptitle('MovieLens-25M-shaped releases on one 2-core CPU machine')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def electronics_table(record: dict) -> str:
  head = ('| release scale | ratings | users | items | shards | prepare (s) | prepare peak RSS (MB) '
          '| shards (MB) | Grain read seq/s | train seq/s | eval users/s | train peak RSS (MB) |')
  lines = [head, '|' + ' --- |' * (head.count('|') - 1)]
  notes = []
  for key, r in sorted(record['runs'].items(),
                       key=lambda kv: (kv[1]['manifest']['num_interactions'], kv[0])):
    m, t = r['manifest'], r.get('train', {})
    lines.append(
        f"| {key.split(',')[0].split('=')[1]} | {m['num_interactions']:,} | {m['num_users']:,} "
        f"| {m['num_items']:,} | {m['num_shards']} | {r['prepare_wall_s']} "
        f"| {r['prepare_peak_rss_mb']} | {r['output_mb']} "
        f"| {r['grain_read_process_0_of_2']['iter_dataset_sequences_per_s']} "
        f"| {t.get('train_sequences_per_s', '-')} | {t.get('eval_users_per_s', '-')} "
        f"| {t.get('peak_rss_mb', '-')} |")
    notes.append(f"`{r['command']}` (commit `{r['git_commit'][:12]}`, {r['date']}, load average "
                 f"{r['load_average_start'][0]:.1f} at start, {r['load_average_end'][0]:.1f} at end)")
  lines.append('')
  lines.append('From `benchmarks/results/electronics_scale.json`: ' + '; '.join(dict.fromkeys(notes))
               + '.')
  return '\n'.join(lines) + '\n'


def section(doc: str, start: str = START, end: str = END) -> str:
  """The generated table as it stands in ``doc`` (between the markers)."""
  return doc[doc.index(start) + len(start):doc.index(end)].strip('\n') + '\n'


def _replace(doc: str, start: str, end: str, text: str) -> str:
  return doc[:doc.index(start) + len(start)] + '\n' + text + doc[doc.index(end):]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--check', action='store_true', help='fail if the table in docs/scale.md is stale')
  args = p.parse_args()
  record = json.loads(RESULT.read_text())
  text = table(record)
  e_text = electronics_table(json.loads(ELECTRONICS.read_text()))
  doc = DOC.read_text()
  if args.check:
    if section(doc) != text or section(doc, E_START, E_END) != e_text:
      sys.exit(f'{DOC} differs from its result files: run python benchmarks/movielens_scale_report.py')
    return
  DOC.write_text(_replace(_replace(doc, START, END, text), E_START, E_END, e_text))
  plot(record, PLOT)
  print(f'wrote {DOC} and {PLOT}')


if __name__ == '__main__':
  main()
