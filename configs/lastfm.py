"""LastFM (S3-Rec preprocessing), leave-one-out, full ranking, seen items excluded by default.

The default is the most accurate system measured on LastFM (claim H, docs/val_test_gap.md):
``configs/beauty.py``'s ids-only ``filter_prior`` (causal filter beside attention, hidden 128,
dropout 0.5, wide transition prior counting the validation interactions at test, one-epoch refit)
trained as claim H trained it on LastFM's 1,090 users: learning rate 2e-3, up to 200 epochs,
patience 10. Item attributes (``--config.content.categorical=all --config.model.item_repr=both``)
are not in the default: +0.0017 +- 0.0012 test NDCG@10 over 6 seeds, undecided (claims M and P,
docs/multimodal.md). Hidden 64 (the published LastFM models' width) changed nothing measurable:
-0.0006 +- 0.0007 test NDCG@10 over seeds 3-5 (claim S, docs/val_test_gap.md).

  llm4rec train --config=configs/lastfm.py --workdir=workdirs/lastfm
"""

import pathlib

from llm4rec_jax import config_base
from llm4rec_jax.errors import ConfigError

# What LastFM's runs changed from Beauty's filter_prior (benchmarks/leaderboard.py trains these).
LASTFM_OVERRIDES = {'optimizer.learning_rate': 2e-3, 'train.num_epochs': 200, 'train.patience': 10}


def get_config(arg: str | None = None):
  if arg not in (None, '', 'filter_prior'):
    raise ConfigError('variant', f"configs/lastfm.py has one variant, 'filter_prior' (the "
                      f"default), not {arg!r}; override fields with --config.KEY=VALUE")
  c = config_base.from_file(pathlib.Path(__file__).with_name('beauty.py'), 'filter_prior')
  c.data.name = 'lastfm'
  for key, value in LASTFM_OVERRIDES.items():
    section, field = key.split('.')
    c[section][field] = value
  return c
