"""Training from prepared records (``config.data.name = 'records:DIR'``): exact resumption, the
evaluation of the same parameters equal to the in-memory path's, and the options it refuses. The
two-process run is in test_multiprocess.py."""

import json

import numpy as np
import pytest

from conftest import read_log, tiny_config
from llm4rec_jax.data import pipeline, readers, records, registry, splits
from llm4rec_jax.data.prepare import source
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import trainer
from llm4rec_jax.train import experiment

RANKING = ('hr@1', 'hr@10', 'ndcg@10', 'mrr', 'num_cases')


@pytest.fixture(scope='module')
def synthetic_records(tmp_path_factory):
  out = tmp_path_factory.mktemp('records')
  source.write_dataset(registry.load(tiny_config().data), out, num_shards=3)
  return out


def records_config(directory, **overrides):
  return tiny_config(**{'data.name': f'records:{directory}', 'debias.beyond_accuracy': False,
                        **overrides})


def test_records_run_resumes_exactly_and_writes_metrics(synthetic_records, tmp_path):
  config = records_config(synthetic_records, **{'train.max_steps': 6, 'train.eval_every': 3})
  full = trainer.train_and_evaluate(config, tmp_path / 'full')
  stopped = trainer.train_and_evaluate(config, tmp_path / 'resumed', stop_after_steps=4)
  assert stopped == {'stopped': 'stop_after_steps', 'step': 4}
  resumed = trainer.train_and_evaluate(config, tmp_path / 'resumed')
  a, b = read_log(tmp_path / 'full'), read_log(tmp_path / 'resumed')
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  assert resumed['test'] == pytest.approx(full['test'])
  written = json.loads((tmp_path / 'resumed' / 'metrics.json').read_text())
  assert written['test'] == resumed['test'] and written['protocol'] == 'leave_one_out'
  assert written['test']['num_cases'] == 240  # every synthetic user has >= 3 interactions
  catalog = json.loads((tmp_path / 'full' / 'items.json').read_text())
  items = (synthetic_records / 'items.txt').read_text().splitlines()
  assert catalog['raw_ids'] == [''] + items and 'train_counts' not in catalog
  start = json.loads((tmp_path / 'full' / 'events.jsonl').read_text().splitlines()[0])
  assert start['steps_per_epoch'] == 240 // 32 and start['shards'] == 3


@pytest.mark.parametrize('max_cases', [0, 300])
def test_records_evaluation_equals_the_in_memory_path(data_dir, tmp_path, max_cases):
  """The same parameters evaluated on ML-100K in memory and from its records: same metrics (on a
  sample of cases too: both keep the same users)."""
  overrides = {'data.name': 'ml-100k', 'eval.batch_size': 128, 'debias.beyond_accuracy': False,
               'eval.max_cases': max_cases}
  ds = readers.load_dataset('ml-100k')
  source.write_dataset(ds, tmp_path / 'records', num_shards=4)
  results = []
  for run, name in (('memory', 'ml-100k'), ('from_records', f'records:{tmp_path / "records"}')):
    workdir = tmp_path / run
    workdir.mkdir()
    exp = experiment.build_experiment(tiny_config(**{**overrides, 'data.name': name}), workdir)
    params = state_lib.init_params(exp.spec, seed=3)
    results.append(trainer._final_metrics(exp, exp.rank_fn(), params, step=0))  # pylint: disable=protected-access
  memory, again = results
  for which in ('valid', 'test'):
    assert again[which]['num_cases'] == (max_cases or 943)
    for k in RANKING:
      assert again[which][k] == pytest.approx(memory[which][k], abs=1e-6), (which, k)
  # The target budget from the lengths alone is the one the in-memory windows give.
  lengths = source.Prepared(tmp_path / 'records').lengths
  for all_windows in (False, True):
    windows, _ = pipeline.make_windows(splits.leave_one_out(ds).train, 100, all_windows=all_windows)
    assert records.auto_max_targets(lengths, 100, 256, all_windows=all_windows) == (
        experiment.auto_max_targets(windows, 256))


@pytest.mark.parametrize('field, value', [
    ('data.split', 'temporal'), ('content.categorical', 'all'), ('retrieval.rag', True),
    ('model.head', 'semantic_id'), ('debias.method', 'ips'), ('data.cold_item_fraction', 0.1),
    ('eval.save_rankings', True)])
def test_records_refuse_what_needs_the_whole_dataset(synthetic_records, tmp_path, field, value):
  with pytest.raises(ConfigError) as e:
    experiment.build_experiment(records_config(synthetic_records, **{field: value}), tmp_path)
  assert e.value.field == field and 'records:' in str(e.value)
