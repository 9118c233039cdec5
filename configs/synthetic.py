"""The embedded default: the seeded synthetic dataset (no files needed), SASRec-sized model.

  llm4rec train --config=configs/synthetic.py --workdir=/tmp/llm4rec_synthetic
  llm4rec train --config=configs/synthetic.py:tiny --workdir=...   # model preset
"""

from llm4rec_jax import config_base


def get_config(arg: str | None = None):
  args = config_base.parse_arg(arg, default_preset='small')
  c = config_base.apply_preset(config_base.base_config(), args['preset'])
  c.data.name = 'synthetic'
  c.data.synthetic.num_users = 3000
  c.data.synthetic.num_items = 1000
  c.data.max_len = 50
  c.data.all_windows = True
  c.model.dropout = 0.2
  c.train.batch_size = 128
  c.train.num_epochs = 40
  c.train.patience = 5
  c.train.log_every = 20
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  return c
