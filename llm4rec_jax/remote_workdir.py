"""A trained workdir given as a path string: local, Google Drive (Colab) or Google Cloud Storage.

``fetch('gs://bucket/runs/beauty')`` copies the workdir to local disk (Orbax, the catalog and the
config are then read locally); ``fetch('/content/drive/MyDrive/runs/beauty')`` mounts Drive in Colab
first; a local path is returned as it is. The Colab notebook uses this.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from llm4rec_jax.errors import DataError

DRIVE_ROOT = '/content/drive'


def fetch(path: str | os.PathLike, local_root: str | os.PathLike = '/tmp/llm4rec_workdirs') -> pathlib.Path:
  """A local directory holding the workdir ``path`` (copied there first for ``gs://`` paths)."""
  spec = os.fspath(path)
  if spec.startswith('gs://'):
    return _copy_from_gcs(spec, pathlib.Path(local_root))
  p = pathlib.Path(spec).expanduser()
  if spec.startswith(DRIVE_ROOT + '/') and not pathlib.Path(DRIVE_ROOT, 'MyDrive').exists():
    _mount_drive()
  if not p.is_dir():
    raise DataError('workdir not found (a local path, a path under /content/drive, or gs://...)',
                    path=spec)
  return p


def _copy_from_gcs(url: str, local_root: pathlib.Path) -> pathlib.Path:
  """``gcloud storage cp -r`` (or ``gsutil -m cp -r``) of the workdir into ``local_root``."""
  name = url.rstrip('/').rsplit('/', 1)[-1]
  if not name or url.rstrip('/') == 'gs:/':
    raise DataError('a gs:// workdir needs a bucket and a folder, e.g. gs://bucket/runs/beauty',
                    path=url)
  local_root.mkdir(parents=True, exist_ok=True)
  target = local_root / name
  if shutil.which('gcloud'):
    cmd = ['gcloud', 'storage', 'cp', '-r', url.rstrip('/'), str(local_root)]
  elif shutil.which('gsutil'):
    cmd = ['gsutil', '-m', 'cp', '-r', url.rstrip('/'), str(local_root)]
  else:
    raise DataError('copying from gs:// needs the gcloud or gsutil command (preinstalled in Colab; '
                    'else install the Google Cloud SDK)', path=url)
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode != 0 or not target.is_dir():
    raise DataError(f'{" ".join(cmd[:3])} failed ({done.returncode}): '
                    f'{(done.stderr or done.stdout).strip()[-500:]}', path=url)
  return target


def _mount_drive() -> None:
  try:
    from google.colab import drive  # pylint: disable=import-outside-toplevel,import-error
  except ImportError as e:
    raise DataError('a /content/drive path needs Google Colab (to mount Drive) or a mounted Drive',
                    path=DRIVE_ROOT) from e
  drive.mount(DRIVE_ROOT)
