"""Amazon 2014 Musical Instruments 5-core: the recommender behind the explanation benchmark.

Global temporal split (the last 10% of reviews by time are the test period, the 10% before them
validation), the split the explanation generator (llm4rec_jax.explain.generator) is measured on.

  llm4rec train --config=configs/musical_instruments.py --workdir=workdirs/musical_instruments
"""

from llm4rec_jax import config_base


def get_config(arg: str | None = None):
  args = config_base.parse_arg(arg, default_preset='small')
  c = config_base.apply_preset(config_base.base_config(), args['preset'])
  c.data.name = 'musical-instruments'
  c.data.split = 'temporal'
  c.data.valid_fraction = 0.1
  c.data.test_fraction = 0.1
  c.data.max_len = 20
  c.data.all_windows = True
  c.model.dropout = 0.3
  c.train.batch_size = 64
  c.train.num_epochs = 30
  c.train.patience = 5
  c.train.log_every = 50
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.eval.batch_size = 256
  return c
