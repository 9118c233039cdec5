"""A trained model back from its workdir: the model config its files describe, and its parameters.

Every consumer of a trained workdir (evaluation, serving, the item index, online adaptation, the
semantic-ID source, encoder export, benchmarks) restores through here. Only the parameters (and,
with a fine-tuned text encoder, the catalog text table saved beside them) are read, straight into
their shardings: an Orbax partial restore of the checkpoint's state, so no optimizer is built and
no optimizer moments are read.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from llm4rec_jax import config_base, partitioning
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data.content import ItemContent
from llm4rec_jax.model.decoder import DecoderConfig
from llm4rec_jax.errors import CheckpointError, DataError
from llm4rec_jax.model.semantic_ids import SemanticIds
from llm4rec_jax.train import state as state_lib
from llm4rec_jax.train import text_finetune
from llm4rec_jax.train.checkpointing import abstract_with_shardings, restore_partial


def params_target(spec: state_lib.ModelSpec, key: str = 'params') -> dict[str, Any]:
  """The restore target of a parameters-only restore: ``key`` (``params``, or ``ema_params`` for
  the weights' moving average) and, with a fine-tuned text encoder, ``text_table``/
  ``text_table_step`` (abstract arrays carrying their shardings)."""
  text_abstract, text_shardings = state_lib.text_table_shardings(spec)
  abstract = {key: spec.abstract_params, **text_abstract}
  shardings = {key: spec.param_shardings, **text_shardings}
  return abstract_with_shardings(abstract, shardings)


def params_key(workdir: workdir_lib.PathLike) -> str:
  """The state entry that holds a workdir's trained weights: ``ema_params`` when the run kept a
  moving average of them (``optimizer.ema_decay``; evaluation chose its best checkpoint by it),
  else ``params``."""
  config = config_base.load(workdir)
  return state_lib.EMA_PARAMS if config.optimizer.get('ema_decay', 0.0) > 0 else 'params'


def restore_checkpoint(workdir: workdir_lib.PathLike, spec: state_lib.ModelSpec,
                       checkpoint: str | int = 'best') -> tuple[int, dict[str, Any]]:
  """(step, ``{'params', ['text_table', 'text_table_step']}``) of a checkpoint of ``workdir``
  ('auto', 'best', 'latest', 'refit' or a step number), placed in ``spec``'s shardings; ``params`` are the
  weights' moving average when the run kept one. 'refit': the best checkpoint refit on what was
  known at test (``eval.refit_epochs``), with the step it started from; 'auto': the refit when
  there is one, else 'best' (:func:`workdir.resolve_checkpoint`)."""
  checkpoint = workdir_lib.resolve_checkpoint(workdir, checkpoint)
  if str(checkpoint).strip().lower() == 'refit':
    record = workdir_lib.read_refit(workdir)
    if record is None:
      raise CheckpointError(f'{workdir_lib.path(workdir, workdir_lib.REFIT)} holds no refit '
                            '(train or evaluate with eval.refit_epochs > 0)')
    return int(record['from_step']), restore_partial(
        workdir_lib.path(workdir, workdir_lib.REFIT) / 'params', params_target(spec),
        f'the refit of {workdir}')
  key = params_key(workdir)
  ckpt = workdir_lib.checkpoints(workdir, read_only=True)
  try:
    step = workdir_lib.checkpoint_step(ckpt, checkpoint)
    restored = ckpt.restore_subtree(step, params_target(spec, key))
    restored['params'] = restored.pop(key)
    return step, restored
  finally:
    ckpt.close()


def restore_params(workdir: workdir_lib.PathLike, spec: state_lib.ModelSpec,
                   checkpoint: str | int = 'best', content: ItemContent | None = None,
                   encode_batch_size: int = 0) -> tuple[int, Any, ItemContent | None]:
  """(step, parameters, content) of a checkpoint; with a fine-tuned text encoder the content's
  text rows become that checkpoint's item text table (re-encoded in chunks of
  ``encode_batch_size`` rows when the table predates the step)."""
  step, restored = restore_checkpoint(workdir, spec, checkpoint)
  if spec.cfg.text_encoder is not None:
    content = text_finetune.checkpoint_content(spec.graphdef, content, restored, step,
                                               encode_batch_size)
  return step, restored['params'], content


def restore_snapshot_params(workdir: workdir_lib.PathLike, position: int,
                            spec: state_lib.ModelSpec) -> Any:
  """The adapted parameters of online snapshot ``position`` (``spec`` at its vocabulary size)."""
  manager = workdir_lib.snapshots(workdir, read_only=True)
  try:
    return manager.restore_subtree(position, params_target(spec))['params']
  finally:
    manager.close()


def saved_model_config(workdir: workdir_lib.PathLike, config: ml_collections.ConfigDict,
                       num_items: int, mesh: jax.sharding.Mesh
                       ) -> tuple[DecoderConfig, ItemContent | None, SemanticIds | None]:
  """(model config, host content arrays or None, semantic IDs or None) of a trained workdir: the
  config's model completed by the files training wrote (content spec, fine-tuned text encoder,
  semantic-ID codes)."""
  cfg = state_lib.model_config(config, num_items, mesh)
  content = None
  content_spec = workdir_lib.read_content_spec(workdir)
  if content_spec is not None:
    cfg = dataclasses.replace(cfg, content=content_spec if content_spec.num_tokens else None)
    content = workdir_lib.read_content(workdir, content_spec)
  encoder_cfg = workdir_lib.read_encoder_config(workdir)
  if encoder_cfg is not None:  # the text encoder was fine-tuned with the model
    cfg = dataclasses.replace(cfg, text_encoder=encoder_cfg)
  sid = None
  if cfg.head == 'semantic_id':
    sid = workdir_lib.read_semantic_ids(workdir)
    if sid is None:
      raise DataError('the semantic-ID head needs the item codes training writes; train in this '
                      'workdir first', path=str(workdir_lib.path(workdir, workdir_lib.SEMANTIC_IDS)))
    cfg = dataclasses.replace(cfg, codebook_sizes=sid.codebook_sizes)
  return cfg, content, sid


def single_device_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The config's mesh axes, each of size 1, on the first device (inference on one device)."""
  mesh_cfg = dict(axes=config.mesh.axes, shape=(1,) * len(config.mesh.axes))
  return partitioning.make_mesh(mesh_cfg, devices=jax.devices()[:1])


