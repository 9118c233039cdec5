"""README/docs results tables are generated from benchmarks/results/, never typed in by hand."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results'


def _module(name):
  if str(ROOT / 'benchmarks') not in sys.path:
    sys.path.insert(0, str(ROOT / 'benchmarks'))  # the scripts import their siblings by name
  spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the class is built
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def rt():
  return _module('results_tables')


def _document_with(rt, name):
  """The text of the document (README.md or a docs/ page) that holds generated table ``name``."""
  texts = [doc.read_text() for doc in rt.documents()]
  holding = [text for text in texts if name in rt.blocks(text)]
  assert len(holding) == 1, name
  return holding[0]


def test_committed_tables_match_their_result_files(rt):
  assert rt.check() == []
  readme = rt.README.read_text()
  assert set(rt.blocks(readme)) <= set(rt.BY_NAME)


def test_a_table_altered_by_hand_fails_the_check(rt, tmp_path, monkeypatch, capsys):
  text = _document_with(rt, 'leave_one_out')
  body = rt.blocks(text)['leave_one_out']
  assert '| 0.0542 |' in body  # Beauty `small` test NDCG@10, from beauty.json
  altered = text.replace(body, body.replace('| 0.0542 |', '| 0.0552 |', 1))
  assert rt.stale_tables(altered) == ['leave_one_out']
  doc = tmp_path / 'doc.md'
  doc.write_text(altered)
  monkeypatch.setattr(rt, 'documents', lambda: [doc])
  monkeypatch.setattr(rt, 'ROOT', tmp_path)
  assert rt.main(['--check']) == 1
  assert 'table leave_one_out differs' in capsys.readouterr().out
  assert rt.main([]) == 0  # regenerating puts the file's figure back
  assert doc.read_text() == text


def test_a_changed_result_figure_changes_its_table(rt, monkeypatch):
  load = rt.load

  def changed(name):
    data = load(name)
    if name == 'beauty.json':
      data['test']['ndcg@10'] = 0.0600
    return data
  monkeypatch.setattr(rt, 'load', changed)
  stale = [name for doc in rt.documents() for name in rt.stale_tables(doc.read_text())]
  assert sorted(stale) == ['leave_one_out', 'multimodal']


def test_every_table_shows_its_protocol_and_sources(rt):
  for table in rt.TABLES:
    text = rt.render(table)
    assert text.startswith('*Protocol:* ') and len(table.protocol) > 40, table.name
    for name in table.files:
      assert f'`benchmarks/results/{name}`' in text, (table.name, name)


def test_no_hand_written_table_shows_a_figure(rt):
  docs = [rt.README] + sorted((ROOT / 'docs').glob('*.md'))
  for doc in docs:
    rel = str(doc.relative_to(ROOT))
    if rel in rt.NOT_YET_GENERATED:
      continue
    assert rt.hand_tables_with_figures(doc.read_text()) == [], rel
  for rel in list(rt.NOT_YET_GENERATED) + list(rt.OWN_GENERATOR):  # exceptions name real files
    assert (ROOT / rel).is_file(), rel
  texts = [doc.read_text() for doc in docs]
  for header in rt.FIGURE_FREE_TABLES.values():  # allowlisted tables exist as named
    assert any(header in text for text in texts), header


def test_the_scan_flags_figures_outside_generated_blocks(rt):
  hand = '| run | NDCG@10 |\n| --- | --- |\n| Beauty | 0.0549 |\n'
  assert rt.hand_tables_with_figures('intro\n\n' + hand) == ['line 5: | Beauty | 0.0549 |']
  generated = '<!-- table:x -->\n' + hand + '<!-- /table:x -->\n'
  assert rt.hand_tables_with_figures(generated) == []
  other = '<!-- scale:start -->\n' + hand + '<!-- scale:end -->\n'
  assert rt.hand_tables_with_figures(other) == []
  assert rt.hand_tables_with_figures('```\n' + hand + '```\n') == []
  free = rt.FIGURE_FREE_TABLES['layout'] + '\n| --- | --- |\n| `a.py` | HR@10 |\n'
  assert rt.hand_tables_with_figures(free) == []
  assert rt.hand_tables_with_figures('| a | b |\n| --- | --- |\n| x | y |\n') == []


def test_result_files_record_their_provenance(rt):
  for table in rt.TABLES:
    for name in table.files:
      data = rt.load(name)
      for record in data if isinstance(data, list) else [data]:
        p = record.get('provenance') or record
        assert p.get('commit') and p.get('date') and p.get('seeds') is not None, name
        assert record.get('command') or record.get('commands'), name


def test_corrected_result_files_say_what_their_numbers_say(rt):
  h100 = rt.load('throughput_gpu_h100.json')
  assert h100['datasheet_peak_tflops'] == 989.0
  for run in h100['runs'].values():
    assert run['mfu_vs_datasheet'] == round(run['achieved_tflops_per_s'] / 989.0, 4)
    assert 0.46 < run['mfu_vs_datasheet'] < 0.47
  lines = rt.load('debias_synthetic.jsonl')
  naive = {l['variants']['naive']['truth_ndcg@10'] for l in lines if 'naive' in l['variants']}
  assert len(naive) == 1  # every line ran the same settings; naive reproduced exactly
  for line in lines:
    for name, beats in line['beats_naive_on_truth_ndcg@10'].items():
      assert beats == (line['variants'][name]['truth_ndcg@10'] > min(naive)), name
  fine = rt.load('text_finetune_encoder_lr1e-12.json')
  assert fine['encoder_lr'] == 1e-12 and '--encoder_lr 1e-12' in fine['command']
  assert not (RESULTS / 'text_finetune_encoder_lr0.json').exists()


def test_throughput_mfu_uses_the_datasheet_peak_of_the_device_kind():
  throughput = _module('throughput')
  peak = lambda kind: throughput.datasheet_peak(kind)[0]  # noqa: E731
  assert peak('NVIDIA H100 80GB HBM3') == 989.0
  assert peak('NVIDIA H200') == 989.0
  assert peak('NVIDIA A100-SXM4-80GB') == 312.0
  assert peak('TPU v4') == 275.0
  assert peak('TPU v5 lite') == 197.0
  assert peak('TPU v5e') == 197.0
  assert peak('TPU v5') == 459.0 and peak('TPU v5p') == 459.0
  assert peak('NVIDIA H100 PCIe') is None and peak('cpu') is None


def test_docs_quote_mfu_against_the_datasheet(rt):
  body = rt.blocks(_document_with(rt, 'throughput_gpu'))['throughput_gpu']
  header = [l for l in body.splitlines() if l.startswith('| card')][0]
  row = [l for l in body.splitlines() if l.startswith('| NVIDIA H100')][0]
  cells = dict(zip(header.split('|'), row.split('|')))
  assert cells[' MFU (datasheet) '].strip() == '0.47'
  assert cells[' MFU (measured peak) '].strip() == '0.63'
