"""The training input pipeline alone: sequences/s the host produces, beside what a step consumes.

  python benchmarks/input_pipeline.py [--config beauty] [--batches 400] [--set KEY=VALUE ...]
      [--consumption FILE]   # a training result JSON: its train_examples_per_s is printed beside

Builds the experiment as ``trainer.train_and_evaluate`` does, takes the trainer's own iterator
(``trainer._train_input`` -> ``to_iter_dataset()``, Grain's default read threads and prefetch) and
times ``--batches`` batches after 20 warm-up batches. Nothing touches an accelerator, so the figure is
the host's ceiling: a step that consumes faster than this is input-bound.
"""

import json
import pathlib
import tempfile
import time

from common import apply_overrides, load_config, parser

if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--config', default='beauty', help='configs/<name>.py')
  p.add_argument('--batches', type=int, default=400)
  p.add_argument('--consumption', default=None,
                 help="a training result JSON whose 'train_examples_per_s' is the step's rate")
  args = p.parse_args()
  import provenance  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  record = provenance.start()
  config = load_config(args.config)
  config.seed = args.seed
  apply_overrides(config, args.set)
  if args.quick:
    args.batches = 10
  with tempfile.TemporaryDirectory() as workdir:
    exp = experiment.build_experiment(config, pathlib.Path(workdir))
    train_ds, steps_per_epoch, _ = trainer._train_input(exp)  # pylint: disable=protected-access
    it = iter(train_ds.to_iter_dataset())
    for _ in range(20):
      next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
      batch = next(it)
    seconds = time.perf_counter() - t0
  rows = config.train.batch_size * args.batches
  line = {'benchmark': 'input_pipeline', 'dataset': config.data.name,
          'batch_size': config.train.batch_size, 'max_len': config.data.max_len,
          'batches': args.batches, 'steps_per_epoch': steps_per_epoch,
          'sequences_per_s': round(rows / seconds, 1),
          'tokens_per_s': round(rows * config.data.max_len / seconds, 1),
          'batch_ms': round(1000 * seconds / args.batches, 3),
          'batch_fields': sorted(batch)}
  if args.consumption:
    used = json.loads(pathlib.Path(args.consumption).read_text().splitlines()[-1])
    line['step_examples_per_s'] = used['train_examples_per_s']
    line['step_source'] = args.consumption
    line['input_bound'] = line['sequences_per_s'] < used['train_examples_per_s'] * 1.2
  line['seeds'] = [args.seed]
  line['command'] = record['command']
  line['provenance'] = provenance.finish(record)
  print(json.dumps(line))
