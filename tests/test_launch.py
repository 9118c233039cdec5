"""Launch scripts: --help, DRY_RUN=1, and the commands they execute (against fake gcloud/srun/llm4rec).

The fakes are shell scripts on PATH that append their argv to a log, so the tests check what the
scripts really run, not only what they print.
"""

import os
import pathlib
import shlex
import subprocess
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ('local.sh', 'gpu.sh', 'tpu.sh')

FAKE = r'''#!/usr/bin/env bash
printf '%s' "$(basename "$0")" >> "$FAKE_LOG"; printf ' %q' "$@" >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
if [[ "$(basename "$0")" == gcloud ]]; then
  case " $* " in
    *" describe "*) [[ "${FAKE_TPU_EXISTS:-0}" == 1 ]] || exit 1 ;;
    *" scp "*) cp "$5" "$FAKE_DIR/bundle.tar.gz" ;;
    *"llm4rec train"*) echo "worker output"; exit "${FAKE_TRAIN_RC:-0}" ;;
  esac
fi
'''


@pytest.fixture
def fakes(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'srun', 'llm4rec'):
    (bin_dir / name).write_text(FAKE)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / 'calls.log'
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  env.update(PATH=f'{bin_dir}:{env["PATH"]}', FAKE_LOG=str(log), FAKE_DIR=str(tmp_path))

  def run(script, *args, **extra_env):
    proc = subprocess.run(['bash', f'launch/{script}', *args], cwd=ROOT, capture_output=True,
                          text=True, env={**env, **extra_env}, timeout=60)
    calls = [shlex.split(l) for l in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return proc, calls
  return run


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_documents_the_keys(script, fakes):
  proc, calls = fakes(script, '--help')
  assert proc.returncode == 0 and calls == []
  assert 'KEY=VALUE' in proc.stdout and 'DRY_RUN=1' in proc.stdout and 'CONFIG' in proc.stdout


@pytest.mark.parametrize('script', SCRIPTS)
def test_missing_or_malformed_arguments_fail_clearly(script, fakes):
  proc, calls = fakes(script, 'TPU_NAME=t', 'ZONE=z', 'WORKDIR=/w')
  assert proc.returncode != 0 and 'CONFIG' in proc.stderr and calls == []
  proc, _ = fakes(script, 'CONFIG')
  assert proc.returncode == 2 and "expected KEY=VALUE, got 'CONFIG'" in proc.stderr


def test_local_runs_llm4rec_with_extra_flags(fakes):
  args = ('CONFIG=configs/beauty.py:tiny', 'WORKDIR=/tmp/w',
          'EXTRA=--config.train.num_epochs=5 --config.mesh.shape=(1,2,4)')
  proc, calls = fakes('local.sh', *args)
  assert proc.returncode == 0, proc.stderr
  expected = ['llm4rec', 'train', '--config=configs/beauty.py:tiny', '--workdir=/tmp/w',
              '--config.train.num_epochs=5', '--config.mesh.shape=(1,2,4)']
  assert calls == [expected]
  proc, calls = fakes('local.sh', *args, DRY_RUN='1')
  assert calls == [] and shlex.split(proc.stdout) == expected


def test_gpu_multi_node_by_coordinator(fakes):
  proc, calls = fakes('gpu.sh', 'CONFIG=c.py:base', 'WORKDIR=/ckpt', 'COORDINATOR=node0:1234',
                      'NUM_PROCESSES=4', 'PROCESS_ID=2')
  assert proc.returncode == 0, proc.stderr
  assert calls == [['llm4rec', 'train', '--config=c.py:base', '--workdir=/ckpt',
                    '--config.distributed.initialize=true',
                    '--config.distributed.coordinator_address=node0:1234',
                    '--config.distributed.num_processes=4', '--config.distributed.process_id=2']]
  proc, calls = fakes('gpu.sh', 'CONFIG=c.py', 'WORKDIR=/ckpt', 'COORDINATOR=node0:1234')
  assert proc.returncode != 0 and 'NUM_PROCESSES' in proc.stderr and calls == []


def test_gpu_single_node_and_slurm(fakes):
  proc, calls = fakes('gpu.sh', 'CONFIG=c.py', 'WORKDIR=/ckpt')
  assert calls == [['llm4rec', 'train', '--config=c.py', '--workdir=/ckpt']]
  # In an allocation, NODES=2 starts one task per node running this same script under srun ...
  proc, calls = fakes('gpu.sh', 'NODES=2', 'CONFIG=c.py', 'WORKDIR=/ckpt', SLURM_JOB_ID='7')
  assert proc.returncode == 0, proc.stderr
  assert calls == [['srun', '--nodes=2', '--ntasks-per-node=1', '--kill-on-bad-exit=1',
                    'launch/gpu.sh', 'NODES=2', 'CONFIG=c.py', 'WORKDIR=/ckpt']]
  # ... and inside a task, JAX reads rank and coordinator from SLURM.
  proc, calls = fakes('gpu.sh', 'NODES=2', 'CONFIG=c.py', 'WORKDIR=/ckpt', SLURM_JOB_ID='7',
                      SLURM_STEP_ID='0', SLURM_NTASKS='2')
  assert calls == [['llm4rec', 'train', '--config=c.py', '--workdir=/ckpt',
                    '--config.distributed.initialize=true']]


TPU_ARGS = ('TPU_NAME=rec', 'ZONE=us-west4-a', 'ACCELERATOR_TYPE=v5litepod-256', 'PROJECT=p',
            'CONFIG=configs/beauty.py:1b', 'WORKDIR=/home/u/gcs/run', 'BUCKET=bk',
            'EXTRA=--config.mesh.shape=(1,-1,1)')


def test_tpu_creates_copies_installs_trains_on_all_workers_and_deletes(fakes, tmp_path):
  proc, calls = fakes('tpu.sh', *TPU_ARGS, 'DELETE=1', 'SPOT=1', f'LOG_DIR={tmp_path}/logs')
  assert proc.returncode == 0, proc.stderr
  where = ['--zone=us-west4-a', '--project=p']
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  assert calls[0] == tpu + ['describe', 'rec'] + where
  assert calls[1] == tpu + ['create', 'rec'] + where + [
      '--accelerator-type=v5litepod-256', '--version=v2-alpha-tpuv5-lite', '--spot']
  assert calls[2][:5] == tpu + ['scp'] and calls[2][6:] == ['rec:llm4rec_jax.tar.gz'] + where + [
      '--worker=all']
  setup, train = calls[3], calls[4]
  assert setup[:6] == tpu + ['ssh', 'rec'] and '--worker=all' in setup
  assert 'pip install -q -e .' in setup[-1] and 'gcsfuse --implicit-dirs bk ~/gcs' in setup[-1]
  assert train[-1] == ('--command=cd llm4rec_jax && llm4rec train --config=configs/beauty.py:1b '
                       '--workdir=/home/u/gcs/run --config.distributed.initialize=true '
                       '--config.mesh.shape=\\(1\\,-1\\,1\\)')
  # ... which the worker's shell reads back as the flag that was given.
  assert _worker_expands(train[-1].removeprefix('--command='), '/home/u').endswith(
      '--config.mesh.shape=(1,-1,1)')
  assert '--worker=all' in train
  assert calls[5] == tpu + ['delete', 'rec'] + where + ['--quiet'] and len(calls) == 6
  # Logs are streamed here and kept.
  assert 'worker output' in proc.stdout
  assert 'worker output' in (tmp_path / 'logs' / 'train.log').read_text()
  # The bundle holds the working tree (not ignored files), ready for `pip install -e .`.
  with tarfile.open(tmp_path / 'bundle.tar.gz') as tar:
    names = set(tar.getnames())
  assert {'setup.py', 'llm4rec_jax/cli.py', 'launch/tpu.sh'} <= names


def test_tpu_reuses_an_existing_vm_and_deletes_even_when_training_fails(fakes, tmp_path):
  proc, calls = fakes('tpu.sh', *TPU_ARGS, 'DELETE=1', f'LOG_DIR={tmp_path}/logs',
                      FAKE_TPU_EXISTS='1', FAKE_TRAIN_RC='3')
  assert proc.returncode == 3
  verbs = [c[4] for c in calls]
  assert verbs == ['describe', 'scp', 'ssh', 'ssh', 'delete']
  proc, calls = fakes('tpu.sh', *TPU_ARGS, 'CREATE=0')
  assert proc.returncode == 1 and 'not found' in proc.stderr and [c[4] for c in calls] == [
      'describe']


def test_tpu_dry_run_prints_and_runs_nothing(fakes, tmp_path):
  proc, calls = fakes('tpu.sh', *TPU_ARGS, 'DELETE=1', 'DRY_RUN=1', f'LOG_DIR={tmp_path}/logs')
  assert proc.returncode == 0, proc.stderr
  assert calls == []
  printed = [shlex.split(l) for l in proc.stdout.splitlines()]
  assert [p[4] if p[0] == 'gcloud' else p[0] for p in printed] == [
      'create', 'tar', 'scp', 'ssh', 'ssh', 'delete']


def _readme_tpu_example() -> list[str]:
  """The README's launch/tpu.sh example line (with its continuation lines), split as bash would."""
  lines = (ROOT / 'README.md').read_text().splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith('launch/tpu.sh TPU_NAME='))
  text = lines[start]
  while text.endswith('\\'):
    start += 1
    text = text[:-1] + ' ' + lines[start].strip()
  return shlex.split(text)[1:]


