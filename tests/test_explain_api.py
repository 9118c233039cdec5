"""`llm4rec explain` and the Explainer API on a trained tiny workdir; templates."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from llm4rec_jax.explain import explainer as explainer_lib
from llm4rec_jax.explain import templates
from llm4rec_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_template_is_grounded_in_shared_attributes():
  item = {'genre': ['Comedy', 'Drama'], 'year': ['1995']}
  liked = [{'genre': ['Drama']}, {'genre': ['Drama', 'Comedy'], 'year': ['1994']}]
  shared = templates.shared_attributes(item, liked)
  assert shared == [('genre', 'Drama')]  # Comedy: not in every liked item; the year: in none
  assert templates.template_explanation('Toy Story', ['Heat', 'Babe'], shared) == (
      'Because you liked Heat and Babe, which share genre Drama with it, we recommend Toy Story.')
  first = templates.shared_attributes(item, liked[1:])
  assert first == [('genre', 'Comedy'), ('genre', 'Drama')]
  assert templates.template_explanation('Toy Story', ['Babe', 'Heat'], first,
                                        shared_by_first_only=True) == (
      'Because you liked Babe, which shares genre Comedy and Drama with it, and Heat, we '
      'recommend Toy Story.')
  assert templates.template_explanation('X', [], item_features=['sound', 'strings']) == (
      'We recommend X. Reviewers mention its sound and strings.')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp('explain') / 'run'
  trainer.train_and_evaluate(tiny_config(**{'train.num_epochs': 1}), wd)
  return wd


def test_explainer_api_and_cli(workdir):
  ex = explainer_lib.Explainer(workdir, steps=8)
  raw = ex.rec.raw_ids
  history = [raw[3], raw[7], raw[11], raw[20]]
  out = ex.explain(history)
  top = ex.rec.recommend(history, 1)['recommendations'][0]['item']
  assert out['item'] == top
  assert sorted(h['item'] for h in out['history']) == sorted(history)
  att = [h['attribution'] for h in out['history']]
  assert att == sorted(att, reverse=True)  # most important first
  np.testing.assert_allclose(sum(att), out['score'] - out['baseline_score'], atol=0.3)
  assert out['template'].startswith('Because you liked') or out['template'].startswith('We rec')
  named = ex.explain(history, raw[50])
  assert named['item'] == raw[50]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'explain', f'--workdir={workdir}',
                         '--history=' + ','.join(history), f'--item={raw[50]}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout)['item'] == raw[50]
  bad = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'explain', f'--workdir={workdir}',
                        '--history=' + raw[3], '--item=no-such-item'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and 'no-such-item' in bad.stderr


def test_explainer_on_a_multimodal_rag_workdir(tmp_path):
  """Modalities of the item and the retrieved context that serving uses are attributed too, and
  everything together accounts for score - baseline."""
  c = tiny_config(**{'content.categorical': 'all', 'content.numeric': 'all',
                     'content.dense': 'all', 'model.item_repr': 'both',
                     'model.cross_attention_every': 1, 'retrieval.rag': True,
                     'retrieval.num_context': 4, 'retrieval.num_cutoffs': 2,
                     'retrieval.query_window': 2, 'train.max_steps': 4, 'train.eval_every': 4})
  trainer.train_and_evaluate(c, tmp_path)
  ex = explainer_lib.Explainer(tmp_path, steps=32)
  raw = ex.rec.raw_ids
  out = ex.explain([raw[2], raw[5], raw[9]])
  names = ex.rec.spec.cfg.content.token_names
  assert set(out['modalities']) == set(names)
  assert out['retrieved_context'] and all(r['item'] in raw for r in out['retrieved_context'])
  total = (sum(h['attribution'] for h in out['history']) + sum(out['modalities'].values())
           + sum(r['attribution'] for r in out['retrieved_context']))
  np.testing.assert_allclose(total, out['score'] - out['baseline_score'], atol=0.05 + 0.05 * abs(
      out['score'] - out['baseline_score']))
