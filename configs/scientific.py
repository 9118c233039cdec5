"""Amazon 2018 Industrial & Scientific (text-rich), leave-one-out, full ranking, seen items excluded.

Variants (``--config=configs/scientific.py:VARIANT``, optionally ``VARIANT,preset=small``):
  * ``id``: items are ids only (the foundation model);
  * ``multimodal``: title/description/brand text (all-MiniLM-L6-v2 sentence embeddings) and the
    category path fused into the item representation (``item_repr=both``) and read by every block's
    cross-attention over the history's content tokens;
  * ``content``: as multimodal, but items are represented by content alone (no id embedding).

  llm4rec train --config=configs/scientific.py:multimodal --workdir=workdirs/scientific_mm
"""

from llm4rec_jax import config_base

VARIANTS = ('id', 'multimodal', 'content')


def get_config(arg: str | None = None):
  words = [w for w in (arg or '').split(',') if w and '=' not in w]
  variant = next((w for w in words if w in VARIANTS), 'multimodal')
  rest = ','.join(w for w in (arg or '').split(',') if w and w not in VARIANTS)
  c = config_base.apply_preset(config_base.base_config(),
                               config_base.parse_arg(rest, default_preset='small')['preset'])
  c.data.name = 'scientific'
  c.data.split = 'leave_one_out'
  c.data.max_len = 50
  c.model.dropout = 0.3
  c.model.mlp_dim = 64
  c.train.batch_size = 128
  c.train.num_epochs = 200
  c.train.patience = 10
  c.train.log_every = 20
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.eval.batch_size = 512
  if variant != 'id':
    c.content.text = 'title,description,brand'
    c.content.categorical = 'all'
    c.model.item_repr = 'both' if variant == 'multimodal' else 'content'
    c.model.cross_attention_every = 1
  c.variant = variant
  return c
