"""A trained workdir: the one definition of its layout, and of choosing a checkpoint or snapshot.

``llm4rec train`` writes, and everything that reads a trained model (evaluation, serving, the item
index, online adaptation, explanations, benchmarks) reads, these files under ``WORKDIR``:

==========================  ======================================================================
``config.json``             the effective config of the run (``config_base.save``/``load``)
``items.json``              the item catalog: raw ids, titles, item count, training counts
``content.npz``             the item content arrays (content models)
``content_spec.json``       their shapes (``ContentSpec``)
``text_encoder.json``       the architecture of a fine-tuned text encoder (``text_finetune``)
``semantic_ids.npz``        the item codes of the semantic-ID head
``transitions.npz``         the training-transition blend chosen on validation (``transitions``)
``checkpoints/``            Orbax checkpoints (``train.checkpointing.Checkpointer``)
``metrics.json``            the final metrics of the best checkpoint
``rankings_{split}.jsonl``  per-user rankings (``eval.save_rankings``)
``train_log.jsonl``         one line per logged step; ``events.jsonl``: one line per run event
``index/``                  the ScaNN item index of a checkpoint (``llm4rec index``)
``online/snapshots/``       online-adapted snapshots by stream position (``llm4rec adapt``)
``online/index/``           the index as the online learner last updated it
``online/log.jsonl``        one line per online run
``explainer/``              a trained explanation generator
==========================  ======================================================================

A workdir is any path ``etils.epath`` opens: a local folder, or ``gs://bucket/run`` read in place
(nothing is copied; Orbax reads the checkpoints from it too); :func:`open_path` also mounts Google
Drive in Colab for a ``/content/drive/...`` path. Every function here takes a ``str``, an
``os.PathLike`` or an ``epath.Path``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from etils import epath

from llm4rec_jax import transitions as transitions_lib
from llm4rec_jax.model.text_encoder import BertConfig
from llm4rec_jax.data.content import ContentSpec, ItemContent
from llm4rec_jax.errors import CheckpointError, DataError
from llm4rec_jax.model.semantic_ids import SemanticIds
from llm4rec_jax.train.checkpointing import Checkpointer, SnapshotManager, save_tree

CONFIG = 'config.json'
CATALOG = 'items.json'
CONTENT = 'content.npz'
CONTENT_SPEC = 'content_spec.json'
TEXT_ENCODER = 'text_encoder.json'
SEMANTIC_IDS = 'semantic_ids.npz'
TRANSITIONS = transitions_lib.FILENAME  # the transition blend chosen on validation
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.json'
TRAIN_LOG = 'train_log.jsonl'
EVENTS = 'events.jsonl'
INDEX = 'index'
ONLINE = 'online'
SNAPSHOTS = f'{ONLINE}/snapshots'
ONLINE_INDEX = f'{ONLINE}/index'
ONLINE_LOG = f'{ONLINE}/log.jsonl'
EXPLAINER = 'explainer'
REFIT = 'refit'  # the chosen checkpoint refit on what is known at test (eval.refit_epochs)

AUTO = 'auto'  # serving's default: the refit when the workdir has one, else the best checkpoint
CHECKPOINT_CHOICES = "'auto', 'best', 'latest', 'refit' or a step number"
SNAPSHOT_CHOICES = "'auto', 'none', 'latest' or a stream position"
DRIVE_ROOT = '/content/drive'  # where Colab mounts Google Drive

PathLike = str | os.PathLike  # an epath.Path is one; 'gs://...' strings become epath GPaths


def root(workdir: PathLike) -> epath.Path:
  """The workdir as an ``epath.Path`` (local, or ``gs://`` read in place)."""
  return epath.Path(workdir)


def path(workdir: PathLike, name: str) -> epath.Path:
  """``WORKDIR/name`` for one of the names above."""
  return epath.Path(workdir) / name


def open_path(spec: PathLike) -> epath.Path:
  """The existing workdir ``spec``: a local path (``~`` expanded), ``gs://bucket/run`` (read in
  place, nothing is copied) or, in Colab, ``/content/drive/MyDrive/...`` (Drive is mounted first)."""
  text = os.fspath(spec)
  if text.startswith(DRIVE_ROOT + '/') and not os.path.exists(os.path.join(DRIVE_ROOT, 'MyDrive')):
    _mount_drive()
  workdir = epath.Path(text if '://' in text else os.path.expanduser(text))
  if not workdir.is_dir():
    raise DataError('workdir not found (a local path, a path under /content/drive, or gs://...)',
                    path=text)
  return workdir


def _mount_drive() -> None:
  try:
    from google.colab import drive  # pylint: disable=import-outside-toplevel,import-error
  except ImportError as e:
    raise DataError('a /content/drive path needs Google Colab (to mount Drive) or a mounted Drive',
                    path=DRIVE_ROOT) from e
  drive.mount(DRIVE_ROOT)


def rankings(workdir: PathLike, split: str) -> epath.Path:
  """The per-user rankings of ``split`` ('valid', 'test', 'test_cold')."""
  return path(workdir, f'rankings_{split}.jsonl')


def read_jsonl(file: PathLike) -> list[dict[str, Any]]:
  """The records of a JSON-lines file (``TRAIN_LOG``, ``EVENTS``, ``ONLINE_LOG``, rankings)."""
  return [json.loads(line) for line in epath.Path(file).read_text().splitlines() if line.strip()]


def write_catalog(workdir: PathLike, catalog: dict[str, Any]) -> None:
  """Writes ``items.json``: ``raw_ids`` (row order, row 0 = pad), ``titles`` (or None),
  ``num_items`` and, when known, ``train_counts`` (interactions per item in training)."""
  path(workdir, CATALOG).write_text(json.dumps(catalog))


def read_catalog(workdir: PathLike) -> dict[str, Any]:
  """The item catalog of a trained workdir (see :func:`write_catalog`)."""
  file = path(workdir, CATALOG)
  if not file.exists():
    raise DataError('item catalog missing; train in this workdir first', path=str(file))
  return json.loads(file.read_text())


def write_content(workdir: PathLike, content: ItemContent, spec: ContentSpec) -> None:
  """The item content arrays and their spec (serving never reads the dataset)."""
  content.save(path(workdir, CONTENT))
  path(workdir, CONTENT_SPEC).write_text(json.dumps(spec.to_json()))


def read_content_spec(workdir: PathLike) -> ContentSpec | None:
  """The saved content spec, or None when the model was trained without content arrays."""
  file = path(workdir, CONTENT_SPEC)
  return ContentSpec.from_json(json.loads(file.read_text())) if file.exists() else None


def read_content(workdir: PathLike, spec: ContentSpec) -> ItemContent:
  """The saved item content arrays (host numpy)."""
  return ItemContent.load(path(workdir, CONTENT), spec)


def write_encoder_config(workdir: PathLike, cfg: BertConfig) -> None:
  """Writes ``text_encoder.json``: the architecture of the text encoder fine-tuned with the model."""
  path(workdir, TEXT_ENCODER).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def read_encoder_config(workdir: PathLike) -> BertConfig | None:
  """The fine-tuned text encoder's architecture, or None when the model has no text encoder."""
  file = path(workdir, TEXT_ENCODER)
  return BertConfig.from_json(file) if file.is_file() else None


def has_text_encoder(workdir: PathLike) -> bool:
  return path(workdir, TEXT_ENCODER).is_file()


def write_semantic_ids(workdir: PathLike, sid: SemanticIds) -> None:
  """Writes ``semantic_ids.npz``: the item codes of the semantic-ID head."""
  sid.save(path(workdir, SEMANTIC_IDS))


def read_semantic_ids(workdir: PathLike) -> SemanticIds | None:
  """The saved item codes (validated), or None when the workdir holds none yet."""
  file = path(workdir, SEMANTIC_IDS)
  return SemanticIds.load(file) if file.exists() else None


def write_transitions(workdir: PathLike, table: transitions_lib.SuccessorTable,
                      weight: float) -> None:
  """Writes ``transitions.npz``: the successor table and the blend weight chosen on validation."""
  transitions_lib.save(workdir, table, weight)


def read_transitions(workdir: PathLike) -> tuple[transitions_lib.SuccessorTable, float] | None:
  """(table, chosen weight), or None when the run chose no transition blend."""
  return transitions_lib.load(workdir)


def write_refit(workdir: PathLike, params: Any, record: dict[str, Any] | None) -> None:
  """Saves the refit parameters (``WORKDIR/refit/params``; every process calls it) and, from
  process 0's caller, its record (``WORKDIR/refit/refit.json``: epochs, steps, rate, the step it
  started from)."""
  save_tree(path(workdir, REFIT) / 'params', {'params': params})
  if record is not None:
    (path(workdir, REFIT) / 'refit.json').write_text(json.dumps(record, indent=2))


def read_refit(workdir: PathLike) -> dict[str, Any] | None:
  """The record of the workdir's refit, or None when it has none."""
  f = path(workdir, REFIT) / 'refit.json'
  return json.loads(f.read_text()) if f.exists() else None


def remove_refit(workdir: PathLike) -> None:
  if path(workdir, REFIT).exists():
    path(workdir, REFIT).rmtree()


def resolve_checkpoint(workdir: PathLike, which: str | int) -> str | int:
  """``which`` with 'auto' made concrete: 'refit' when the workdir holds a refit (the model its
  final test figures rank, ``eval.refit_epochs``), else 'best'. Other choices are returned as
  they are."""
  if str(which).strip().lower() != AUTO:
    return which
  return REFIT if read_refit(workdir) is not None else 'best'


def checkpoints(workdir: PathLike, **kwargs) -> Checkpointer:
  """The workdir's checkpoint manager (``kwargs``: ``Checkpointer`` options)."""
  return Checkpointer(path(workdir, CHECKPOINTS), **kwargs)


def checkpoint_step(ckpt: Checkpointer, which: str | int) -> int | None:
  """The step ``which`` selects: 'best' (highest validation NDCG@10), 'latest' or a step number;
  None when the workdir holds no checkpoint."""
  which = str(which).strip().lower()
  if which == 'best':
    return ckpt.best_step()
  if which == 'latest':
    return ckpt.latest_step()
  if not which.isdigit():
    raise CheckpointError(f'checkpoint {which!r}: expected {CHECKPOINT_CHOICES}')
  return int(which)


def snapshots(workdir: PathLike, **kwargs) -> SnapshotManager:
  """The workdir's online snapshot manager (``kwargs``: ``SnapshotManager`` options)."""
  return SnapshotManager(path(workdir, SNAPSHOTS), **kwargs)


def snapshot_position(workdir: PathLike, which: str | int | None) -> int | None:
  """The stream position of the snapshot ``which`` selects, or None for the training checkpoint.

  ``which``: 'none' (or None): the training checkpoint; 'auto': the latest snapshot when there is
  one, else the training checkpoint; 'latest': the latest snapshot (an error when there is none);
  a number: the snapshot at that stream position.
  """
  which = 'none' if which is None else str(which).strip().lower()
  if which == 'none':
    return None
  if which not in ('auto', 'latest') and not which.isdigit():
    raise CheckpointError(f'--snapshot={which!r}: expected {SNAPSHOT_CHOICES}')
  d = path(workdir, SNAPSHOTS)
  manager = SnapshotManager(d, read_only=True) if d.is_dir() else None
  try:
    positions = sorted(manager.all_steps()) if manager is not None else []
  finally:
    if manager is not None:
      manager.close()
  if which == 'auto':
    return positions[-1] if positions else None
  if not positions:
    raise CheckpointError(f'no online snapshot in {d} (run `llm4rec adapt` first, or use '
                          '--snapshot=none for the training checkpoint)')
  if which == 'latest':
    return positions[-1]
  if int(which) not in positions:
    raise CheckpointError(f'no online snapshot at stream position {which} in {d}; there are '
                          f'{positions}')
  return int(which)
