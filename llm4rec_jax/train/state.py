"""The model and train state built abstract-first: shapes -> shardings -> jitted, sharded init.

The train state is a plain dict ``{'step', 'params', 'opt_state', 'rng'}`` of arrays, plus
``'text_table'``/``'text_table_step'`` when the text encoder is fine-tuned and ``'ema_params'`` (the
weights' moving average) with ``optimizer.ema_decay``. ``params`` is the NNX ``Param`` state as a
pure dict, so the jitted step, Orbax and optax all see ordinary pytrees.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm4rec_jax import partitioning
from llm4rec_jax.model import decoder as decoder_lib
from llm4rec_jax.model import hf_import
from llm4rec_jax.model.decoder import DecoderConfig, ItemDecoder

EMA_PARAMS = 'ema_params'  # the train-state entry of the weights' moving average


def model_config(config: ml_collections.ConfigDict, num_items: int,
                 mesh: jax.sharding.Mesh) -> DecoderConfig:
  """The decoder config of ``config`` (not modified: :func:`recorded_config` is what training saves).

  With ``config.model.backbone`` the architecture fields come from the checkpoint's config.json
  unless the config already records them (a saved config does, so evaluation needs no checkpoint
  files).
  """
  model = config.model
  if model.get('backbone') and not model.get('backbone_type'):
    model = ml_collections.ConfigDict(model.to_dict())
    model.update(hf_import.backbone_architecture(model.backbone))
  cfg = decoder_lib.from_config(model, num_items=num_items,
                                vocab_multiple=128 * vocab_shards(config, mesh))
  d = config.get('debias')
  if d is not None and d.get('fairness', 'none') == 'adversarial' and d.get('num_groups', 0):
    cfg = dataclasses.replace(cfg, adversary_classes=d.num_groups)
  return dataclasses.replace(cfg, max_len=config.data.max_len)


def vocab_shards(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """How many ways the mesh shards a catalog-sized ('vocab') axis."""
  return math.prod(mesh.shape[a] for a in partitioning.rule_axes(config.mesh.rules, 'vocab')
                   if a in mesh.shape)


def recorded_config(config: ml_collections.ConfigDict, cfg: DecoderConfig,
                    num_groups: int = 0) -> ml_collections.ConfigDict:
  """A copy of the validated ``config`` with what training derived from it and the data: the
  vocabulary size, with a backbone its architecture, and with a fairness term the number of user
  groups (``num_groups``). The workdir saves this one."""
  out = ml_collections.ConfigDict(config.to_dict())
  if num_groups:
    out.debias.num_groups = num_groups
  if out.model.get('backbone') and not out.model.get('backbone_type'):
    out.model.update(hf_import.backbone_architecture(out.model.backbone))
  if not out.model.get('vocab_size', 0):
    out.model.vocab_size = cfg.vocab_size
  return out


def put_content(content: Any, mesh: jax.sharding.Mesh, rules) -> Any:
  """Item content on device, every array's rows sharded like the catalog ('vocab')."""
  def put(x):
    names = ('vocab',) + (None,) * (np.ndim(x) - 1)
    sharding = jax.sharding.NamedSharding(
        mesh, partitioning.logical_to_mesh(names, rules, mesh, np.shape(x)))
    return jax.device_put(x, sharding)
  return jax.tree.map(put, content)


@dataclasses.dataclass
class ModelSpec:
  """Graph, abstract parameters and their shardings for one model config on one mesh."""
  cfg: DecoderConfig
  graphdef: nnx.GraphDef
  abstract_params: Any  # pure dict of ShapeDtypeStruct
  param_shardings: Any  # pure dict of NamedSharding
  mesh: Mesh
  rules: Any

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract_params))


def build_model_spec(cfg: DecoderConfig, mesh: Mesh, rules: Any) -> ModelSpec:
  abstract_model = nnx.eval_shape(lambda: ItemDecoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(abstract_state))
  abstract_params = nnx.to_pure_dict(abstract_state)
  shardings = partitioning.tree_shardings(logical, abstract_params, rules, mesh)
  for name in partitioning.check_sharded(shardings, abstract_params):
    logging.warning('large parameter %s is replicated on mesh %s; check config.mesh.rules',
                    name, dict(mesh.shape))
  return ModelSpec(cfg, graphdef, abstract_params, shardings, mesh, rules)


