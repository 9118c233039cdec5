"""Exports in the Hugging Face layout: a fine-tuned text encoder (``config.text_finetune``) and the
decoder blocks of a run trained from ``model.backbone`` (LoRA adapters merged)."""

from __future__ import annotations

import pathlib
import shutil

from flax import nnx

from llm4rec_jax.model import decoder, hf_export, lora, text_encoder
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.train import restore

TOKENIZER_FILES = ('vocab.txt', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json')


def export_encoder(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                   checkpoint: str = 'best') -> pathlib.Path:
  """Writes the fine-tuned text encoder of a workdir's checkpoint in the Hugging Face layout
  (``config.json`` + ``model.safetensors``), with the tokenizer files of the model it started
  from, so it can be used as ``content.text_model`` (or by ``transformers``) elsewhere."""
  model = restore.load_model(workdir, checkpoint)
  if model.spec.cfg.text_encoder is None:
    raise ConfigError('text_finetune.enabled', f'{workdir} was trained with a frozen text encoder; '
                      'there is no fine-tuned encoder to export')
  encoder = nnx.merge(model.spec.graphdef, model.params).text_encoder
  out = text_encoder.save_pretrained(encoder, out_dir)
  source = text_encoder.resolve_model_dir(model.config.content.text_model
                                          or text_encoder.default_model_dir())
  for name in TOKENIZER_FILES:
    if (source / name).is_file():
      shutil.copy(source / name, out / name)
  return out


def export_backbone(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                    checkpoint: str = 'best', dtype: str = 'float32') -> pathlib.Path:
  """Writes the decoder blocks of a workdir's checkpoint trained from ``model.backbone`` back in
  that checkpoint's Hugging Face layout (``model.hf_export.save_backbone``): LoRA adapters merged
  into their base weights (``W + alpha / rank * A B``), text embeddings and tokenizer copied from
  the source checkpoint, the trained item tables beside them (so the directory can start another
  run as ``model.backbone``, or be read by ``transformers``)."""
  model = restore.load_model(workdir, checkpoint)
  source = model.config.model.get('backbone', '')
  if not source:
    raise ConfigError('model.backbone', f'{workdir} was not trained from a Hugging Face '
                      'checkpoint; there is no layout to export its blocks in')
  params = model.params
  if model.spec.cfg.scan_layers:  # stacked blocks: back to one tree per layer
    params = {**params, 'blocks': decoder.unstack_layers(params['blocks'])}
  if model.spec.cfg.lora_rank:
    params = lora.merge_params(params, model.spec.cfg.lora_scale)
  return hf_export.save_backbone(params, source, out_dir, dtype=dtype)
