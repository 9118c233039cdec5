"""Ahead-of-time compile check: does a preset's train step fit a TPU slice? No TPU needed.

Compiles the real jitted train step (``trainer.make_train_step``) of ``--preset`` for each
``--topology`` from this machine and reports the compiler's per-device memory (parameters and
optimizer state, batch, temporaries, code) against the chip's HBM. TPU topologies are described by
libtpu without hardware (``TPU_LIBRARY_PATH`` or ``--libtpu``, see ``llm4rec_jax.aot``); ``cpu:N``
compiles for this machine's devices.

  python benchmarks/aot_memory.py [--quick] [--topology v5e-256,v5p-128] [--preset 1b]
      [--num_items 100000] [--batch_size 256] [--max_len 50] [--mesh '(1,-1,1)'] [--libtpu PATH]
"""

import ast
import json
import sys
import time

from common import load_config, parser

if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--topology', default='v5e-256,v5p-128')
  p.add_argument('--preset', default='1b')
  p.add_argument('--num_items', type=int, default=100_000)
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--max_len', type=int, default=50)
  p.add_argument('--mesh', default='(1,-1,1)', help="config.mesh.shape; '(1,-1,1)' = FSDP")
  p.add_argument('--libtpu', default=None, help='path to libtpu.so (default $TPU_LIBRARY_PATH)')
  args = p.parse_args()
  if args.quick:  # this machine's devices, the tiny preset: seconds
    args.topology, args.preset, args.num_items, args.batch_size = 'cpu', 'tiny', 1000, 16
  from llm4rec_jax import aot  # pylint: disable=import-outside-toplevel
  from common import apply_overrides  # pylint: disable=import-outside-toplevel
  runs = {}
  for topology in args.topology.split(','):
    config = load_config('synthetic', args.preset)
    config.train.batch_size = args.batch_size
    config.data.max_len = args.max_len
    config.mesh.shape = tuple(ast.literal_eval(args.mesh))
    apply_overrides(config, args.set)
    t0 = time.perf_counter()
    devices = aot.topology_devices(topology, args.libtpu)
    report = aot.compile_train_step(config, devices, num_items=args.num_items)
    runs[topology] = {**report, 'compile_s': round(time.perf_counter() - t0, 1)}
  print(json.dumps({'benchmark': 'aot_memory', 'preset': args.preset, 'quick': args.quick,
                    'num_items': args.num_items, 'runs': runs,
                    'command': ' '.join(['python benchmarks/aot_memory.py', *sys.argv[1:]])}))
