"""The results tables of the README (and docs/), generated from the files in benchmarks/results/.

Every table the README shows with measured figures sits between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->`` and is rendered here from its result files: the protocol it was measured
under, the rows, and where each file came from (commit and date, recorded by the run or, for older
files, backfilled from git history). Nothing in a generated table is typed in by hand.

  python benchmarks/results_tables.py           # rewrites every generated table in place
  python benchmarks/results_tables.py --check   # exit 1 naming each table that differs from its
                                                # files, and each hand-written table with figures

A table is one ``Table``: a name, the result files it reads, the protocol string it shows, a
function from the loaded files to rows (dicts) and the columns (header, row key, format). Rows of
different protocols go in different tables. ``docs/scale.md`` has its own generator
(``benchmarks/movielens_scale_report.py``); its marked blocks count as generated here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import sys
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results'
README = ROOT / 'README.md'

# Markdown files whose generated tables this script rewrites: the README and docs/*.md, except
# docs/scale.md (its own generator) and the docs listed in NOT_YET_GENERATED.
OWN_GENERATOR = {'docs/scale.md': 'benchmarks/movielens_scale_report.py'}
NOT_YET_GENERATED = {
}
# Hand-written tables allowed outside generated blocks: no result figures in them (the digits they
# hold are names, years, feature sizes or metric cut-offs). Keyed by name, matched by header row.
FIGURE_FREE_TABLES = {
    'datasets': '| name (`config.data.name`) | source | reader |',
    'layout': '| path | what it holds |',
}

START = '<!-- table:{} -->'
END = '<!-- /table:{} -->'
_BLOCK = re.compile(r'<!-- table:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->',
                    re.S)
_OTHER_GENERATED = re.compile(r'<!-- (?P<name>[\w-]+):start -->.*?<!-- (?P=name):end -->', re.S)


# ----------------------------------------------------------------------------------------------
# Formatting


def fmt(spec: str) -> Callable[[Any], str]:
  """A cell formatter from a format spec; None (not measured / not applicable) renders blank."""
  def f(v):
    if v is None or v == '':
      return ''
    if isinstance(v, str):
      return v
    return format(v, spec)
  return f


F4, F3, F2, F1, F0 = fmt('.4f'), fmt('.3f'), fmt('.2f'), fmt('.1f'), fmt(',.0f')
TEXT = fmt('')


def ratio(v):
  return '' if v is None else f'{v:.2f}x'


def minutes(seconds):
  return None if seconds is None else round(seconds / 60, 1)


def signed(v, digits=4):
  return f'{v:+.{digits}f}'


def se_of_std(std: float, n: int) -> float:
  """Standard error of a mean from the population std (numpy's default) of n values."""
  return std / math.sqrt(n - 1)


def short_command(command: str) -> str:
  """The recorded command without local paths (``--workdir``, ``--naive_workdir`` ...)."""
  command = re.sub(r'\s--\w*workdir[= ]\S+', '', command)
  return re.sub(r'\s--(save|load|out)[= ]\S+', '', command)


def code(text: str | None) -> str:
  return '' if not text else f'`{text}`'


# ----------------------------------------------------------------------------------------------
# Tables


@dataclasses.dataclass(frozen=True)
class Col:
  header: str
  key: str
  fmt: Callable[[Any], str] = TEXT


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  files: tuple[str, ...]
  protocol: str
  rows: Callable[[dict[str, Any]], list[dict[str, Any]]]
  cols: tuple[Col, ...]


def load(name: str) -> Any:
  """A result file: a dict, or a list of dicts for JSON lines."""
  text = (RESULTS / name).read_text()
  if name.endswith('.jsonl'):
    return [json.loads(line) for line in text.splitlines() if line.strip()]
  return json.loads(text)


def provenance(record: dict) -> tuple[str, str, bool]:
  """(commit, date, backfilled) of one result record."""
  p = record.get('provenance') or record
  commit = p.get('commit') or p.get('git_commit') or 'unknown'
  return commit[:7], (p.get('date') or '')[:10], 'backfilled' in p


def source_line(table: Table, data: dict[str, Any]) -> str:
  parts = []
  for name in table.files:
    records = data[name] if isinstance(data[name], list) else [data[name]]
    seen = []
    for r in records:
      commit, date, backfilled = provenance(r)
      text = f"{commit}, {date}" + (", from git history" if backfilled else "")
      if text not in seen:
        seen.append(text)
    parts.append(f'`benchmarks/results/{name}` ({"; ".join(seen)})')
  return 'Source: ' + ', '.join(parts) + '.'


def render(table: Table) -> str:
  """The text between the table's markers."""
  data = {name: load(name) for name in table.files}
  rows = table.rows(data)
  lines = [f'*Protocol:* {table.protocol}', '',
           '| ' + ' | '.join(c.header for c in table.cols) + ' |',
           '|' + ' --- |' * len(table.cols)]
  for row in rows:
    cells = [c.fmt(row.get(c.key)).replace('|', '\\|') for c in table.cols]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', source_line(table, data)]
  return '\n'.join(lines) + '\n'


# --- leave-one-out accuracy -------------------------------------------------------------------

LOO = ('leave-one-out (last item = test, second last = validation), full ranking over every item, '
       'seen items excluded, best checkpoint by validation NDCG@10, test metrics, one run each '
       '(seed 0), one CPU device on a 2-core machine. Times are wall-clock; "shared" marks runs '
       'whose file notes other jobs on the same cores (their times are not comparable).')


def _shared(rec: dict) -> str:
  note = rec.get('note', '')
  return 'shared' if re.search(r'load|shared|parallel jobs', note) else ''


def _model(rec: dict) -> str:
  m = rec['model']
  text = f"hidden {m['d_model']}, {m['num_layers']} blocks, {m['num_heads']} head(s)"
  mlp = re.search(r'model\.mlp_dim=(\d+)', rec['command'])
  if mlp:
    text += f', MLP {mlp.group(1)}'
  return text + f", dropout {m['dropout']}"


def _loo_row(rec: dict, label: str) -> dict:
  if 'test_best_checkpoint' in rec:  # a run stopped early and evaluated afterwards
    best = rec['test_best_checkpoint']
    test = best['seen_excluded']
    return {'run': f'{label} (`{short_command(rec["command"])}`)', 'model': _model(rec),
            'ndcg': test['ndcg@10'], 'hr': test['hr@10'], 'mrr': test['mrr'],
            'valid': rec['valid_ndcg@10_by_epoch'][str(best['epoch'])],
            'epochs': f"{best['epoch']} / {max(map(int, rec['valid_ndcg@10_by_epoch']))}",
            'shared': _shared(rec)}
  rss = rec.get('peak_rss_mb')
  return {'run': f'{label} (`{short_command(rec["command"])}`)', 'model': _model(rec),
          'params': rec['num_params'] / 1e6, 'ndcg': rec['test']['ndcg@10'],
          'hr': rec['test']['hr@10'], 'mrr': rec['test']['mrr'], 'valid': rec['valid_ndcg@10'],
          'epochs': f"{rec['best_epoch']:.0f} / {rec['epochs_run']:.0f}",
          'to_best': minutes(rec['time_to_best_epoch_s']),
          'seq_s': rec.get('train_examples_per_s'), 'rss': None if rss is None else rss / 1024,
          'shared': _shared(rec)}


LOO_RUNS = (
    ('beauty.json', 'Beauty'),
    ('beauty_mlp64.json', 'Beauty'),
    ('beauty_d128.json', 'Beauty, stopped at epoch 28 of 40'),
    ('beauty_d128_fast.json', 'Beauty, 18-epoch schedule at lr 3e-3'),
    ('beauty_d128_12epochs.json', 'Beauty, 12-epoch schedule'),
    ('yelp.json', 'Yelp'),
    ('yelp_d128.json', 'Yelp'),
    ('yelp_d256.json', 'Yelp, 15-epoch schedule'),
    ('yelp_d128_exclude_seen.json', 'Yelp, seen items out of the training softmax, stopped'),
    ('ml100k.json', 'MovieLens 100K, max_len 200, all windows'),
)

LOO_COLS = (
    Col('run (command)', 'run'), Col('model', 'model'), Col('params (M)', 'params', F2),
    Col('test NDCG@10', 'ndcg', F4), Col('test HR@10', 'hr', F4), Col('test MRR', 'mrr', F4),
    Col('valid NDCG@10', 'valid', F4), Col('best / last epoch', 'epochs'),
    Col('time to best (min)', 'to_best', F1), Col('train seq/s', 'seq_s', F0),
    Col('peak RSS (GiB)', 'rss', F1), Col('CPU', 'shared'))


def _loo_rows(data):
  return [_loo_row(data[f], label) for f, label in LOO_RUNS]


def _seen_ranked_rows(data):
  rows = []
  for f, label in LOO_RUNS:
    if f not in data:
      continue
    rec = data[f]
    if 'test_seen_items_ranked' in rec:
      t = rec['test_seen_items_ranked']
    elif 'test_best_checkpoint' in rec:
      t = rec['test_best_checkpoint']['seen_ranked']
    else:
      continue
    rows.append({'run': f'{label} (`{short_command(rec["command"])}`)', 'model': _model(rec),
                 'ndcg': t['ndcg@10'], 'hr': t['hr@10'], 'mrr': t['mrr']})
  return rows


# --- throughput ---------------------------------------------------------------------------------

def _cpu_throughput_rows(data):
  rows = []
  for f in ('throughput_cpu_tiny_small.json', 'throughput.json'):
    rec = data[f]
    runs = rec.get('runs') or {f'{k}/id': v for k, v in rec['presets'].items()}
    for name, r in runs.items():
      rows.append({'run': f'`{name}` (`{rec["command"]}`)', 'params': r['num_params'] / 1e6,
                   'step_ms': r['step_ms'], 'seq_s': r['examples_per_s'],
                   'tok_s': r['tokens_per_s'], 'targets_s': r['targets_per_s'],
                   'compile_s': r['compile_s']})
  return rows


GPU_THROUGHPUT_FILES = ('throughput_gpu_h100.json', 'throughput_gpu_h200.json')


def _gpu_throughput_rows(data):
  rows = []
  for f in GPU_THROUGHPUT_FILES:
    rows += _gpu_throughput_file_rows(data[f])
  return rows


def _gpu_throughput_file_rows(rec):
  rows = []
  for name, r in rec['runs'].items():
    rows.append({'card': f"{rec['device_kind']} x {rec['devices']} (jax {rec['jax']})",
                 'run': f'`{name}` ({r["attention"]} attention, {r["dtype"]})',
                 'params': r['num_params'] / 1e9, 'shape': f"{r['batch_size']} x {r['max_len']}",
                 'step_ms': r['step_ms'], 'tok_s': r['tokens_per_s'],
                 'achieved': r['achieved_tflops_per_s'], 'datasheet': rec['datasheet_peak_tflops'],
                 'mfu': r['mfu_vs_datasheet'], 'measured': rec['peak_tflops_measured'],
                 'mfu_measured': r.get('mfu_vs_measured_peak'), 'mem': r['peak_memory_gb']})
  return rows


# CPU run of the same config and seed as each GPU run: (label, seed) -> file.
GPU_CPU_TWINS = {
    ('attention-only d128', 0): 'beauty_d128_fast.json',
    ('attention-only d128', 1): 'beauty_d128_seed1.json',
    ('causal filter 0.7, d128', 0): 'beauty_d128_filter0.7_seed0.json',
    ('causal filter 0.7, d128', 1): 'beauty_d128_filter0.7_seed1.json',
}


def _gpu_recsys_rows(data):
  rows = []
  for rec in data['beauty_gpu_h200.jsonl']:
    cpu = data[GPU_CPU_TWINS[(rec['label'], rec['seed'])]]
    rows.append({'model': rec['label'], 'seed': rec['seed'],
                 'card': rec['provenance']['machine']['device_kind'],
                 'gpu_test': rec['test']['ndcg@10'], 'cpu_test': cpu['test']['ndcg@10'],
                 'gpu_valid': rec['valid_ndcg@10'], 'cpu_valid': cpu['valid_ndcg@10'],
                 'epochs': f"{rec['best_epoch']:g} / {cpu['best_epoch']:g}",
                 'to_best': rec['time_to_best_epoch_s'], 'wall': rec['wall_s'],
                 'cpu_to_best': cpu['time_to_best_epoch_s'], 'rate': rec['train_examples_per_s']})
  return rows


def _input_rows(data):
  rec = data['input_pipeline_gpu_h200.json']
  runs = data['beauty_gpu_h200.jsonl']
  used = max(r['train_examples_per_s'] for r in runs)
  return [{'host': f"{rec['provenance']['machine']['cpu_model']}, "
                   f"{rec['provenance']['machine']['cores']} cores",
           'shape': f"{rec['batch_size']} x {rec['max_len']}", 'input': rec['sequences_per_s'],
           'batch_ms': rec['batch_ms'], 'used': used, 'ratio': rec['sequences_per_s'] / used}]


# --- multimodal, semantic IDs, cold start, text fine-tuning ------------------------------------

def _content(v: dict) -> str:
  fields = [f'{k}: {v}' for k, v in v.get('content', {}).items() if v]
  return '; '.join(fields) or 'none'


def _multimodal_rows(data):
  rows = []
  for f, dataset in (('multimodal_scientific.json', 'Amazon Scientific'),
                     ('beauty.json', 'Amazon Beauty'),
                     ('multimodal_beauty_attributes.json', 'Amazon Beauty')):
    rec = data[f]
    variants = rec.get('variants') or {'id': {**rec, 'item_repr': 'id'}}
    for name, v in variants.items():
      rows.append({'run': f'{dataset} (`{short_command(rec["command"])}`)', 'variant': name,
                   'content': _content(v), 'item_repr': v['item_repr'],
                   'ndcg': v['test']['ndcg@10'], 'hr': v['test']['hr@10'],
                   'hr20': v['test']['hr@20'], 'valid': v['valid_ndcg@10'],
                   'epoch': v['best_epoch'], 'params': v['num_params'] / 1e6,
                   'seq_s': v['train_examples_per_s']})
  return rows


def _semantic_rows(data):
  rec = data['semantic_ids.json']
  rows = []
  for head, ranking in (('softmax', 'full ranking over every item'),
                        ('semantic_id', f"trie-constrained beam search, beam {rec['beam_size']}")):
    r = rec[head]
    rows.append({'head': head, 'ranking': ranking, 'ndcg': r['ndcg@10'], 'hr': r['hr@10'],
                 'ndcg20': r['ndcg@20'], 'hr20': r['hr@20'], 'ms': r['inference_ms_per_user']})
  return rows


def _cold_rows(data, first_run: bool):
  rec = data['multimodal_cold_start.json']
  rows = []
  for name, v in rec['variants'].items():
    if ('note' in v) != first_run:
      continue
    cold, test = v['test_cold'], v.get('test', {})
    rows.append({'variant': name, 'item_repr': v.get('item_repr', ''),
                 'id_dropout': v.get('id_dropout'), 'cold_ndcg': cold['ndcg@10'],
                 'cold_hr': cold['hr@10'], 'cold_hr50': cold['hr@50'],
                 'cases': cold.get('num_cases'), 'ndcg': test.get('ndcg@10'),
                 'hr': test.get('hr@10'), 'epoch': v.get('best_epoch')})
  return rows


def _text_finetune_rows(data):
  rows = []
  for f in ('text_finetune.json', 'text_finetune_encoder_lr1e-12.json'):
    rec = data[f]
    variants = rec.get('variants') or {'finetune': rec['finetune']}
    for name, v in variants.items():
      rows.append({'variant': name, 'command': code(rec['command']),
                   'lr': None if name == 'frozen' else f"{rec['encoder_lr']:g}",
                   'ndcg': v['test']['ndcg@10'], 'hr': v['test']['hr@10'],
                   'valid': v['valid_ndcg@10'], 'step_ms': v['step_ms']})
  return rows


# --- retrieval ----------------------------------------------------------------------------------

def _ann_rows(data):
  rec = data['retrieval_ann.json']
  rows = []
  for key in ('clustered', 'iid'):
    r = rec[key]
    p = r['params']
    rows.append({'data': r['distribution'], 'setting': f"defaults: {p['num_leaves']} leaves, "
                 f"{p['leaves_to_search']} searched, {p['reorder']} re-ranked",
                 'recall': r['recall@10'], 'ann': r['ann_qps'], 'exact': r['exact_qps'],
                 'speedup': r['speedup'], 'build': r['build_s'], 'mb': r['index_bytes'] / 1e6,
                 'load': r['load_avg_1m']})
  r = rec['iid_sweep']
  for s in r['sweep']:
    rows.append({'data': r['distribution'], 'setting': f"{r['params']['num_leaves']} leaves, "
                 f"{s['leaves_to_search']} searched, {s['reorder']} re-ranked",
                 'recall': s['recall@10'], 'ann': s['ann_qps'],
                 'exact': r['exact_qps'], 'speedup': s['speedup'], 'load': r['load_avg_1m']})
  return rows


def _serving_rows(data):
  rec = data['retrieval_serving.json']
  rows = []
  for key, r in rec.items():
    if not isinstance(r, dict) or 'with_index' not in r:
      continue
    p = r['index_params']
    index = ('exact (brute force)' if not p['num_leaves'] else
             f"tree: {p['num_leaves']} leaves, {p['leaves_to_search']} searched")
    rows.append({'index': index, 'users': r['users_timed'], 'p50': r['with_index']['p50_ms'],
                 'p99': r['with_index']['p99_ms'], 'p50_no': r['without_index']['p50_ms'],
                 'p99_no': r['without_index']['p99_ms'], 'same': r['same_top10_fraction'],
                 'overlap': r['top10_overlap'], 'load': r['load_avg_1m']})
  return rows


def _rag_rows(data):
  rows = []
  for f in ('retrieval_rag_beauty.json', 'retrieval_rag_scientific.json'):
    rec = data[f]
    off, on = rec['rag_off'], rec['rag_on']
    rows.append({'scenario': f"{rec['scenario']} ({rec['content']})",
                 'epochs': off['epochs_at_best'], 'off': off['test']['ndcg@10'],
                 'on': on['test']['ndcg@10'], 'off_hr': off['test']['hr@10'],
                 'on_hr': on['test']['hr@10'], 'off_s': minutes(off['train_elapsed_s_at_best']),
                 'on_s': minutes(on['train_elapsed_s_at_best'])})
  return rows


# --- debiasing ----------------------------------------------------------------------------------

def _synthetic_rows(data):
  rows = []
  for line in data['debias_synthetic.jsonl']:
    beats = line['beats_naive_on_truth_ndcg@10']
    for name, v in line['variants'].items():
      b = beats.get(name)
      rows.append({'variant': name, 'command': code(re.search(r'--variants \S+',
                                                                line['command']).group(0)),
                   'truth': v['truth_ndcg@10'], 'observed': v['observed_ndcg@10'],
                   'arp': v['arp@10'], 'gini': v['gini@10'], 'tail': v['tail_share@10'],
                   'coverage': v['coverage@10'],
                   'beats': '' if b is None else ('yes' if b else 'no')})
  return rows


def _debias_beauty_rows(data):
  rows = []
  for f, label in (('debias_beauty_d128.json', 'hidden 128 (best checkpoint, epoch 27)'),
                   ('debias_beauty.json', '`small`, stopped early')):
    rec = data[f]
    picked = rec['debiased']['strength']
    for s in rec['sweep']:
      t = s['test']
      rows.append({'model': f"{label}, step {rec['model_step']}", 'strength': s['strength'],
                   'picked': 'picked' if s['strength'] == picked else '',
                   'valid': s['valid_ndcg@10'], 'ndcg': t['ndcg@10'], 'hr': t['hr@10'],
                   'gini': t['gini@10'], 'tail': t['tail_share@10'], 'cov': t['coverage@10'],
                   'arp': t['arp@10']})
  return rows


COAT_METRICS = ('ndcg@5', 'recall@5', 'auc', 'mse')
COAT_NAMES = {
    'naive': 'naive', 'snips_given': 'SNIPS, given propensities',
    'snips_learned': 'SNIPS, learned propensities', 'snips_nb': 'SNIPS, naive-Bayes propensities',
    'snips_popularity': 'SNIPS, popularity propensities', 'dr_given': 'DR, given propensities',
    'dr_nb': 'DR, naive-Bayes propensities', 'mnar_nb': 'MNAR likelihood, naive-Bayes levels',
    'debiased_family': 'debiased family (estimator, propensity and grid point picked per seed)',
}


def _coat_cell(v: dict, metric: str, n: int) -> str:
  m = v[metric]
  cell = f"{m['mean']:.4f} ± {m['std']:.3f}"
  gain = v.get('gain_over_naive', {}).get(metric)
  if gain:  # the file's gains are signed so that positive = better; MSE shown as variant - naive
    diff = -gain['mean'] if metric == 'mse' else gain['mean']
    cell += (f" ({signed(diff, 3)} ± {se_of_std(gain['std'], n):.3f}, "
             f"better on {gain['seeds_better']}/{n})")
  return cell


def _coat_rows(rec: dict) -> list[dict]:
  n = rec['seeds']
  rows = []
  for block, criterion in (('variants', 'validation NDCG@5'), ('variants_by_valid_mse',
                                                             'validation MSE')):
    for name, v in rec[block].items():
      rows.append({'selected': criterion, 'variant': COAT_NAMES.get(name, name),
                   **{m: _coat_cell(v, m, n) for m in COAT_METRICS}})
  return rows


COAT_COLS = (Col('selected on', 'selected'), Col('variant', 'variant'), Col('NDCG@5', 'ndcg@5'),
             Col('Recall@5', 'recall@5'), Col('AUC', 'auc'), Col('MSE', 'mse'))
COAT_PROTOCOL = ('Coat, matrix factorisation; per seed, 30% of the 290 randomly-exposed test users '
                 'are validation and the other 203 are reported; every variant gets the same grid '
                 '(dim 16/32/64 x l2 0.3/1/3/10, 800 full-batch Adam steps) and early stopping, '
                 'grid point and step picked on the named validation criterion. Mean ± std over '
                 'the seeds; in brackets the paired difference variant minus naive on the same '
                 'split, mean ± standard error (std / sqrt(seeds - 1)), and the seeds on which the '
                 'variant is better (higher; for MSE lower).')

# --- fairness, explanations, online, AOT --------------------------------------------------------

def _fairness_rows(data):
  rows = []
  for line in data['debias_ml100k.jsonl']:
    weight = re.search(r'adversary_weight=(\S+)', line['command'])
    for name, v in line['variants'].items():
      w = ''
      if name == 'adversarial':
        w = f'adversary {weight.group(1)}' if weight else 'adversary 1.0 (config default)'
      elif name == 'parity':
        w = 'parity 1.0 (config default)'
      g = v['ndcg@10_by_gender']
      rows.append({'epochs': line['epochs'], 'variant': name, 'weight': w,
                   'command': code(short_command(line['command'])),
                   'ndcg': v['test_ndcg@10'], 'hr': v['test_hr@10'],
                   'gap': v['gender_ndcg@10_gap'], 'm': g['M'], 'f': g['F'],
                   'age': v['age_group_ndcg@10_gap'], 'step': v['best_step']})
  return rows


def _faithfulness_rows(data, files):
  rows = []
  for f, label in files:
    rec = data[f]
    ig, gx = rec['integrated_gradients'], rec['grad_x_input']
    rows.append({'model': f"{label}, checkpoint step {rec['workdir_checkpoint_step']}",
                 'cases': rec['num_cases'], 'steps': rec['ig_steps'],
                 'ig': f"{ig['score_ratio@3']:.2f}x / {ig['rank_ratio@3']:.2f}x",
                 'gx': f"{gx['score_ratio@3']:.2f}x / {gx['rank_ratio@3']:.2f}x",
                 'recent': ratio(ig.get('score_ratio_vs_recent@3')),
                 'gap': ig['completeness_gap_rel_median'],
                 'gx_gap': gx['completeness_gap_rel_median'], 'hist': rec['mean_history_len']})
  return rows


FAITHFUL_MAIN = (('explain_faithfulness_ml100k.json', 'MovieLens 100K `small`'),
                 ('explain_faithfulness_beauty_d128.json', 'Beauty hidden 128'),
                 ('explain_faithfulness_beauty.json', 'Beauty `small`, early checkpoint'))
FAITHFUL_RECENT = (('explain_faithfulness_ml100k_recent_baseline.json', 'MovieLens 100K `small`'),)


def _explain_text_rows(data):
  rows = []
  for f, label in (('explain_text.json', 'generator from the 8-epoch run of '
                    '`explain_text_train_run.json`, loaded and scored'),
                   ('explain_text_base30.json', '30 epochs'),
                   ('explain_text_ctx30.json', '30 epochs + context prediction'),
                   ('explain_text_ctx30_ls.json', '30 epochs + context prediction + label '
                    'smoothing')):
    rec = data[f]
    g, b = rec['greedy'], rec['beam4']
    cell = lambda k, g=g, b=b: f'{g[k]:.2f} ({b[k]:.2f})'  # noqa: E731
    trained = data['explain_text_train_run.json'] if rec['epochs'] == 0 else rec
    losses = trained['valid_loss']
    rows.append({'generator': label, 'command': code(short_command(rec['command'])),
                 'device': rec.get('device', 'cpu'), 'valid': min(losses),
                 'epoch': f'{losses.index(min(losses)) + 1} / {len(losses)}',
                 **{k: cell(k) for k in ('bleu1', 'bleu4', 'rouge1_f', 'rouge2_f', 'rougel_f',
                                         'usr', 'fmr')}})
  t = data['explain_text.json']['template']
  rows.append({'generator': 'grounded template (no training)',
               **{k: f'{t[k]:.2f}' for k in ('bleu1', 'bleu4', 'rouge1_f', 'rouge2_f', 'rougel_f',
                                             'usr', 'fmr')}})
  return rows


def _online_rows(data):
  rows = []
  for f in ('online_adaptation_musical_instruments.json',
            'online_adaptation_musical_instruments_new_item_lr.json',
            'online_adaptation_ml100k.json', 'online_adaptation_ml100k_new_item_lr.json'):
    rec = data[f]
    for dataset, d in rec['by_dataset'].items():
      oc, w, rw = d['online_config'], d['ndcg@10_by_window'], d['on_retrained_windows']
      last = len(w['frozen']) - 1
      rows.append({
          'run': f"{dataset} (`{short_command(rec['command'])}`)",
          'stream': f"{d['stream_events']:,} events, {d['new_items_in_stream']} new items",
          'lr': f"{oc['learning_rate']:g} / "
                f"{oc.get('new_item_learning_rate', oc['learning_rate']):g}",
          'frozen': d['overall']['frozen']['ndcg@10'],
          'adapted': d['overall']['adapted']['ndcg@10'],
          'windows': ' / '.join(f'{a:.4f}' for a in w['adapted']) + ' vs ' +
                     ' / '.join(f'{a:.4f}' for a in w['frozen']),
          'last': ' / '.join(f'{w[m][last]:.4f}' for m in ('frozen', 'adapted', 'retrained')),
          'retrained': f"{rw['frozen']['ndcg@10']:.4f} / {rw['adapted']['ndcg@10']:.4f} / "
                       f"{rw['retrained']['ndcg@10']:.4f}",
          'p50': d['adapted_throughput']['update_latency_ms_p50'],
          'p99': d['adapted_throughput']['update_latency_ms_p99'],
          'events_s': d['adapted_throughput']['events_per_s']})
  return rows


def _online_realtime_rows(data):
  rows = []
  for f in ONLINE_REALTIME_FILES:
    rows += _online_realtime_file_rows(data[f], f)
  return rows


def _online_realtime_file_rows(rec, name):
  rows = []
  for dataset, d in rec['by_dataset'].items():
    rw = d['on_retrained_windows']
    rows.append({'run': f'`{name}`', 'dataset': dataset, 'variant': 'frozen (no learning)',
                 'ndcg': d['overall']['frozen']['ndcg@10'],
                 'retrained': f"{rw['frozen']['ndcg@10']:.4f} / {rw['frozen']['ndcg@10']:.4f} / "
                              f"{rw['retrained']['ndcg@10']:.4f}"})
    for vname, v in d['variants'].items():
      settings = ', '.join(f'{k}={x}' for k, x in v['online'].items()) or 'defaults'
      pre, sus, pac = v['prequential_pass'], v['sustained'], v['paced']
      warm = pre.get('warm_up') or {}
      more = [f"{float(r):,.0f}/s: {p['freshness_ms_p99']:,.0f}" + (' (fell behind)'
                                                                    if p['fell_behind'] else '')
              for r, p in list(v.get('paced_at', {}).items())[1:]]
      rows.append({
          'run': f'`{name}`', 'dataset': dataset, 'fresh_more': '; '.join(more),
          'variant': f'{vname} ({settings})' + (' (reported as adapted)'
                                                 if vname == d['adapted_variant'] else ''),
          'ndcg': v['overall']['ndcg@10'],
          'retrained': f"{rw['frozen']['ndcg@10']:.4f} / {v['on_retrained_windows']['ndcg@10']:.4f}"
                       f" / {rw['retrained']['ndcg@10']:.4f}",
          'events_s': sus['events_per_s'], 'p50': pac['update_latency_ms_p50'],
          'p99': pac['update_latency_ms_p99'], 'fresh99': pac['freshness_ms_p99'],
          'behind': 'yes' if pac['fell_behind'] else 'no',
          'compiles': ' / '.join(str(x) for x in (pre['compilations_after_warm_up'],
                                                  sus['compilations_after_warm_up'],
                                                  pac['compilations_after_warm_up'])),
          'warm': f"{warm['compilations']} in {warm['compile_seconds']:.1f} s" if warm else 'none'})
  return rows


ONLINE_REALTIME_FILES = ('online_adaptation_realtime.json', 'online_adaptation_realtime_2.json',
                         'online_adaptation_realtime_seed1.json',
                         'online_adaptation_realtime_quiet_seed0.json',
                         'online_adaptation_realtime_quiet_seed1.json')


STDIN_FILES = ('online_stdin_ml-100k.json', 'online_stdin_musical-instruments.json',
               'online_stdin_ml-100k_snapshot1s.json')


def _stdin_rows(data):
  rows = []
  for name in STDIN_FILES:
    r = data[name]
    p, a = r['producer'], r['adapt']
    rows.append({'file': f'`{name}`', 'dataset': r['dataset'],
                 'over': ', '.join(r['online_overrides']) or 'defaults', 'lines': p['lines'],
                 'written': f"{p['written_s']:.2f} ({p['scheduled_s']:.2f})",
                 'late99': p['lateness_ms_p99'], 'latemax': p['lateness_ms_max'],
                 'drain': r['drain_s'], 'eps': a['events_per_s'], 'p99': a['update_latency_ms_p99'],
                 'comp': a['compilations'], 'snaps': a['snapshots_during_stream']})
  return rows


def _aot_rows(data):
  rec = data['aot_memory.json']
  rows = []
  for topology, r in rec['runs'].items():
    b = r['per_device_bytes']
    rows.append({'slice': f"TPU {topology} ({r['device_kind']}, {r['num_devices']} devices)",
                 'params': r['num_params'] / 1e9, 'peak': r['per_device_gib'],
                 'state': b['argument'] / 2**20, 'temp': b['temp'] / 2**30, 'hbm': r['hbm_gib'],
                 'fits': 'yes' if r['fits'] else 'no', 'compile': r['compile_s']})
  return rows


def _aot_lora_rows(data):
  rec = data['aot_memory_8b_lora.json']
  rows = []
  for key, r in rec['runs'].items():
    b = r['per_device_state_bytes']
    rows.append({'topology': f"{key.split('/')[0]} ({r['device_kind']}, {r['num_devices']})",
                 'lora': f"rank {r['lora_rank']}" if r['lora_rank'] else 'off (full)',
                 'params': r['num_params'] / 1e9, 'trainable': r['trainable_params'] / 1e6,
                 'opt': r['opt_state_bytes'] / 2**30, 'dev_params': b['params'] / 2**30,
                 'dev_opt': b['opt_state'] / 2**30, 'dev_state': r['per_device_state_gib'],
                 'hbm': r['hbm_gib']})
  return rows


AOT_COMPILED = ('aot_memory_1b_unrolled.json', 'aot_memory_1b_scan_noremat.json',
                'aot_memory_1b_scan.json', 'aot_memory_8b_compiled.json')


def _aot_compiled_rows(data):
  rows = []
  for name in AOT_COMPILED:
    rec = data[name]
    for key, r in rec['runs'].items():
      b, state = r.get('per_device_bytes', {}), r['per_device_state_bytes']
      blocks = ('scan, remat ' + r['remat']) if r.get('scan_layers') else (
          'unrolled' + (', remat ' + r['remat'] if r.get('remat', 'none') != 'none' else ''))
      rows.append({'preset': rec['preset'], 'slice': f"{key.split('/')[0]} ({r['num_devices']})",
                   'lora': f"rank {r['lora_rank']}" if r['lora_rank'] else 'off',
                   'blocks': blocks, 'params': r['num_params'] / 1e9,
                   'state': sum(state.values()) / 2**30,
                   'temp': b['temp'] / 2**30 if b else None,
                   'peak': r.get('per_device_gib'), 'hbm': r['hbm_gib'],
                   'fits': ('yes' if r['fits'] else 'no') + (
                       f" (compiler: {r['error']})" if r.get('error') else ''),
                   'compile': r['compile_s']})
  return rows


# --- docs/val_test_gap.md: where validation NDCG is lost at test, and the transition blend -------

GAP = ('leave-one-out, full ranking, seen items excluded, one trained checkpoint (seed 0, best by '
       'validation NDCG@10) scored on the same users in every case; +- is the paired standard '
       'error over users. test_skip: the test target predicted from the validation history.')
SCORERS = (('model', 'our decoder'), ('markov', 'Markov chain (training transitions)'),
           ('popularity', 'popularity (training counts)'))


def _pm(d: dict | None) -> str:
  if not d:
    return ''
  return f"{d['diff']:+.4f} +- {d['se']:.4f}" if d['se'] else f"{d['diff']:+.4f}"


def _gap_rows(data):
  (rec,) = data.values()
  out = []
  for key, label in SCORERS:
    r = rec['results'][key]
    out.append({'scorer': label, 'valid': r['valid']['ndcg@10'],
                'test_skip': r['test_skip']['ndcg@10'], 'test': r['test']['ndcg@10'],
                'ratio': r['test_over_valid'], 'v2s': _pm(r['valid_to_test_skip']),
                's2t': _pm(r['test_skip_to_test'])})
  return out


GAP_COLS = (Col('scorer', 'scorer'), Col('valid', 'valid', F4), Col('test_skip', 'test_skip', F4),
            Col('test', 'test', F4), Col('test / valid', 'ratio', F3),
            Col('valid -> test_skip', 'v2s'), Col('test_skip -> test', 's2t'))

BLEND = ('leave-one-out, full ranking, seen items excluded; one trained checkpoint per row group '
         '(seed in the row), rescored as log_softmax(decoder) + w * log1p(training transitions of '
         'the last item). w picked by validation NDCG@10 alone (marked); test +- is the paired '
         'standard error against w = 0 on the same users. One seed per group: a lead, not a win.')
BLEND_FILES = ('transition_blend_beauty_d128.json', 'transition_blend_beauty_d128_seed1.json',
               'transition_blend_lastfm_d128.json')


def _blend_rows(data):
  out = []
  for name in BLEND_FILES:
    if name not in data:
      continue
    rec = data[name]
    picked = float(rec['picked_by_valid_ndcg@10'])
    for w, r in sorted(rec['by_weight'].items(), key=lambda kv: float(kv[0])):
      out.append({'data': rec['dataset'], 'seed': rec['config'].get('seed'), 'w': float(w),
                  'picked': 'picked' if float(w) == picked else '',
                  'valid': r['valid']['ndcg@10'], 'test': r['test']['ndcg@10'],
                  'hr': r['test']['hr@10'], 'diff': _pm(r['test_vs_w0'])})
  return out


BLEND_COLS = (Col('data', 'data'), Col('seed', 'seed', fmt('d')), Col('w', 'w', fmt('g')),
              Col('by validation', 'picked'), Col('valid NDCG@10', 'valid', F4),
              Col('test NDCG@10', 'test', F4), Col('test HR@10', 'hr', F4),
              Col('test vs w = 0', 'diff'))


# --- leaderboard: multi-seed rows (benchmarks/leaderboard.py) --------------------------------------

BOARD = ('leave-one-out, full ranking over every item, seen items excluded, best checkpoint by '
         'validation NDCG@10; mean +- standard error over the seeds listed (each seed a fresh '
         'process on the 2-core CPU); minutes are wall time per seed, load from other jobs included.')
BOARD_FILES = tuple(f for f in ('leaderboard_beauty_d128.jsonl',
                                'leaderboard_beauty_d128_filter.jsonl',
                                'leaderboard_lastfm_d128.jsonl',
                                'leaderboard_scientific_beauty_config.jsonl',
                                'leaderboard_wide_prior.jsonl',
                                'leaderboard_known_counts.jsonl',
                                'leaderboard_refit.jsonl',
                                'leaderboard_yelp_filter.jsonl',
                                'leaderboard_yelp_filter_prior.jsonl',
                                'leaderboard_beauty_fused.jsonl',
                                'leaderboard_yelp_fused.jsonl',
                                'leaderboard_ml100k.jsonl')
                    if (RESULTS / f).exists())


def _mse(d: dict) -> str:
  return f"{d['mean']:.4f} +- {d['se']:.4f}"


def _board_rows(data):
  out = []
  for name in BOARD_FILES:
    for rec in data.get(name, []):
      out.append({'data': rec['dataset'], 'variant': rec.get('label') or rec['variant'],
                  'seeds': ', '.join(str(x) for x in rec['seeds']),
                  'ndcg': _mse(rec['test_ndcg@10']), 'hr': _mse(rec['test_hr@10']),
                  'valid': rec['valid_ndcg@10']['mean'],
                  'per_seed': ', '.join(f'{v:.4f}' for v in rec['test_ndcg@10']['per_seed']),
                  'epochs': ', '.join(f'{e:g}' for e in rec['best_epoch']),
                  'minutes': ', '.join(f'{w / 60:.0f}' for w in rec['wall_s'])})
  return out


BOARD_COLS = (Col('data', 'data'), Col('model', 'variant'), Col('seeds', 'seeds'),
              Col('test NDCG@10', 'ndcg'), Col('test HR@10', 'hr'),
              Col('valid NDCG@10', 'valid', F4), Col('test NDCG@10 per seed', 'per_seed'),
              Col('best epoch per seed', 'epochs'), Col('minutes per seed', 'minutes'))


FILTER = ('leave-one-out, full ranking, seen items excluded, best checkpoint by validation NDCG@10; '
          'the Beauty hidden-128 settings (18 epochs, lr 3e-3, dropout 0.5), one row per model and '
          'seed; +- is the paired standard error over the same test users against attention alone '
          'of the same seed.')
FILTER_RUNS = {  # seed -> (attention-only run, filter run, paired comparison)
    0: ('beauty_d128_fast.json', 'beauty_d128_filter0.7_seed0.json',
        'paired_filter0.7_vs_attention_beauty_d128_seed0.json'),
    1: ('beauty_d128_seed1.json', 'beauty_d128_filter0.7_seed1.json',
        'paired_filter0.7_vs_attention_beauty_d128_seed1.json'),
    # The attention-only seed-2 run kept no rankings: its difference is not paired.
    2: ('beauty_d128_seed2.json', 'beauty_d128_filter0.7_seed2.json', None),
}
FILTER_FILES = tuple(f for files in FILTER_RUNS.values()
                     if all((RESULTS / x).exists() for x in files if x) for f in files if f)


def _filter_rows(data):
  rows = []
  for seed, (base, filt, paired) in FILTER_RUNS.items():
    if base not in data or filt not in data or (paired and paired not in data):
      continue
    res = data[paired]['results']['test'] if paired else None
    for rec, label, is_filter in ((data[base], 'attention only (filter_mix 0)', False),
                                  (data[filt], 'attention + causal filter (filter_mix 0.7)', True)):
      dn = dh = ''
      if is_filter and res is not None:
        dn = f"{res['ndcg@10']['b_minus_a']:+.4f} +- {res['ndcg@10']['paired_se']:.4f}"
        dh = f"{res['hr@10']['b_minus_a']:+.4f} +- {res['hr@10']['paired_se']:.4f}"
      elif is_filter:  # no saved rankings of the baseline: the plain difference, no error
        dn = f"{rec['test']['ndcg@10'] - data[base]['test']['ndcg@10']:+.4f} (unpaired)"
        dh = f"{rec['test']['hr@10'] - data[base]['test']['hr@10']:+.4f} (unpaired)"
      rows.append({'model': label, 'seed': seed, 'valid': rec['valid_ndcg@10'],
                   'test': rec['test']['ndcg@10'], 'hr': rec['test']['hr@10'],
                   'epoch': rec['best_epoch'], 'dn': dn, 'dh': dh})
  return rows


FILTER_BLEND_RUNS = 'beauty_d128_filter0.7_blend_reevaluated.jsonl'
FILTER_BLEND_PAIRED = {seed: f'paired_filter0.7_blend_vs_filter_beauty_d128_seed{seed}.json'
                       for seed in (0, 1, 2)}
FILTER_BLEND_FILES = ((FILTER_BLEND_RUNS,) + tuple(f for f in FILTER_BLEND_PAIRED.values()
                                                   if (RESULTS / f).exists())
                      if (RESULTS / FILTER_BLEND_RUNS).exists() else ())


def _filter_blend_rows(data):
  rows = []
  for rec in data[FILTER_BLEND_RUNS]:
    paired = data.get(FILTER_BLEND_PAIRED[rec['seed']])
    diff = paired['results']['test'] if paired else None
    by = rec['transition_blend']['valid_ndcg@10']
    rows.append({'seed': rec['seed'], 'w': rec['transition_blend']['chosen_weight'],
                 'valid_by_w': ', '.join(f'{float(w):g}: {v:.4f}' for w, v in by.items()),
                 'filter_test': diff['ndcg@10']['a'] if diff else None,
                 'test': rec['test']['ndcg@10'], 'hr': rec['test']['hr@10'],
                 'dn': '' if diff is None else
                 f"{diff['ndcg@10']['b_minus_a']:+.4f} +- {diff['ndcg@10']['paired_se']:.4f}",
                 'dh': '' if diff is None else
                 f"{diff['hr@10']['b_minus_a']:+.4f} +- {diff['hr@10']['paired_se']:.4f}"})
  return rows


FILTER_BLEND_COLS = (Col('seed', 'seed', fmt('d')), Col('w chosen', 'w', fmt('g')),
                     Col('valid NDCG@10 by w', 'valid_by_w'),
                     Col('filter test NDCG@10', 'filter_test', F4),
                     Col('filter + blend test NDCG@10', 'test', F4),
                     Col('filter + blend test HR@10', 'hr', F4),
                     Col('test NDCG@10 vs filter', 'dn'), Col('test HR@10 vs filter', 'dh'))


CLAIMS = ('declared multi-seed claims, each tested by `python benchmarks/seed_claim.py` (the command is '
          'in its file): per seed, test NDCG@10 of B minus A on the same seeds; the claim holds when '
          'the mean difference exceeds two standard errors of the per-seed differences.')
CLAIM_FILES = tuple(f for f in ('claim_filter0.7_vs_attention_beauty_d128.json',
                                'claim_filter0.7_blend_vs_filter_beauty_d128.json',
                                'claim_filter0.7_vs_attention_lastfm_d128.json',
                                'claim_filter0.7_ema_vs_filter_beauty_d128.json',
                                'claim_filter_blend_vs_d128_scientific.json',
                                'claim_fusion_vs_filter_blend_scientific.json',
                                'claim_rag_vs_fusion_scientific.json',
                                'claim_wide_prior_vs_blend_beauty.json',
                                'claim_wide_prior_vs_blend_scientific.json',
                                'claim_wide_prior_vs_blend_lastfm.json',
                                'claim_adjust_vs_wide_prior_beauty.json',
                                'claim_adjust_vs_wide_prior_scientific.json',
                                'claim_known_counts_vs_wide_prior_beauty.json',
                                'claim_known_counts_vs_wide_prior_scientific.json',
                                'claim_known_counts_vs_wide_prior_lastfm.json',
                                'claim_refit_vs_known_counts_beauty.json',
                                'claim_refit_vs_known_counts_scientific.json',
                                'claim_refit_vs_known_counts_lastfm.json',
                                'claim_snips_vs_known_counts_beauty.json',
                                'claim_prior_refit_vs_filter_yelp.json',
                                'claim_allwin_vs_one_window_lastfm.json',
                                'claim_attributes_vs_id_beauty.json',
                                'claim_snips_vs_known_counts_scientific.json',
                                'claim_attributes_vs_id_lastfm.json',
                                'claim_attributes_vs_id_lastfm_6seeds.json',
                                'claim_attributes_vs_id_beauty_refitfix.json',
                                'claim_attributes_vs_id_yelp.json',
                                'claim_d64_vs_d128_lastfm.json',
                                'claim_rag_vs_fused_beauty.json')
                    if (RESULTS / f).exists())


def _claim_rows(data):
  return [{'claim': rec['name'], 'seeds': ', '.join(str(x) for x in rec['seeds']),
           'a': f"{rec['a']['mean']:.4f} +- {rec['a']['se']:.4f}",
           'b': f"{rec['b']['mean']:.4f} +- {rec['b']['se']:.4f}",
           'diffs': ', '.join(f'{d:+.4f}' for d in rec['diff_per_seed']),
           'mean': f"{rec['diff_mean']:+.4f} +- {rec['diff_se']:.4f}",
           'holds': 'yes' if rec['holds'] else 'no'} for rec in (data[f] for f in CLAIM_FILES)]


CLAIM_COLS = (Col('claim (B vs A)', 'claim'), Col('seeds', 'seeds'), Col('A test NDCG@10', 'a'),
              Col('B test NDCG@10', 'b'), Col('B - A per seed', 'diffs'),
              Col('mean difference', 'mean'), Col('holds', 'holds'))


# The ablation of issue 19: each part of the system against the system without it, 3 seeds each,
# from the declared claims (claim file -> (data, part added, A: what it is added to)).
ABLATION = (
    ('claim_filter0.7_vs_attention_beauty_d128.json', 'beauty',
     'causal frequency filter beside attention (model.filter_mix=0.7)',
     'id-only decoder, hidden 128 (attention only)'),
    ('claim_filter0.7_blend_vs_filter_beauty_d128.json', 'beauty',
     'first-order transition blend (weight chosen on validation)', 'filter'),
    ('claim_wide_prior_vs_blend_beauty.json', 'beauty',
     'wide transition prior (3 steps ahead of the 3 newest items) instead of the blend',
     'filter + blend'),
    ('claim_adjust_vs_wide_prior_beauty.json', 'beauty',
     'debiasing at inference: popularity adjustment chosen on validation', 'filter + wide prior'),
    ('claim_known_counts_vs_wide_prior_beauty.json', 'beauty',
     'the prior counts the validation interactions at test', 'filter + wide prior'),
    ('claim_snips_vs_known_counts_beauty.json', 'beauty',
     'debiasing objective in training (SNIPS, popularity propensity)',
     'filter + wide prior counting validation (filter_prior before the refit)'),
    ('claim_refit_vs_known_counts_beauty.json', 'beauty',
     'the model refit 1 epoch on what is known at test',
     'filter + wide prior counting validation (filter_prior before the refit)'),
    ('claim_filter_blend_vs_d128_scientific.json', 'scientific',
     'causal filter + first-order blend (the Beauty configuration)',
     'id-only decoder, hidden 128 (attention only)'),
    ('claim_fusion_vs_filter_blend_scientific.json', 'scientific',
     'item content fusion (title/description/brand text, categories; cross-attention)',
     'filter + blend'),
    ('claim_rag_vs_fusion_scientific.json', 'scientific',
     'retrieved context (RAG, training contexts built as evaluation builds them)',
     'filter + blend + fusion'),
    ('claim_wide_prior_vs_blend_scientific.json', 'scientific',
     'wide transition prior instead of the blend', 'filter + blend + fusion'),
    ('claim_adjust_vs_wide_prior_scientific.json', 'scientific',
     'debiasing at inference: popularity adjustment chosen on validation',
     'filter + fusion + wide prior'),
    ('claim_known_counts_vs_wide_prior_scientific.json', 'scientific',
     'the prior counts the validation interactions at test', 'filter + fusion + wide prior'),
    ('claim_refit_vs_known_counts_scientific.json', 'scientific',
     'the model refit 1 epoch on what is known at test',
     'filter + fusion + wide prior counting validation'),
    ('claim_prior_refit_vs_filter_yelp.json', 'yelp',
     'wide prior counting validation + refit 1 epoch (the Beauty default on Yelp)',
     'filter decoder, hidden 128'),
    ('claim_allwin_vs_one_window_lastfm.json', 'lastfm',
     'every training interaction a target (data.all_windows; one window keeps 51% on LastFM)',
     'filter + wide prior counting validation + refit'),
    ('claim_attributes_vs_id_beauty.json', 'beauty',
     'item attributes fused into the item representation (categories, brand; no cross-attention)',
     'filter + wide prior counting validation + refit (filter_prior)'),
    ('claim_snips_vs_known_counts_scientific.json', 'scientific',
     'debiasing objective in training (SNIPS, popularity propensity)',
     'filter + fusion + wide prior counting validation + refit'),
    ('claim_attributes_vs_id_lastfm.json', 'lastfm',
     'item attributes fused into the item representation (tags; no cross-attention)',
     'filter + wide prior counting validation + refit'),
    ('claim_attributes_vs_id_yelp.json', 'yelp',
     'item attributes fused into the item representation (business categories; no '
     'cross-attention)', 'filter + wide prior counting validation + refit (filter_prior)'),
    ('claim_rag_vs_fused_beauty.json', 'beauty',
     'retrieved context (RAG) with the cross-attention it needs (both sides without the refit, '
     'which RAG refuses)', 'filter + wide prior counting validation + attributes (fused)'),
)
ABLATION_FILES = tuple(f for f, *_ in ABLATION if (RESULTS / f).exists())
ABLATION_TEXT = ('each part added to the system named in "added to", 3 seeds (0, 1, 2) each, '
                 'test NDCG@10 mean +- standard error; the difference is paired by seed and '
                 '"helps" when it exceeds two standard errors (benchmarks/seed_claim.py); every '
                 'row is a claim declared before its runs. Leave-one-out, full ranking, seen '
                 'items excluded; weights and strengths chosen on validation only.')


def _ablation_rows(data):
  out = []
  for f, dataset, part, base in ABLATION:
    if f not in data:
      continue
    rec = data[f]
    out.append({'data': dataset, 'part': part, 'base': base,
                'a': f"{rec['a']['mean']:.4f} +- {rec['a']['se']:.4f}",
                'b': f"{rec['b']['mean']:.4f} +- {rec['b']['se']:.4f}",
                'mean': f"{rec['diff_mean']:+.4f} +- {rec['diff_se']:.4f}",
                'holds': 'yes' if rec['holds'] else 'no'})
  return out


ABLATION_COLS = (Col('data', 'data'), Col('part added', 'part'), Col('added to', 'base'),
                 Col('without', 'a'), Col('with', 'b'), Col('difference', 'mean'),
                 Col('helps', 'holds'))


FILTER_COLS = (Col('model', 'model'), Col('seed', 'seed', fmt('d')),
               Col('valid NDCG@10', 'valid', F4),
               Col('test NDCG@10', 'test', F4), Col('test HR@10', 'hr', F4),
               Col('best epoch', 'epoch', fmt('g')), Col('test NDCG@10 vs attention', 'dn'),
               Col('test HR@10 vs attention', 'dh'))


TABLES: tuple[Table, ...] = (
    Table('leave_one_out', tuple(f for f, _ in LOO_RUNS), LOO, _loo_rows, LOO_COLS),
    Table('leave_one_out_seen_ranked', tuple(f for f, _ in LOO_RUNS if f.startswith('yelp')),
          'as the table above, same runs and checkpoints, but seen items ranked (a test target '
          'that repeats a history item can be hit).', _seen_ranked_rows,
          (Col('run (command)', 'run'), Col('model', 'model'), Col('test NDCG@10', 'ndcg', F4),
           Col('test HR@10', 'hr', F4), Col('test MRR', 'mrr', F4))),
    Table('throughput_cpu', ('throughput_cpu_tiny_small.json', 'throughput.json'),
          'the jitted train step after compilation on the Beauty catalog, batch 128 x 50 '
          'positions, full softmax, 30 timed steps, one CPU device on the 2-core machine; '
          'tokens = batch x positions; `fusion` = item attributes fused into every item and '
          'cross-attention in both blocks.', _cpu_throughput_rows,
          (Col('preset / variant (command)', 'run'), Col('params (M)', 'params', F2),
           Col('ms/step', 'step_ms', F1), Col('sequences/s', 'seq_s', F0),
           Col('tokens/s', 'tok_s', F0), Col('loss targets/s', 'targets_s', F0),
           Col('compile (s)', 'compile_s', F1))),
    Table('multimodal', ('multimodal_scientific.json', 'beauty.json',
                         'multimodal_beauty_attributes.json'),
          LOO.split(' Times are')[0] + ' Multimodal = content tokens fused into the item '
          '(`item_repr=both`) with cross-attention in both blocks.', _multimodal_rows,
          (Col('dataset (command)', 'run'), Col('variant', 'variant'),
           Col('content', 'content'), Col('item_repr', 'item_repr'),
           Col('test NDCG@10', 'ndcg', F4), Col('test HR@10', 'hr', F4),
           Col('test HR@20', 'hr20', F4), Col('valid NDCG@10', 'valid', F4),
           Col('best epoch', 'epoch', F0), Col('params (M)', 'params', F2),
           Col('train seq/s', 'seq_s', F0))),
    Table('semantic_ids', ('semantic_ids.json',),
          'Beauty, leave-one-out, seen items excluded, one run each (seed 0); both heads on the '
          'same trained softmax model (`--set model.mlp_dim=64`), whose item table gives the '
          'RQ-k-means codes. Each head ranks its own way: the softmax head scores every item '
          '(full ranking); the semantic-ID head returns only the items its trie-constrained beam '
          'search reaches, so it is **not** a full ranking and metrics past the beam width are '
          'not defined. Inference time per test user for a 512-user batch after compilation, '
          'other jobs on the cores.', _semantic_rows,
          (Col('head', 'head'), Col('ranking', 'ranking'), Col('test NDCG@10', 'ndcg', F4),
           Col('test HR@10', 'hr', F4), Col('test NDCG@20', 'ndcg20', F4),
           Col('test HR@20', 'hr20', F4), Col('ms per user', 'ms', F2))),
    Table('cold_start', ('multimodal_cold_start.json',),
          'Amazon Scientific with a share of items held out of training entirely (absent from '
          'training sequences and from the training softmax); leave-one-out, full ranking, seen '
          'items excluded, best checkpoint by validation NDCG@10, one run each (seed 0); "cold" = '
          'test cases whose target is a held-out item. Rerun command: `' +
          'python benchmarks/multimodal.py --scenario cold_start --variants multimodal,content`.',
          lambda d: _cold_rows(d, first_run=False),
          (Col('variant', 'variant'), Col('item_repr', 'item_repr'),
           Col('id dropout', 'id_dropout', F1), Col('cold cases', 'cases', F0),
           Col('cold NDCG@10', 'cold_ndcg', F4), Col('cold HR@10', 'cold_hr', F4),
           Col('cold HR@50', 'cold_hr50', F4), Col('all-cases NDCG@10', 'ndcg', F4),
           Col('all-cases HR@10', 'hr', F4), Col('best epoch', 'epoch', F0))),
    Table('cold_start_first_run', ('multimodal_cold_start.json',),
          'the first run of the same scenario, made before held-out items were removed from the '
          'training softmax (they were negatives there), so not comparable with the table above; '
          'an id-only model cannot score an item it never trained on either way.',
          lambda d: _cold_rows(d, first_run=True),
          (Col('variant', 'variant'), Col('cold NDCG@10', 'cold_ndcg', F4),
           Col('cold HR@10', 'cold_hr', F4), Col('cold HR@50', 'cold_hr50', F4),
           Col('all-cases NDCG@10', 'ndcg', F4), Col('all-cases HR@10', 'hr', F4))),
    Table('text_finetune', ('text_finetune.json', 'text_finetune_encoder_lr1e-12.json'),
          'the 1,585-item `scientific-features` subset, MiniLM on 32 tokens, `item_repr=both` with '
          'cross-attention, 44 steps (2 epochs), 64 items re-encoded per step, 4 of 6 encoder '
          'layers frozen; leave-one-out, full ranking, seen items excluded, last-step test '
          'metrics, one run each (seed 0); step times under shared load, relative only.',
          _text_finetune_rows,
          (Col('variant', 'variant'), Col('command', 'command'), Col('encoder lr', 'lr'),
           Col('test NDCG@10', 'ndcg', F4), Col('test HR@10', 'hr', F4),
           Col('valid NDCG@10', 'valid', F4), Col('ms/step', 'step_ms', F0))),
    Table('retrieval_ann', ('retrieval_ann.json',),
          '1M x 64 synthetic item vectors (clustered, or i.i.d. Gaussian), 2,000 queries, top 10; '
          'ScaNN against exact brute force, timed back to back in the same process on the 2-core '
          'CPU, whose 1-minute load average is shown (other jobs shared it). Commands: ' +
          '; '.join(code(c) for c in load('retrieval_ann.json')['commands']) + '.', _ann_rows,
          (Col('vectors', 'data'), Col('index setting', 'setting'),
           Col('recall@10', 'recall', F3), Col('ANN QPS', 'ann', F0),
           Col('exact QPS', 'exact', F0), Col('speed-up', 'speedup', ratio),
           Col('build (s)', 'build', F1), Col('index (MB)', 'mb', F0),
           Col('load', 'load', F1))),
    Table('retrieval_serving', ('retrieval_serving.json',),
          f"`recommend` latency per user, one user per call after warm-up, on "
          f"{load('retrieval_serving.json')['model']}; with the index, candidates re-scored "
          "exactly; without it, the full-scoring path (which recompiles per history length, what "
          "its p99 measures); the 2-core CPU was shared (1-minute load average shown). Command: "
          f"{code(load('retrieval_serving.json')['command'])}.", _serving_rows,
          (Col('index', 'index'), Col('users', 'users', F0), Col('p50 ms', 'p50', F1),
           Col('p99 ms', 'p99', F1), Col('without index: p50 ms', 'p50_no', F1),
           Col('without index: p99 ms', 'p99_no', F0),
           Col('same top 10 as full scoring', 'same', F2), Col('top-10 overlap', 'overlap', F2),
           Col('load', 'load', F1))),
    Table('retrieval_rag', ('retrieval_rag_beauty.json', 'retrieval_rag_scientific.json'),
          'RAG on vs off, same model, data and budget, one run each (seed 0): both runs stopped '
          'after the same number of steps and their best checkpoints (by validation NDCG@10) '
          'evaluated on test, leave-one-out, full ranking, seen items excluded; training times '
          'under shared load (other jobs on the 2 cores).', _rag_rows,
          (Col('scenario (content)', 'scenario'), Col('epochs', 'epochs', F2),
           Col('test NDCG@10 off', 'off', F4), Col('test NDCG@10 on', 'on', F4),
           Col('test HR@10 off', 'off_hr', F4), Col('test HR@10 on', 'on_hr', F4),
           Col('train min to best, off', 'off_s', F1),
           Col('train min to best, on', 'on_s', F1))),
    Table('debias_synthetic', ('debias_synthetic.jsonl',),
          'the embedded synthetic generator with 1,500 users and 500 items (`python '
          'benchmarks/debias_synthetic.py --epochs 6 --variants V --set '
          'data.synthetic.num_users=1500 --set data.synthetic.num_items=500`), one run each (seed '
          '0), leave-one-out; "truth" NDCG@10 grades each test list by the generator\'s '
          'unconfounded preferences, "observed" is the usual hit metric on the confounded held-out '
          'item; ARP = average recommended popularity (the true top 10 has ' +
          f"{load('debias_synthetic.jsonl')[0]['oracle_arp@10']:g}); `naive_adjusted_S` = the "
          'naive model ranked with S x log popularity removed; "beats naive" compares truth '
          'NDCG@10 with the naive run of the same settings.', _synthetic_rows,
          (Col('variant', 'variant'), Col('run', 'command'), Col('truth NDCG@10', 'truth', F4),
           Col('observed NDCG@10', 'observed', F4), Col('ARP@10', 'arp', F0),
           Col('Gini@10', 'gini', F3), Col('tail share', 'tail', F3),
           Col('coverage@10', 'coverage', F3), Col('beats naive (truth)', 'beats'))),
    Table('debias_beauty', ('debias_beauty_d128.json', 'debias_beauty.json'),
          'one trained naive Beauty model ranked with S x log popularity subtracted at inference '
          '(`python benchmarks/debias_beauty.py --naive_workdir=W --strengths '
          '0,0.05,0.1,0.2,0.3`); leave-one-out, full ranking, seen items excluded, one model each '
          '(seed 0); the strength is picked on validation NDCG@10 within 2% of strength 0.',
          _debias_beauty_rows,
          (Col('naive model', 'model'), Col('strength', 'strength', fmt('g')),
           Col('', 'picked'), Col('valid NDCG@10', 'valid', F4),
           Col('test NDCG@10', 'ndcg', F4), Col('test HR@10', 'hr', F4),
           Col('Gini@10', 'gini', F3), Col('tail share', 'tail', F3),
           Col('coverage@10', 'cov', F3), Col('ARP@10', 'arp', F1))),
    Table('coat_mnar_confirm', ('debias_coat_mnar_confirm.json',),
          COAT_PROTOCOL + ' Seeds 200-219, the declared run: `' +
          load('debias_coat_mnar_confirm.json')['command'] + '`.',
          lambda d: _coat_rows(d['debias_coat_mnar_confirm.json']),
          COAT_COLS),
    Table('coat_seeds_0_9', ('debias_coat.json',),
          COAT_PROTOCOL + ' Seeds 0-9, every variant: `' + load('debias_coat.json')['command'] +
          '`.', lambda d: _coat_rows(d['debias_coat.json']),
          COAT_COLS),
    Table('coat_snips_confirm', ('debias_coat_confirm.json',),
          COAT_PROTOCOL + ' Seeds 100-119, the declared run: `' +
          load('debias_coat_confirm.json')['command'] + '`.',
          lambda d: _coat_rows(d['debias_coat_confirm.json']),
          COAT_COLS),
    Table('fairness_ml100k', ('debias_ml100k.jsonl',),
          'MovieLens 100K, `small` preset, leave-one-out, full ranking, seen items excluded, best '
          'checkpoint by validation NDCG@10, one run each (seed 0); every run in the file. Gender '
          'gap = |NDCG@10 men - NDCG@10 women| on test; age gap = largest minus smallest age '
          'group\'s NDCG@10.', _fairness_rows,
          (Col('epochs', 'epochs', F0), Col('variant', 'variant'), Col('weight', 'weight'),
           Col('command', 'command'), Col('test NDCG@10', 'ndcg', F4),
           Col('test HR@10', 'hr', F4), Col('gender gap', 'gap', F4),
           Col('NDCG@10 men', 'm', F4), Col('NDCG@10 women', 'f', F4),
           Col('age gap', 'age', F4), Col('best step', 'step', F0))),
    Table('explain_faithfulness', tuple(f for f, _ in FAITHFUL_MAIN),
          'each of 512 test users explains its top-1 recommendation; deleting the top-3 '
          'attributed history items vs 3 random ones (5 draws), ratio of the mean score drop / '
          'mean rank rise; 32 integrated-gradient steps; "vs 3 most recent" = the same ratio '
          'against deleting the 3 newest items (blank: not measured in that run); completeness '
          'gap = median |sum of attributions - score difference| / |score difference|. Command: '
          '`python benchmarks/explain_faithfulness.py --dataset=D --workdir=W`.',
          lambda d: _faithfulness_rows(d, FAITHFUL_MAIN),
          (Col('model', 'model'), Col('integrated gradients: score / rank', 'ig'),
           Col('gradient x input: score / rank', 'gx'),
           Col('IG vs 3 most recent (score)', 'recent'),
           Col('IG completeness gap', 'gap', F3), Col('GxI completeness gap', 'gx_gap', F3),
           Col('mean history length', 'hist', F1))),
    Table('explain_faithfulness_recent', tuple(f for f, _ in FAITHFUL_RECENT),
          'as above but 128 test users and 16 integrated-gradient steps (`--num_cases=128 '
          '--steps=16`), run to add the 3-most-recent baseline.',
          lambda d: _faithfulness_rows(d, FAITHFUL_RECENT),
          (Col('model', 'model'), Col('integrated gradients: score / rank', 'ig'),
           Col('gradient x input: score / rank', 'gx'),
           Col('IG vs 3 most recent (score)', 'recent'))),
    Table('explain_text', ('explain_text.json', 'explain_text_train_run.json',
                           'explain_text_base30.json', 'explain_text_ctx30.json',
                           'explain_text_ctx30_ls.json'),
          'Amazon Musical Instruments review sentences split by time (train < 80%, valid 80-90%, '
          'test >= 90% of review times: 8,208 / 1,021 / 1,032), the same recommender (checkpoint '
          'step 228) and inputs for every row, best epoch by validation cross-entropy, one run '
          'each (seed 0), test values x 100, greedy decoding (beam 4 in brackets); configurations '
          'compared on the test split.', _explain_text_rows,
          (Col('generator', 'generator'), Col('command', 'command'), Col('device', 'device'),
           Col('best / last epoch', 'epoch'), Col('best valid loss', 'valid', F4),
           Col('BLEU-1', 'bleu1'), Col('BLEU-4', 'bleu4'),
           Col('ROUGE-1', 'rouge1_f'), Col('ROUGE-2', 'rouge2_f'), Col('ROUGE-L', 'rougel_f'),
           Col('USR', 'usr'), Col('FMR', 'fmr'))),
    Table('online_adaptation', ('online_adaptation_musical_instruments.json',
                                'online_adaptation_musical_instruments_new_item_lr.json',
                                'online_adaptation_ml100k.json',
                                'online_adaptation_ml100k_new_item_lr.json'),
          load('online_adaptation_ml100k.json')['protocol'] + '; the first 70% of interactions '
          'by time train a `small` model, each later event is ranked before anything learns from '
          'it, frozen and adapted both see the growing histories; NDCG@10, one run each (seed '
          '0); update latency per 64-event micro-batch on the shared 2-core CPU. Retraining runs '
          'on the first and last windows only.', _online_rows,
          (Col('dataset (command)', 'run'), Col('stream', 'stream'),
           Col('lr: base / new items', 'lr'), Col('frozen', 'frozen', F4),
           Col('adapted', 'adapted', F4), Col('by window: adapted vs frozen', 'windows'),
           Col('last window: frozen / adapted / retrained', 'last'),
           Col('both retrained windows: frozen / adapted / retrained', 'retrained'),
           Col('update p50 ms', 'p50', F0), Col('update p99 ms', 'p99', F0),
           Col('events/s', 'events_s', F0))),
    Table('online_realtime', ONLINE_REALTIME_FILES,
          'prequential as in the table above (first 70% of events by time train a `small` model, '
          'the rest streamed in 4 windows, retraining before the last one; MovieLens 100K at '
          'online.learning_rate=1e-4, Musical Instruments at 1e-3, new items at 1e-2), one run '
          'per file (seed 0; the `_seed1` files: seed 1, its own trained models), every variant of a '
          'file adapting the same trained model; timings on the 2-core CPU: the `_quiet` files '
          'with every other job on the machine paused, the others while other jobs ran (load '
          'average in the file), relative only. Events/s: the whole '
          'stream, micro-batches back to back, no ranking. Update latency and freshness: events '
          'arriving at 5,000/s, a micro-batch closes when full or 50 ms after its first event, '
          'update = learn + device sync, freshness = arrival -> a recommendation for the batch\'s '
          'last user served after the update (file 2 and the `_quiet` files also at 2,000/s); a pass more than 10 s behind the arrivals stops '
          '(figures then cover the events served). Compilations counted after warm-up (without '
          'warm-up: after the first micro-batch) in the prequential / sustained / paced passes.',
          _online_realtime_rows,
          (Col('file', 'run'), Col('dataset', 'dataset'), Col('variant (config.online)', 'variant'),
           Col('NDCG@10, whole stream', 'ndcg', F4),
           Col('retrained windows: frozen / this / retrained', 'retrained'),
           Col('events/s', 'events_s', F0), Col('update p50 ms', 'p50', F1),
           Col('update p99 ms', 'p99', F1), Col('freshness p99 ms', 'fresh99', F0),
           Col('stopped, > 10 s behind', 'behind'), Col('freshness p99 ms at other rates', 'fresh_more'),
           Col('compilations after warm-up', 'compiles'),
           Col('warm-up', 'warm'))),
    Table('online_stdin', STDIN_FILES,
          '`python benchmarks/online_stdin.py --dataset D [--online snapshot_every_s=1]`: a `small` '
          'model trained on the first 70% of D\'s interactions in time order, then `llm4rec adapt '
          '--events=-` (its own process, the library\'s `online` defaults) fed the remaining '
          'interactions on stdin by a producer writing 5,000 lines/s in 5 ms ticks once adapt '
          'reported ready (after warm-up). Lateness: how far the producer fell behind its schedule '
          '(a full pipe blocks it); drain: last line written -> adapt\'s summary (queued events, '
          'the last micro-batch, the final snapshot). One run each, seed 0, on the 2-core CPU '
          'with the machine\'s other jobs paused.', _stdin_rows,
          (Col('file', 'file'), Col('dataset', 'dataset'), Col('overrides', 'over'),
           Col('lines', 'lines', F0), Col('written in s (scheduled)', 'written'),
           Col('producer lateness p99 ms', 'late99', F2), Col('lateness max ms', 'latemax', F2),
           Col('drain s', 'drain', F2), Col('adapt events/s', 'eps', F0),
           Col('update p99 ms', 'p99', F1), Col('compilations after warm-up', 'comp'),
           Col('snapshots during the stream', 'snaps'))),
    Table('aot_memory', ('aot_memory.json',),
          '`' + load('aot_memory.json')['command'] + '`: the `1b` preset (2048 wide, 18 blocks, '
          'bf16 compute, float32 parameters and AdamW state), 100,000-item catalog, batch 256 x '
          '50, FSDP over all chips, compiled for the slice by libtpu on the 2-core CPU (no TPU); '
          'per-device figures are the compiler\'s estimates.', _aot_rows,
          (Col('slice', 'slice'), Col('parameters (B)', 'params', F3),
           Col('per-device peak (GiB)', 'peak', F2), Col('state (MiB)', 'state', F1),
           Col('temporaries (GiB)', 'temp', F2), Col('HBM (GiB)', 'hbm', F0),
           Col('fits', 'fits'), Col('compile (s)', 'compile', F0))),
    Table('aot_memory_compiled', AOT_COMPILED,
          'one `python benchmarks/aot_memory.py` per file (its command in the file; `--set '
          'model.scan_layers=True --set model.remat=full` for the scanned rows): the real train '
          'step compiled by libtpu for each slice on the 2-core CPU (no TPU), batch 256 x 50, '
          '100,000-item catalog, FSDP over all chips, bf16 compute; LoRA rank 16 on q,k,v,o,gate,'
          'up,down with the base frozen in bf16. State = parameters + AdamW state per device '
          '(from the shardings); peak = the compiler\'s per-device estimate (arguments + outputs - '
          'donated + temporaries + code); compile = wall seconds for lowering and compiling, on a '
          'machine shared with one niced training run.', _aot_compiled_rows,
          (Col('preset', 'preset'), Col('slice (chips)', 'slice'), Col('LoRA', 'lora'),
           Col('blocks', 'blocks'), Col('parameters (B)', 'params', F3),
           Col('state per device (GiB)', 'state', F3), Col('temporaries (GiB)', 'temp', F2),
           Col('per-device peak (GiB)', 'peak', F2), Col('HBM (GiB)', 'hbm', F0),
           Col('fits', 'fits'), Col('compile (s)', 'compile', F0))),
    Table('aot_memory_lora', ('aot_memory_8b_lora.json',),
          '`' + load('aot_memory_8b_lora.json')['command'] + '`: the `8b` preset (4096 wide, 32 '
          'blocks, 32 query / 8 KV heads, MLP 14336, bf16 compute), 100,000-item catalog, FSDP '
          'over all devices; LoRA on q,k,v,o,gate,up,down with the base projections frozen in '
          'bfloat16. Train state only (parameters + AdamW state, exact per-device bytes from the '
          'shardings training builds, on abstract meshes; no compile, so activations, gradients '
          'and temporaries are not included).', _aot_lora_rows,
          (Col('topology (device, devices)', 'topology'), Col('LoRA', 'lora'),
           Col('parameters (B)', 'params', F3), Col('trainable (M)', 'trainable', F1),
           Col('optimizer state, all (GiB)', 'opt', F2),
           Col('per device: params (GiB)', 'dev_params', F3),
           Col('per device: optimizer (GiB)', 'dev_opt', F3),
           Col('per device: state (GiB)', 'dev_state', F3), Col('HBM (GiB)', 'hbm', F0))),
    Table('leaderboard', tuple(f for f in BOARD_FILES if (RESULTS / f).exists()), BOARD,
          _board_rows, BOARD_COLS),
    Table('causal_filter', FILTER_FILES, FILTER, _filter_rows, FILTER_COLS),
    Table('seed_claims', CLAIM_FILES, CLAIMS, _claim_rows, CLAIM_COLS),
    Table('ablation', ABLATION_FILES, ABLATION_TEXT, _ablation_rows, ABLATION_COLS),
    Table('causal_filter_blend', FILTER_BLEND_FILES,
          'the causal-filter checkpoints of the table above (filter_mix 0.7), re-evaluated with '
          '`python benchmarks/reevaluate.py --set \'eval.transition_weights=(0.0,0.25,0.5,1.0,2.0)\'` '
          '(no retraining; the weight chosen per seed on validation NDCG@10 alone); differences '
          'paired per test user (`benchmarks/paired_compare.py`, filter alone = a, filter + blend '
          '= b).', _filter_blend_rows, FILTER_BLEND_COLS),
    Table('val_test_gap_beauty', ('val_test_gap_beauty_d128.json',), GAP, _gap_rows, GAP_COLS),
    Table('val_test_gap_lastfm', ('val_test_gap_lastfm_d128.json',), GAP, _gap_rows, GAP_COLS),
    Table('transition_blend', tuple(f for f in BLEND_FILES if (RESULTS / f).exists()), BLEND,
          _blend_rows, BLEND_COLS),
    Table('throughput_gpu', GPU_THROUGHPUT_FILES,
          ' and '.join(f"`{load(f)['command']}` ({load(f)['device_kind']})"
                       for f in GPU_THROUGHPUT_FILES) + ': the real jitted train step (full '
          'softmax over the catalog, AdamW, bf16 compute, float32 parameters) on windows of random '
          'Zipf item ids with every position a target, after compilation. MFU = model FLOPs (6 x '
          'tokens x block matmul parameters + attention scores/values + the output head over the '
          'targets) per second over the datasheet peak (dense bf16, per chip); beside it, MFU '
          'over a peak measured in the same process (a chain of bf16 8192^3 matrix products, '
          'on the H100 recovered afterwards from the printed MFU, see its `peak_note`; on the H200 see '
          'its `recovered`; none for runs without `--peak`).',
          _gpu_throughput_rows,
          (Col('card', 'card'), Col('preset', 'run'), Col('params (B)', 'params', F2),
           Col('batch x positions', 'shape'), Col('ms/step', 'step_ms', F0),
           Col('tokens/s', 'tok_s', F0), Col('achieved TFLOP/s', 'achieved', F0),
           Col('datasheet peak TFLOP/s', 'datasheet', F0), Col('MFU (datasheet)', 'mfu', F2),
           Col('measured peak TFLOP/s', 'measured', F0),
           Col('MFU (measured peak)', 'mfu_measured', F2), Col('peak memory (GiB)', 'mem', F1))),
    Table('gpu_recsys', ('beauty_gpu_h200.jsonl',) + tuple(sorted(set(GPU_CPU_TWINS.values()))),
          'whole Beauty training runs (`python benchmarks/beauty.py --seed S --set '
          'model.d_model=128 --set model.num_heads=2 --set model.mlp_dim=256 --set '
          'model.dropout=0.5 --set train.num_epochs=18 --set optimizer.learning_rate=3e-3 '
          '[--set model.filter_mix=0.7]`), leave-one-out, full ranking, seen items excluded, best '
          'checkpoint by validation NDCG@10, one GPU, the trainer unchanged (one jitted step per '
          'batch of 128, an evaluation and a checkpoint every epoch), float32; beside each, the '
          'CPU run of the same config and seed (2-core machine). Time to best = wall seconds '
          'from the first step to the end of the best epoch\'s evaluation, compilation included.',
          _gpu_recsys_rows,
          (Col('model', 'model'), Col('seed', 'seed', fmt('d')), Col('card', 'card'),
           Col('test NDCG@10 GPU', 'gpu_test', F4), Col('test NDCG@10 CPU', 'cpu_test', F4),
           Col('valid NDCG@10 GPU', 'gpu_valid', F4), Col('valid NDCG@10 CPU', 'cpu_valid', F4),
           Col('best epoch GPU / CPU', 'epochs'),
           Col('GPU s to best', 'to_best', F1), Col('GPU wall s', 'wall', F1),
           Col('CPU s to best', 'cpu_to_best', F0), Col('GPU train sequences/s', 'rate', F0))),
    Table('gpu_input', ('input_pipeline_gpu_h200.json', 'beauty_gpu_h200.jsonl'),
          '`python benchmarks/input_pipeline.py` on the GPU machine\'s host: the trainer\'s own '
          'Grain iterator (shuffle, batch, Grain\'s default read threads), 1000 batches after 20 '
          'warm-up ones, nothing on the GPU; beside it the fastest training consumption of the '
          'Beauty runs above (sequences/s over the whole run, evaluations excluded).', _input_rows,
          (Col('host', 'host'), Col('batch x positions', 'shape'),
           Col('input sequences/s', 'input', F0), Col('ms per batch', 'batch_ms', F2),
           Col('train step sequences/s', 'used', F0), Col('input / step', 'ratio', F2))),
)
BY_NAME = {t.name: t for t in TABLES}


# ----------------------------------------------------------------------------------------------
# Documents


def documents() -> list[pathlib.Path]:
  """The markdown files holding generated tables: README.md and docs/*.md but the excluded."""
  docs = sorted((ROOT / 'docs').glob('*.md'))
  skip = set(OWN_GENERATOR) | set(NOT_YET_GENERATED)
  return [README] + [d for d in docs if str(d.relative_to(ROOT)) not in skip]


def blocks(text: str) -> dict[str, str]:
  """name -> text between the markers, for every generated table in ``text``."""
  out = {}
  for m in _BLOCK.finditer(text):
    if m['name'] in out:
      raise ValueError(f'table {m["name"]} appears twice')
    out[m['name']] = m['body']
  return out


def rewrite(text: str) -> str:
  """``text`` with every generated table re-rendered from its files."""
  def sub(m):
    table = BY_NAME.get(m['name'])
    if table is None:
      raise KeyError(f'no table named {m["name"]!r} in benchmarks/results_tables.py')
    return START.format(table.name) + '\n' + render(table) + END.format(table.name)
  return _BLOCK.sub(sub, text)


def stale_tables(text: str) -> list[str]:
  """Names of the generated tables in ``text`` whose text differs from what the files give."""
  return [name for name, body in blocks(text).items()
          if name not in BY_NAME or body != render(BY_NAME[name])]


def hand_tables_with_figures(text: str) -> list[str]:
  """Rows of markdown tables outside generated blocks that show a number (figure-free tables in
  ``FIGURE_FREE_TABLES`` excepted), as 'line N: row'."""
  spans = [m.span() for m in _BLOCK.finditer(text)] + [m.span()
                                                        for m in _OTHER_GENERATED.finditer(text)]
  allowed = set(FIGURE_FREE_TABLES.values())
  out, header, fenced, offset = [], None, False, 0
  for number, line in enumerate(text.splitlines(keepends=True), 1):
    start, offset = offset, offset + len(line)
    stripped = line.strip()
    if stripped.startswith('```'):
      fenced = not fenced
    if fenced or not stripped.startswith('|') or any(a <= start < b for a, b in spans):
      header = None
      continue
    if header is None:
      header = stripped
      continue
    if header in allowed or re.fullmatch(r'\|(\s*:?-+:?\s*\|)+', stripped):
      continue
    if re.search(r'\d', stripped):
      out.append(f'line {number}: {stripped[:100]}')
  return out


def check() -> list[str]:
  """Every problem with the committed tables, one line each (empty = all tables match)."""
  problems = []
  placed: dict[str, str] = {}
  for doc in documents():
    rel = str(doc.relative_to(ROOT))
    text = doc.read_text()
    for name in blocks(text):
      if name in placed:
        problems.append(f'{rel}: table {name} also in {placed[name]}')
      placed[name] = rel
    problems += [f'{rel}: table {name} differs from its result files (or is unknown)'
                 for name in stale_tables(text)]
    problems += [f'{rel}: hand-written table row with figures, {row}'
                 for row in hand_tables_with_figures(text)]
  problems += [f'table {t.name} is in no document' for t in TABLES if t.name not in placed]
  return problems


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--check', action='store_true',
                 help='do not write; exit 1 listing each table that differs from its files')
  args = p.parse_args(argv)
  if args.check:
    problems = check()
    for line in problems:
      print(line)
    return 1 if problems else 0
  for doc in documents():
    text = doc.read_text()
    new = rewrite(text)
    if new != text:
      doc.write_text(new)
      print(f'rewrote {doc.relative_to(ROOT)}: {", ".join(stale_tables(text))}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
