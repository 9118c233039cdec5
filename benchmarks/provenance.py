"""Where a benchmark number came from: command, commit, date and machine, recorded in its result file."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _commit() -> str:
  if os.environ.get('LLM4REC_COMMIT'):  # a copy of the tree without .git (an accelerator machine)
    return os.environ['LLM4REC_COMMIT']
  try:
    sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return sha + ('+uncommitted' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def start() -> dict[str, Any]:
  """The provenance fields known when a benchmark starts; pass the dict to :func:`finish`."""
  return {
      'command': 'python ' + ' '.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      'commit': _commit(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': {'cpu_model': _cpu_model(), 'cores': os.cpu_count(),
                  'memory_gb': round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
                                     / 2**30, 1),
                  'load_avg_start': [round(x, 2) for x in os.getloadavg()]},
  }


def finish(record: dict[str, Any]) -> dict[str, Any]:
  """Adds the load average at the end (a busy machine makes timings relative only)."""
  record['machine']['load_avg_end'] = [round(x, 2) for x in os.getloadavg()]
  if 'jax' in sys.modules:  # the accelerator the numbers were measured on
    jax = sys.modules['jax']
    record['machine']['backend'] = jax.default_backend()
    record['machine']['device_kind'] = jax.devices()[0].device_kind
    record['machine']['device_count'] = jax.device_count()
  return record
