"""Test setup: 8 fake CPU devices (set before jax is imported) and the shared data location."""

import os

# XLA's backend optimisation off for tests: the tests run tiny models for a few steps, so compiling
# is most of their time, and level 0 compiles the train step in about half the time (measured:
# 3.2 -> 1.8 s for the tiny train step, 1.9 -> 1.0 s for its initialiser); results are compared
# between runs of the same setting or within tolerances, never to figures of an optimised build.
# LLM4REC_TEST_XLA_OPT=default keeps XLA's default. Subprocesses the tests start take the same flag
# (SUBPROCESS_XLA_FLAGS; they pick their own device count).
SUBPROCESS_XLA_FLAGS = ("" if os.environ.get("LLM4REC_TEST_XLA_OPT") == "default" else
                        "--xla_backend_optimization_level=0")
_flags = (os.environ.get("XLA_FLAGS", ""), SUBPROCESS_XLA_FLAGS,
          "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = " ".join(f for f in _flags if f)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent XLA compilation cache per test run, shared by the xdist workers (they inherit the
# controller's environment) and by the benchmark subprocesses the tests start: many tests compile
# the same train and eval programs, and a cache hit loads the same executable, so results do not
# change. The directory is new for each run (a clean clone's CI run sees what a local run sees) and
# removed at exit by the process that made it. LLM4REC_TEST_XLA_CACHE=off turns it off.
if os.environ.get("LLM4REC_TEST_XLA_CACHE") != "off" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _xla_cache = tempfile.mkdtemp(prefix="llm4rec-test-xla-cache-")
  atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

from llm4rec_jax.data.paths import data_root  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """Root of the real public datasets (``$LLM4REC_DATA_DIR``, default ``../shared/data``)."""
  root = data_root()
  if not root.is_dir():
    pytest.fail(f"shared data not found at {root}; set LLM4REC_DATA_DIR")
  return root


def tiny_config(**overrides):
  """A seconds-fast experiment: small synthetic data, 'tiny' model. Overrides use dotted keys."""
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  c = config_base.apply_preset(config_base.base_config(), 'tiny')
  c.data.name = 'synthetic'
  c.data.synthetic.update({'num_users': 240, 'num_items': 120, 'seed': 0, 'mean_seq_len': 12.0,
                           'max_seq_len': 60})
  c.data.max_len = 16
  c.train.batch_size = 32
  c.train.num_epochs = 2
  c.train.log_every = 1
  c.train.progress_bar = False
  c.train.patience = 0
  c.eval.batch_size = 64
  c.optimizer.warmup_steps = 5
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    if isinstance(value, dict):
      node[leaf].update(value)
    else:
      node[leaf] = value
  return c


def read_log(workdir) -> dict[int, float]:
  """step -> loss from WORKDIR/train_log.jsonl (a later line for the same step wins)."""
  import json  # pylint: disable=import-outside-toplevel
  out = {}
  with open(pathlib.Path(workdir) / 'train_log.jsonl') as f:
    for line in f:
      rec = json.loads(line)
      out[rec['step']] = rec['loss']
  return out


def popularity_ndcg(config, workdir, which: str = 'test', k: int = 10) -> float:
  """NDCG@k of ranking by training popularity on ``config``'s data, with the evaluation's protocol
  (seen items excluded when eval.exclude_seen, ties counted against the target): the bar an
  end-to-end "it trains" test must clear."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from llm4rec_jax import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.build_experiment(config, workdir)
  num_items = exp.spec.cfg.num_items
  counts = np.bincount(np.concatenate([np.asarray(s) for s in exp.split.train]),
                       minlength=num_items + 1)[:num_items + 1].astype(float)
  arrays = exp.eval_arrays(which)
  ranks = []
  for i in np.flatnonzero(arrays.valid):
    score = counts.copy()
    score[0] = -np.inf
    if config.eval.exclude_seen:
      score[arrays.history(i)] = -np.inf
    t = arrays.targets[i]
    ranks.append(int((score > score[t]).sum() + (score == score[t]).sum() - 1))
  return metrics_lib.ranking_metrics(np.asarray(ranks), (k,))[f'ndcg@{k}']


def fake_gcs(bucket_dir, opened: list | None = None):
  """A context in which ``etils.epath`` serves ``gs://bucket/...`` from the local folder
  ``bucket_dir`` (epath's mock backend; no network). Each gs:// path epath touches is appended to
  ``opened``. Orbax's array reads bypass epath (TensorStore picks its GCS driver itself), so they
  cannot go through this stand-in; see ``local_path``."""
  import os as os_lib  # pylint: disable=import-outside-toplevel
  from etils.epath import testing as epath_testing  # pylint: disable=import-outside-toplevel
  prefix, root = 'gs://bucket', os_lib.fspath(bucket_dir)

  def local(p):
    return local_path(p, bucket_dir)

  def remote(p):
    p = os_lib.fspath(p)
    return prefix + p[len(root):] if p == root or p.startswith(root + '/') else p

  def one(fn, path, *args, **kwargs):
    if os_lib.fspath(path).startswith(prefix) and opened is not None:
      opened.append(os_lib.fspath(path))
    return fn(local(path), *args, **kwargs)

  def two(fn, path, dst, **kwargs):
    return fn(local(path), local(dst), **kwargs)

  def glob(fn, pattern):
    return [remote(p) for p in fn(local(pattern))]

  def walk(fn, top, **kwargs):
    for d, dirs, files in fn(local(top), **kwargs):
      yield remote(d), dirs, files

  return epath_testing.mock_epath(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, copy=two, rename=two, replace=two, glob=glob, walk=walk)


def local_path(path, bucket_dir) -> str:
  """The local file behind ``gs://bucket/...`` in :func:`fake_gcs` (other paths unchanged)."""
  import os as os_lib  # pylint: disable=import-outside-toplevel
  p = os_lib.fspath(path)
  if p == 'gs://bucket' or p.startswith('gs://bucket/'):
    return os_lib.fspath(bucket_dir) + p[len('gs://bucket'):]
  return p