def init_params(spec: ModelSpec, seed: int) -> Any:
  """Parameters initialised directly into their shardings (no full copy on one device)."""
  def init(key):
    model = ItemDecoder(spec.cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
  # The seed's key is an argument, not a constant of the program: every seed of a model compiles to
  # the same program (the values of nnx.Rngs(params=seed)), which a compilation cache reuses.
  return jax.jit(init, out_shardings=spec.param_shardings)(jax.random.key(seed))


def state_shardings(spec: ModelSpec, tx: optax.GradientTransformation, *, ema: bool = False
                    ) -> tuple[Any, Any]:
  """(abstract train state, its shardings); optimizer moments follow their parameters, and so
  does the weights' moving average (``ema_params``, with ``ema``)."""
  abstract_opt = jax.eval_shape(tx.init, spec.abstract_params)
  # LoRA's frozen parameters have no moments: their place in the state is an empty MaskedNode.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_shardings = optax.tree_map_params(
      tx, lambda v, s: v if masked(v) else s, abstract_opt, spec.param_shardings,
      transform_non_params=lambda _: spec.replicated, is_leaf=masked)
  rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  abstract = {'step': jax.ShapeDtypeStruct((), jnp.int32), 'params': spec.abstract_params,
              'opt_state': abstract_opt, 'rng': rng}
  shardings = {'step': spec.replicated, 'params': spec.param_shardings,
               'opt_state': opt_shardings, 'rng': spec.replicated}
  if ema:
    abstract[EMA_PARAMS], shardings[EMA_PARAMS] = spec.abstract_params, spec.param_shardings
  text_abstract, text_shardings = text_table_shardings(spec)
  return {**abstract, **text_abstract}, {**shardings, **text_shardings}


def text_table_shardings(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any]]:
  """(abstract, shardings) of the state's text-table entries; empty without a text encoder.

  The catalog's text embeddings from the live encoder, refreshed at each evaluation, and the step
  they were computed at (llm4rec_jax.train.text_finetune): checkpointed with the model.
  """
  if spec.cfg.text_encoder is None:
    return {}, {}
  shape = (spec.cfg.vocab_size, spec.cfg.text_encoder.hidden_size)
  abstract = {'text_table': jax.ShapeDtypeStruct(shape, jnp.float32),
              'text_table_step': jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = {'text_table': NamedSharding(spec.mesh, partitioning.logical_to_mesh(
                   ('vocab', None), spec.rules, spec.mesh, shape)),
               'text_table_step': spec.replicated}
  return abstract, shardings


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """One step of the weights' moving average; the decay warms up as min(decay, (1+t)/(10+t)) so
  the initial weights fade out within the first steps."""
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def eval_params(state: dict[str, Any]) -> Any:
  """The weights evaluation and checkpoint consumers use: the moving average when kept."""
  return state.get(EMA_PARAMS, state['params'])


def init_train_state(spec: ModelSpec, tx: optax.GradientTransformation, seed: int,
                     shardings: Any, backbone: str = '') -> dict[str, Any]:
  """A fresh train state; ``backbone`` (a Hugging Face checkpoint) supplies the decoder blocks."""
  params = init_params(spec, seed)
  if backbone:
    params = hf_import.load_backbone(params, backbone, spec.cfg.num_items, spec.param_shardings,
                                     seed=seed)
  opt_state = jax.jit(tx.init, out_shardings=shardings['opt_state'])(params)
  rng = jax.device_put(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)),
                       spec.replicated)
  step = jax.device_put(jnp.zeros((), jnp.int32), spec.replicated)
  state = {'step': step, 'params': params, 'opt_state': opt_state, 'rng': rng}
  if EMA_PARAMS in shardings:  # a separate copy: the step donates the state
    state[EMA_PARAMS] = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                out_shardings=shardings[EMA_PARAMS])(params)
  return state
