"""Amazon Beauty (S3-Rec preprocessing), leave-one-out, full ranking, seen items excluded.

SASRec-sized model (hidden 64, 2 blocks, 1 head, sequences of 50) with full-softmax cross-entropy.

  llm4rec train --config=configs/beauty.py --workdir=workdirs/beauty
"""

from llm4rec_jax import config_base


def get_config(arg: str | None = None):
  args = config_base.parse_arg(arg, default_preset='small')
  c = config_base.apply_preset(config_base.base_config(), args['preset'])
  c.data.name = 'beauty'
  c.data.split = 'leave_one_out'
  c.data.max_len = 50
  c.model.dropout = 0.3
  c.train.batch_size = 128
  c.train.num_epochs = 40
  c.train.patience = 5
  c.train.log_every = 100
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.eval.batch_size = 512
  return c
