"""Export of a fine-tuned text encoder (``config.text_finetune``) in the Hugging Face layout."""

from __future__ import annotations

import pathlib
import shutil

from flax import nnx

from llm4rec_jax.model import text_encoder
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