@dataclasses.dataclass
class TrainedModel:
  """A checkpoint of a trained workdir, on one device: what the item index, the semantic-ID source
  and encoder export need of it (serving adds scoring on top: ``serving.Recommender``)."""
  workdir: epath.Path
  config: ml_collections.ConfigDict
  catalog: dict[str, Any]  # items.json
  spec: state_lib.ModelSpec
  step: int
  params: Any
  content: ItemContent | None  # on device

  @property
  def raw_ids(self) -> list[str]:
    return self.catalog['raw_ids']

  def item_table(self) -> np.ndarray:
    """float32 [rows, d_model]: the model's item representation of every catalog row."""
    return catalog_table(self.spec.graphdef, self.params, self.content)[:len(self.raw_ids)]


def load_model(workdir: workdir_lib.PathLike, checkpoint: str | int = 'best') -> TrainedModel:
  """A checkpoint of ``workdir`` (:data:`workdir.CHECKPOINT_CHOICES`) restored onto one device."""
  workdir = workdir_lib.root(workdir)
  config = config_base.load(workdir)
  catalog = workdir_lib.read_catalog(workdir)
  mesh = single_device_mesh(config)
  cfg, content, _ = saved_model_config(workdir, config, catalog['num_items'], mesh)
  spec = state_lib.build_model_spec(cfg, mesh, config.mesh.rules)
  content = jax.tree.map(jnp.asarray, content) if content is not None else None
  step, params, content = restore_params(
      workdir, spec, checkpoint, content,
      config.text_finetune.encode_batch_size if cfg.text_encoder is not None else 0)
  return TrainedModel(workdir, config, catalog, spec, step, params, content)


@functools.lru_cache(maxsize=4)
def _catalog_table_fn(graphdef: nnx.GraphDef):
  return jax.jit(lambda params, content: nnx.merge(graphdef, params).encode_catalog(content).table)


def catalog_table(graphdef: nnx.GraphDef, params: Any, content: Any) -> np.ndarray:
  """float32 [vocab, d_model] on the host: the catalog encoding's item table (the input side;
  ``retrieval.context.item_table`` is the output side the softmax head scores)."""
  return np.asarray(jax.device_get(_catalog_table_fn(graphdef)(params, content)))
