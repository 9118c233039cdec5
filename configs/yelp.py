"""Yelp (S3-Rec preprocessing), leave-one-out, full ranking, seen items excluded by default.

Variants (``--config=configs/yelp.py:VARIANT``):
  * ``filter_prior`` (the default, the most accurate measured on Yelp): ``configs/beauty.py``'s
    ``filter_prior`` unchanged on the Yelp file (ids only; causal filter, hidden 128, wide
    transition prior counting the validation interactions at test, one-epoch refit; claim J,
    docs/val_test_gap.md). Yelp's business categories fused into the item representation (as in
    ``configs/beauty.py``'s default ``fused``) cost accuracy here: 0.0225 +- 0.0002 against
    0.0250 +- 0.0001 over 3 seeds (claim O, docs/multimodal.md);
  * ``sasrec``: a SASRec-sized decoder (hidden 64, 2 blocks, dropout 0.3, 30 epochs, patience 4),
    the runs of ``benchmarks/yelp.py``'s result files. A size preset (``:tiny``, ``:base``, ...)
    sizes this decoder.

A workdir trained with this file's earlier default (``sasrec``, before 2026-12-07) resumes and
evaluates with ``:sasrec``.

  llm4rec train --config=configs/yelp.py --workdir=workdirs/yelp
  llm4rec evaluate --config=configs/yelp.py --workdir=workdirs/yelp --config.eval.exclude_seen=false
"""

import pathlib

from llm4rec_jax import config_base

VARIANTS = ('sasrec', 'filter_prior')


def get_config(arg: str | None = None):
  words = [w for w in (arg or '').split(',') if w]
  rest = ','.join(w for w in words if w not in VARIANTS)
  variant = next((w for w in words if w in VARIANTS), 'sasrec' if rest else 'filter_prior')
  if variant == 'filter_prior':
    c = config_base.from_file(pathlib.Path(__file__).with_name('beauty.py'), 'filter_prior')
    c.data.name = 'yelp'
    return c
  c = config_base.apply_preset(config_base.base_config(),
                               config_base.parse_arg(rest, default_preset='small')['preset'])
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
  c.variant = variant
  return c
