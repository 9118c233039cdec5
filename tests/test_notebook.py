"""The Colab notebook runs headless (nbclient) on a tiny checkpoint trained here, and shows the
metrics ``evaluate()`` returns, the plots, the users' recommendations and the Explainer's
explanations of their top recommendations."""

import json
import os
import pathlib

import pytest
from etils import epath

from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import registry
from llm4rec_jax.errors import DataError
from llm4rec_jax.explain import Explainer
from llm4rec_jax.train import trainer

from conftest import fake_gcs, tiny_config

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'evaluate_checkpoint.ipynb'


def _with_parameters(nb, **params):
  """Overrides assignments of the cell tagged 'parameters' (as papermill does)."""
  cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
  lines = cell.source.splitlines()
  for name, value in params.items():
    hits = [k for k, line in enumerate(lines) if line.startswith(f'{name} =')]
    assert len(hits) == 1, f'parameter {name} not in the parameters cell'
    lines[hits[0]] = f'{name} = {value!r}'
  cell.source = '\n'.join(lines)
  return nb


def _outputs(cell, kind):
  return [o for o in cell.get('outputs', []) if kind in o.get('data', {}) or o.get('name') == kind]


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  workdir = tmp_path / 'run'
  config = tiny_config()
  trainer.train_and_evaluate(config, workdir)
  expected = json.loads(json.dumps(trainer.evaluate(config, workdir, checkpoint='best')))

  nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), INSTALL='auto',
                        WORKDIR=str(workdir), TRAIN_DEMO=False, TOP_K=5, NUM_USERS_SHOWN=2,
                        EXPLAIN_STEPS=8, EXPLAIN_ROWS=3)
  # The kernel imports this checkout's package, as this process does (not another install).
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(NOTEBOOK.parents[1])] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(NOTEBOOK.parent)}}).execute()
  cells = [c for c in nb.cells if c.cell_type == 'code']
  text = lambda c: ''.join(o.get('text', '') for o in c.get('outputs', []))
  assert 'already installed, install skipped' in text(cells[1])

  shown = [o['data']['application/json'] for c in cells for o in _outputs(c, 'application/json')]
  # The notebook's numbers are evaluate()'s; only the wall-clock timings differ between two runs.
  untimed = lambda r: {k: v for k, v in r.items() if k != 'eval_seconds'}
  assert [untimed(r) for r in shown] == [untimed(expected)]
  assert set(shown[0]['eval_seconds']) == {'valid', 'test'}
  table = next(o['data']['text/markdown'] for o in _outputs(cells[3], 'text/markdown'))
  assert f"| test | {expected['test']['num_cases']} |" in table
  assert f"{expected['test']['ndcg@10']:.4f}" in table

  assert len(_outputs(cells[4], 'image/png')) == 1  # metrics vs k
  assert len(_outputs(cells[5], 'image/png')) == 1  # popularity of recommended items
  assert 'catalog coverage of the top-5 lists' in text(cells[5])
  users = [o['data']['text/markdown'] for o in _outputs(cells[6], 'text/markdown')]
  assert len(users) == 2
  first = json.loads((workdir / 'rankings_test.jsonl').read_text().splitlines()[0])
  catalog = json.loads((workdir / 'items.json').read_text())
  title = catalog['titles'][catalog['raw_ids'].index(first['top'][0])]
  assert f"**user {first['user']}**" in users[0] and title in users[0]

  # Why each shown user's top recommendation: the Explainer's numbers, recomputed here.
  why = [o['data']['text/markdown'] for o in _outputs(cells[7], 'text/markdown')]
  assert len(why) == 2
  rankings = [json.loads(line) for line in (workdir / 'rankings_test.jsonl').read_text().splitlines()]
  dataset, split = registry.load_split(config.data)
  ex = Explainer(workdir, steps=8)
  for case, md in enumerate(why):
    r = rankings[case]
    history = [str(dataset.items.raw_ids[i]) for i in split.test.history(case)]
    out = ex.explain(history, r['top'][0])
    assert md.startswith(f"**user {r['user']}**: why ") and f"({r['top'][0]})" in md.splitlines()[0]
    assert f"score {out['score']:.3f}" in md.splitlines()[0]
    rows = [line.split(' | ') for line in md.splitlines()
            if line.startswith('| ') and line.count(' | ') == 3 and not line.startswith('| history')]
    shown = out['history'][:3]
    assert len(rows) == len(shown) > 0
    for row, h in zip(rows, shown):  # most important first, with its recency and attribution
      assert row[0].endswith(f"({h['item']})")
      assert int(row[1]) == len(history) - h['position']
      assert abs(float(row[2]) - h['attribution']) < 1e-3
    assert f"> {out['template']}" in md


def test_open_workdir(tmp_path, monkeypatch):
  """The notebook's WORKDIR: a local path as it is, ``gs://`` read in place (nothing copied, no
  subprocess), a clear error for a missing one; Drive paths need Colab to mount Drive."""
  assert workdir_lib.open_path(tmp_path) == epath.Path(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path))
  assert workdir_lib.open_path('~') == epath.Path(tmp_path)
  with pytest.raises(DataError, match='workdir not found'):
    workdir_lib.open_path(tmp_path / 'missing')
  bucket = tmp_path / 'bucket'
  (bucket / 'runs/beauty').mkdir(parents=True)
  (bucket / 'runs/beauty/config.json').write_text('{}')
  monkeypatch.setenv('PATH', '/nonexistent')  # no gcloud, no gsutil: nothing is copied
  with fake_gcs(bucket):
    got = workdir_lib.open_path('gs://bucket/runs/beauty/')
    assert isinstance(got, epath.Path) and os.fspath(got) == 'gs://bucket/runs/beauty'
    assert workdir_lib.path(got, workdir_lib.CONFIG).read_text() == '{}'
    with pytest.raises(DataError, match='workdir not found') as e:
      workdir_lib.open_path('gs://bucket/runs/nothing')
    assert 'gs://bucket/runs/nothing' in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bucket']
  if not os.path.exists(workdir_lib.DRIVE_ROOT):
    with pytest.raises(DataError, match='needs Google Colab'):
      workdir_lib.open_path('/content/drive/MyDrive/run')
