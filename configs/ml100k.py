"""MovieLens 100K, leave-one-out by timestamp, full ranking, seen items excluded.

  llm4rec train --config=configs/ml100k.py --workdir=workdirs/ml100k
"""

from llm4rec_jax import config_base


def get_config(arg: str | None = None):
  args = config_base.parse_arg(arg, default_preset='small')
  c = config_base.apply_preset(config_base.base_config(), args['preset'])
  c.data.name = 'ml-100k'
  c.data.split = 'leave_one_out'
  c.data.max_len = 200
  c.data.all_windows = True
  c.model.dropout = 0.2
  c.train.batch_size = 64
  c.train.num_epochs = 200
  c.train.patience = 10
  c.train.log_every = 50
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.eval.batch_size = 256
  return c
