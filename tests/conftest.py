"""Test setup: 8 fake CPU devices (set before jax is imported) and the shared data location."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from llm4rec_jax.data.paths import data_root  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """Root of the real public datasets (``$LLM4REC_DATA_DIR``, default ``../shared/data``)."""
  root = data_root()
  if not root.is_dir():
    pytest.fail(f"shared data not found at {root}; set LLM4REC_DATA_DIR")
  return root
