"""The item decoder's blocks written back in the Hugging Face layout of the backbone they came from.

:func:`save_backbone` is the inverse of what ``hf_import.load_backbone`` reads
(``hf_import.block_layout`` names every tensor and how it maps): ``config.json`` and tokenizer
files copied from the source checkpoint, every decoder block's projections, norms and biases from
the model, the text embeddings (and an untied ``lm_head``) copied unchanged, one
``.safetensors`` shard per decoder layer with ``model.safetensors.index.json``. The recommender's
own item tables go to ``hf_import.ITEM_TABLES`` beside them; loading the directory as
``model.backbone`` then starts from both. LoRA adapters must be merged first
(``lora.merge_params``).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import ml_dtypes
import numpy as np

from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import hf_import

DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}
TORCH_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16', 'float16': 'float16'}
COPIED = ('tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'special_tokens_map.json',
          'vocab.json', 'merges.txt', 'generation_config.json')


def _to_hf(ours: np.ndarray, kind: str, plus_one: bool) -> np.ndarray:
  """One of our block parameters -> its Hugging Face tensor (inverse of hf_import's readers)."""
  if kind == 'head_major':  # [d, heads, head_dim] -> [heads * head_dim, d]
    return ours.transpose(1, 2, 0).reshape(-1, ours.shape[0])
  if kind == 'out_proj':  # [heads, head_dim, d] -> [d, heads * head_dim]
    return ours.reshape(-1, ours.shape[-1]).T
  if kind == 'bias':  # [heads, head_dim] -> [heads * head_dim]
    return ours.reshape(-1)
  if kind == 'norm':
    return ours - 1.0 if plus_one else ours
  return ours.T  # MLP [in, out] -> [out, in]


def _host(x: Any) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32)


def save_backbone(params: dict[str, Any], source: str | pathlib.Path, out_dir: str | pathlib.Path,
                  *, dtype: str = 'float32') -> pathlib.Path:
  """Writes the blocks and final norm of ``params`` (the item decoder's pure dict, no adapters) as
  a Hugging Face checkpoint of ``source``'s architecture in ``dtype``; returns the directory.

  Every block parameter must have a place in the layout: a model with blocks the checkpoint does
  not have (causal filter, cross-attention) is refused. Single process: each tensor is fetched
  whole to this host (one tensor at a time, one layer's shard in memory).
  """
  source, out = pathlib.Path(source), pathlib.Path(out_dir)
  if not (source / 'config.json').is_file():
    raise ConfigError('model.backbone', f'{source}: the source checkpoint (its config.json, text '
                      'embeddings and tokenizer) is needed to export in its layout')
  if dtype not in DTYPES:
    raise ConfigError('dtype', f'{dtype!r} is not one of {tuple(DTYPES)}')
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = hf_import.read_config(source, num_items=1)
  layout = hf_import.block_layout(cfg)
  blocks = params['blocks']
  if len(blocks) != cfg.num_layers:
    raise ConfigError('model.backbone', f'{len(blocks)} blocks, {source} has {cfg.num_layers}')
  np_dtype = DTYPES[dtype]
  out.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = []
  for i in range(cfg.num_layers):
    tensors: dict[str, np.ndarray] = {}

    def write(ours, where, path):
      if hf_import.is_layout_leaf(where):
        name, kind = where
        # Contiguous: safetensors writes an array's buffer as is, a transposed view included.
        tensors[name] = np.ascontiguousarray(
            _to_hf(_host(ours), kind, cfg.norm_plus_one).astype(np_dtype))
        return
      extra = set(ours) - set(where)
      if extra:
        raise ConfigError('model.backbone', f'blocks/{i}/{path}: {sorted(extra)} have no place in '
                          f'the {cfg.model_type} layout (merge LoRA adapters first; causal filters '
                          'and cross-attention cannot be exported)')
      for k, sub in where.items():
        write(ours[k], sub, f'{path}/{k}')

    write(blocks[i], layout[i], '')
    shards.append(tensors)
  src = hf_import._Tensors(source)  # pylint: disable=protected-access
  rest = {'model.norm.weight': _to_hf(_host(params['final_norm']['scale']), 'norm',
                                      cfg.norm_plus_one).astype(np_dtype)}
  for name in ('model.embed_tokens.weight', 'lm_head.weight'):
    if src.has(name):  # unchanged by training: the recommender never reads the text rows
      rest[name] = src.read(name, (slice(None),) * len(src.shape(name))).astype(np_dtype)
  shards.append(rest)
  weight_map = {}
  for k, tensors in enumerate(shards):
    fname = f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
    save_file(tensors, str(out / fname), metadata={'format': 'pt'})
    weight_map.update({n: fname for n in tensors})
  (out / 'model.safetensors.index.json').write_text(json.dumps(
      {'metadata': {}, 'weight_map': dict(sorted(weight_map.items()))}, indent=1))
  tables = {k: _host(params[k]) for k in ('item_embed', 'output_embed', 'bos') if k in params}
  if tables:
    save_file(tables, str(out / hf_import.ITEM_TABLES))
  config = json.loads((source / 'config.json').read_text())
  config['torch_dtype'] = TORCH_DTYPES[dtype]
  (out / 'config.json').write_text(json.dumps(config, indent=1))
  for name in COPIED:
    if (source / name).is_file():
      shutil.copy(source / name, out / name)
  return out
