"""``llm4rec index`` and ``recommend`` through the index: same answers as full scoring, refused
against another checkpoint; a RAG-trained model serves with its retrieved context."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_config
from llm4rec_jax.retrieval import IndexMismatchError
from llm4rec_jax.serving import index as workdir_index
from llm4rec_jax.serving import Recommender
from llm4rec_jax.train import trainer


@pytest.fixture(scope='module')
def rag_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('rag_serving')
  c = tiny_config(**{'content.categorical': 'all', 'content.numeric': 'all',
                     'model.item_repr': 'both', 'model.cross_attention_every': 1,
                     'retrieval.rag': True, 'retrieval.num_context': 4,
                     'train.max_steps': 4, 'train.eval_every': 2, 'train.keep_checkpoints': 3})
  trainer.train_and_evaluate(c, workdir)
  return workdir


def test_recommend_with_index_matches_full_scoring(rag_workdir):
  summary = workdir_index.build_index(rag_workdir, checkpoint='latest')
  assert summary['checkpoint_step'] == 4 and summary['num_items'] > 0
  assert (rag_workdir / 'index' / 'index_meta.json').exists()
  plain = Recommender(rag_workdir, checkpoint='latest', use_index=False)
  served = Recommender(rag_workdir, checkpoint='latest')
  assert plain.ann_index is None and served.ann_index is not None and served.rag is not None
  raw = plain.raw_ids
  for history in ([raw[1], raw[7], raw[3]], [raw[20]], raw[5:30]):
    a = plain.recommend(history, top_k=10)['recommendations']
    b = served.recommend(history, top_k=10)['recommendations']
    assert [r['item'] for r in a] == [r['item'] for r in b]
    np.testing.assert_allclose([r['score'] for r in a], [r['score'] for r in b], rtol=1e-4,
                               atol=1e-4)
    assert not set(history) & {r['item'] for r in b}  # seen items excluded


def test_recommend_refuses_index_of_another_checkpoint(rag_workdir):
  workdir_index.build_index(rag_workdir, checkpoint='latest')  # step 4
  with pytest.raises(IndexMismatchError, match='step 4.*step 2'):
    Recommender(rag_workdir, checkpoint='2')


def test_cli_index_command(rag_workdir):
  proc = subprocess.run([sys.executable, '-m', 'llm4rec_jax.cli', 'index',
                         f'--workdir={rag_workdir}', '--checkpoint=2'],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  assert out['checkpoint_step'] == 2 and out['params']['num_leaves'] == 0  # 120 items: exact
  assert Recommender(rag_workdir, checkpoint='2').ann_index.meta.step == 2
