"""Yelp (S3-Rec preprocessing), leave-one-out, full ranking, seen items excluded by default.

  llm4rec train --config=configs/yelp.py --workdir=workdirs/yelp
  llm4rec evaluate --config=configs/yelp.py --workdir=workdirs/yelp --config.eval.exclude_seen=false
"""

from llm4rec_jax import config_base


def get_config(arg: str | None = None):
  args = config_base.parse_arg(arg, default_preset='small')
  c = config_base.apply_preset(config_base.base_config(), args['preset'])
  c.data.name = 'yelp'
  c.data.split = 'leave_one_out'
  c.data.max_len = 50
  c.model.dropout = 0.3
  c.train.batch_size = 128
  c.train.num_epochs = 30
  c.train.patience = 4
  c.train.log_every = 100
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.eval.batch_size = 512
  return c