def _worker_expands(command: str, home: str) -> str:
  """What a worker's login shell makes of the remote command's arguments (echoed, not run)."""
  return subprocess.run(['bash', '-c', 'echo ' + command.split('llm4rec train ', 1)[1]],
                        capture_output=True, text=True, env={'HOME': home, 'PATH': os.environ['PATH']},
                        check=True).stdout.strip()


def test_tpu_readme_example_puts_checkpoints_in_the_mounted_bucket(fakes, tmp_path):
  args = _readme_tpu_example()
  assert any(a.startswith('WORKDIR=~') or a.startswith('WORKDIR=gs://') for a in args), args
  proc, calls = fakes('tpu.sh', *args, f'LOG_DIR={tmp_path}/logs')
  assert proc.returncode == 0, proc.stderr
  train = next(c for c in calls if 'llm4rec train' in c[-1])[-1]
  expanded = _worker_expands(train.removeprefix('--command='), '/home/w')
  # Every worker writes under its bucket mount, never a relative folder named "~".
  assert '--workdir=/home/w/gcs/beauty-1b ' in expanded + ' ', expanded
  assert 'env LLM4REC_DATA_DIR=$HOME/llm4rec_data llm4rec train' in train
  setup = next(c for c in calls if 'pip install' in c[-1])[-1]
  assert 'gcsfuse --implicit-dirs my-bucket ~/gcs' in setup
  assert 'gcloud storage rsync --recursive gs://my-bucket/llm4rec_data ~/llm4rec_data' in setup


