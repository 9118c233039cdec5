"""Training-step throughput on this machine: examples/s and tokens/s of the jitted, sharded step.

Times the real train step (full-softmax loss over the Beauty catalog, batch 128, 50 positions) for
each preset after compilation, excluding data loading and evaluation. Variants: ``id`` (id-only
items) and ``fusion`` (Beauty attributes fused into the item representation, ``item_repr=both``,
plus cross-attention to the history's content in every block): the cost of fusion.

  python benchmarks/throughput.py [--quick] [--presets tiny,small] [--variants id,fusion]
"""

import json
import sys
import time

import jax
import numpy as np

from common import load_config, parser

if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--presets', default='tiny,small')
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--variants', default='id,fusion')
  args = p.parse_args()
  from llm4rec_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import state as state_lib, trainer  # pylint: disable=import-outside-toplevel
  steps = 3 if args.quick else args.steps
  results = {}
  runs = [(p_, v) for p_ in args.presets.split(',') for v in args.variants.split(',')]
  for preset, variant in runs:
    config = load_config('beauty', preset)
    if variant == 'fusion':
      config.content.categorical = 'all'
      config.model.item_repr = 'both'
      config.model.cross_attention_every = 1
    exp = trainer.build_experiment(config, '/tmp/unused')
    windows, users = pipeline.make_windows(exp.split.train, config.data.max_len)
    bs = config.train.batch_size
    tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 1000)
    _, shardings = state_lib.state_shardings(exp.spec, tx)
    state = state_lib.init_train_state(exp.spec, tx, 0, shardings)
    max_targets = trainer.auto_max_targets(windows, bs)
    step = trainer.make_train_step(exp, tx, schedule, shardings, max_targets)
    ds = pipeline.train_dataset(windows, users, global_batch_size=bs, seed=0, num_epochs=None)
    it = iter(ds)
    batches = [exp.put(next(it)) for _ in range(steps + 2)]
    t0 = time.perf_counter()
    state, m = step(state, batches[0], exp.content)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    state, m = step(state, batches[1], exp.content)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    targets = 0.0
    for b in batches[2:]:
      state, m = step(state, b, exp.content)
      targets += float(m['num_targets'])
    jax.block_until_ready(state['params'])
    dt = (time.perf_counter() - t0) / steps
    results[f'{preset}/{variant}'] = {'step_ms': round(dt * 1e3, 1), 'examples_per_s': round(bs / dt, 1),
                       'tokens_per_s': round(bs * config.data.max_len / dt, 1),
                       'targets_per_s': round(targets / steps / dt, 1),
                       'compile_s': round(compile_s, 2), 'num_params': exp.spec.num_params()}
  print(json.dumps({'benchmark': 'throughput', 'dataset': 'beauty', 'backend': jax.default_backend(),
                    'devices': jax.device_count(), 'batch_size': 128, 'max_len': 50,
                    'quick': args.quick, 'runs': results,
                    'command': ' '.join(['python benchmarks/throughput.py', *sys.argv[1:]])}))
