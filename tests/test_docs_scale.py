"""The scale figures in docs/scale.md are the result file's, regenerated, never typed in."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _report():
  spec = importlib.util.spec_from_file_location(
      'movielens_scale_report', ROOT / 'benchmarks' / 'movielens_scale_report.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_scale_table_matches_its_result_file():
  report = _report()
  record = json.loads(report.RESULT.read_text())
  for key in ('command', 'commit', 'date', 'machine', 'seeds', 'sizes'):
    assert key in record, key
  doc = report.DOC.read_text()
  assert report.section(doc) == report.table(record)
  electronics = json.loads(report.ELECTRONICS.read_text())
  assert report.section(doc, report.E_START, report.E_END) == report.electronics_table(electronics)


def test_scale_table_changes_when_a_figure_does():
  report = _report()
  record = json.loads(report.RESULT.read_text())
  record['sizes'][0]['load_only']['load_s'] += 1.0
  assert report.section(report.DOC.read_text()) != report.table(record)