def test_tpu_gs_workdir_mounts_its_bucket_and_data_reaches_the_workers(fakes, tmp_path):
  base = [a for a in TPU_ARGS if not a.startswith(('WORKDIR=', 'BUCKET='))]
  data = tmp_path / 'data'
  (data / 'beauty').mkdir(parents=True)
  (data / 'beauty' / 'Beauty.txt').write_text('1 2 3\n')
  proc, calls = fakes('tpu.sh', *base, 'WORKDIR=gs://bk/runs/beauty', f'DATA_DIR={data}',
                      f'LOG_DIR={tmp_path}/logs')
  assert proc.returncode == 0, proc.stderr
  scps = [c for c in calls if c[4] == 'scp']
  assert [c[6] for c in scps] == ['rec:llm4rec_jax.tar.gz', 'rec:llm4rec_data.tar.gz']
  setup = next(c for c in calls if 'pip install' in c[-1])[-1]
  assert 'gcsfuse --implicit-dirs bk ~/gcs' in setup
  assert 'tar xzf ~/llm4rec_data.tar.gz -C ~/llm4rec_data' in setup
  train = next(c for c in calls if 'llm4rec train' in c[-1])[-1]
  expanded = _worker_expands(train.removeprefix('--command='), '/home/w')
  assert '--workdir=/home/w/gcs/runs/beauty ' in expanded + ' '
  assert 'env LLM4REC_DATA_DIR=$HOME/llm4rec_data llm4rec train' in train
  # A gs:// dataset is copied by each worker; a workdir in another bucket than BUCKET is refused.
  proc, calls = fakes('tpu.sh', *base, 'WORKDIR=gs://bk/r', 'DATA_DIR=gs://bk/data',
                      f'LOG_DIR={tmp_path}/logs')
  setup = next(c for c in calls if 'pip install' in c[-1])[-1]
  assert 'gcloud storage rsync --recursive gs://bk/data ~/llm4rec_data' in setup
  proc, _ = fakes('tpu.sh', *base, 'WORKDIR=gs://other/r', 'BUCKET=bk')
  assert proc.returncode == 2 and 'bucket other' in proc.stderr


def test_tpu_home_relative_workdir_is_the_workers_home(fakes, tmp_path):
  base = [a for a in TPU_ARGS if not a.startswith(('WORKDIR=', 'EXTRA='))]
  proc, calls = fakes('tpu.sh', *base, 'WORKDIR=~/gcs/my run', f'LOG_DIR={tmp_path}/logs')
  assert proc.returncode == 0, proc.stderr
  train = next(c for c in calls if 'llm4rec train' in c[-1])[-1]
  out = subprocess.run(['bash', '-c', 'printf "%s\\n" ' + train.split('llm4rec train ', 1)[1]],
                       capture_output=True, text=True, check=True,
                       env={'HOME': '/home/w', 'PATH': os.environ['PATH']}).stdout.splitlines()
  assert '--workdir=/home/w/gcs/my run' in out  # one argument, spaces kept, ~ expanded
