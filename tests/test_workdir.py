"""A trained workdir read through ``etils.epath``: addressed as ``gs://bucket/run`` (a local folder
standing in for the bucket, no network), it serves and explains exactly what the local path does,
reading the config, the catalog, the transition blend and the item index in place."""

import os

import numpy as np
import pytest
from etils import epath

from conftest import fake_gcs, local_path, tiny_config
from llm4rec_jax import config_base
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.explain import Explainer
from llm4rec_jax.serving import Recommender
from llm4rec_jax.serving import index as index_lib
from llm4rec_jax.train import checkpointing, trainer

REMOTE = 'gs://bucket/run'


@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
  """A folder holding ``run/``: a tiny trained workdir with a transition blend and an item index."""
  root = tmp_path_factory.mktemp('bucket')
  c = tiny_config(**{'train.max_steps': 4, 'train.eval_every': 2,
                     'eval.transition_weights': (1.0,)})
  trainer.train_and_evaluate(c, root / 'run')
  index_lib.build_index(root / 'run')
  return root


def test_paths_are_epath(tmp_path):
  assert workdir_lib.path(REMOTE, workdir_lib.CATALOG) == epath.Path('gs://bucket/run/items.json')
  assert os.fspath(workdir_lib.rankings(REMOTE, 'test')) == 'gs://bucket/run/rankings_test.jsonl'
  assert workdir_lib.root(tmp_path) == epath.Path(tmp_path)


def test_remote_workdir_serves_what_the_local_one_does(bucket, monkeypatch):
  local = bucket / 'run'
  history = workdir_lib.read_catalog(local)['raw_ids'][1:5]
  expected = Recommender(local).recommend(history, 5)
  explained = Explainer(local, steps=4).explain(history)

  # Orbax's array reads go through TensorStore, which talks to GCS itself: the checkpoint manager
  # is handed the gs:// path (recorded here) and restores from the folder behind it.
  given = []

  def checkpointer(directory, **kwargs):
    given.append(os.fspath(directory))
    return checkpointing.Checkpointer(local_path(directory, bucket), **kwargs)

  monkeypatch.setattr(workdir_lib, 'Checkpointer', checkpointer)
  before = _files(local)
  opened = []
  with fake_gcs(bucket, opened):
    assert config_base.load(REMOTE).to_dict() == config_base.load(local).to_dict()
    rec = Recommender(REMOTE)
    assert os.fspath(rec.workdir) == REMOTE and rec.ann_index is not None
    assert rec.transition_weight == 1.0
    assert rec.recommend(history, 5) == expected
    out = Explainer(REMOTE, steps=4).explain(history)
  assert out['item'] == explained['item'] and out['template'] == explained['template']
  np.testing.assert_allclose([h['attribution'] for h in out['history']],
                             [h['attribution'] for h in explained['history']], rtol=1e-5)
  assert given and set(given) == {f'{REMOTE}/{workdir_lib.CHECKPOINTS}'}
  for name in (workdir_lib.CONFIG, workdir_lib.CATALOG, workdir_lib.TRANSITIONS,
               f'{workdir_lib.INDEX}/index_meta.json'):
    assert f'{REMOTE}/{name}' in opened, name
  # Read in place and read only: nothing was copied beside the run, nothing in it changed.
  assert sorted(p.name for p in bucket.iterdir()) == ['run']
  assert _files(local) == before


def _files(folder):
  return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob('*')}


def test_orbax_lists_remote_checkpoints_through_epath(bucket, monkeypatch):
  """The step listing and the saved metrics (what 'best' and 'latest' choose from) go through
  epath, so they are read from gs:// without TensorStore. Orbax asks the GCS API whether the bucket
  has a hierarchical namespace (google-cloud-storage, not installed here): answered 'no' here."""
  gcs_utils = pytest.importorskip('orbax.checkpoint._src.path.gcs_utils')
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  ckpt = workdir_lib.checkpoints(bucket / 'run', async_save=False)
  try:
    best, latest = ckpt.best_step(), ckpt.latest_step()
  finally:
    ckpt.close()
  with fake_gcs(bucket):
    ckpt = workdir_lib.checkpoints(REMOTE, async_save=False)
    try:
      assert os.fspath(ckpt.directory) == f'{REMOTE}/{workdir_lib.CHECKPOINTS}'
      assert workdir_lib.checkpoint_step(ckpt, 'best') == best
      assert workdir_lib.checkpoint_step(ckpt, 'latest') == latest
    finally:
      ckpt.close()
    assert workdir_lib.snapshot_position(REMOTE, 'auto') is None
