"""Ahead-of-time compile check: does a preset's train step fit a TPU slice? No TPU needed.

Compiles the real jitted train step (``trainer.make_train_step``) of ``--preset`` for each
``--topology`` from this machine and reports the compiler's per-device memory (parameters and
optimizer state, batch, temporaries, code) against the chip's HBM. TPU topologies are described by
libtpu without hardware (``TPU_LIBRARY_PATH`` or ``--libtpu``, see ``llm4rec_jax.aot``); ``cpu:N``
compiles for this machine's devices.

``--lora 0,16`` reports each LoRA rank (0 = full training) on the projections of
``--lora_targets``. ``--state_only`` compiles nothing: it reports the train state's exact
per-device bytes (parameters + optimizer state) from the shardings training would use, on
abstract meshes of ``aot.STATE_TOPOLOGIES`` (GPU hosts included), when libtpu or the hours of
CPU compile time are not at hand; activations and temporaries are then not counted.

  python benchmarks/aot_memory.py [--quick] [--topology v5e-256,v5p-128] [--preset 1b]
      [--num_items 100000] [--batch_size 256] [--max_len 50] [--mesh '(1,-1,1)'] [--libtpu PATH]
      [--lora 0,16] [--lora_targets q,k,v,o,gate,up,down] [--state_only] [--out FILE]
"""

import ast
import json
import pathlib
import sys
import time

import provenance
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
  p.add_argument('--lora', default='0', help='comma list of model.lora_rank values (0 = off)')
  p.add_argument('--lora_targets', default='q,k,v,o,gate,up,down')
  p.add_argument('--state_only', action='store_true',
                 help='train-state bytes from the shardings on abstract meshes; no compile')
  p.add_argument('--out', default='', help='also write the JSON (with provenance) to this file')
  args = p.parse_args()
  if args.quick:  # this machine's devices, the tiny preset: seconds
    args.topology, args.preset, args.num_items, args.batch_size = 'cpu', 'tiny', 1000, 16
  from llm4rec_jax import aot  # pylint: disable=import-outside-toplevel
  from common import apply_overrides  # pylint: disable=import-outside-toplevel
  record = provenance.start()
  runs = {}
  for rank in [int(r) for r in args.lora.split(',')]:
    for topology in args.topology.split(','):
      config = load_config('synthetic', args.preset)
      config.train.batch_size = args.batch_size
      config.data.max_len = args.max_len
      config.mesh.shape = tuple(ast.literal_eval(args.mesh))
      config.model.lora_rank = rank
      config.model.lora_targets = args.lora_targets
      apply_overrides(config, args.set)
      t0 = time.perf_counter()
      if args.state_only:
        report = aot.state_memory(config, topology, num_items=args.num_items)
      else:
        devices = aot.topology_devices(topology, args.libtpu)
        report = aot.compile_train_step(config, devices, num_items=args.num_items)
      key = topology if args.lora == '0' else f'{topology}/lora{rank}'
      runs[key] = {**report, 'compile_s': round(time.perf_counter() - t0, 1)}
  out = {'benchmark': 'aot_memory', 'preset': args.preset, 'quick': args.quick,
         'num_items': args.num_items, 'state_only': args.state_only,
         'lora_targets': args.lora_targets if args.lora != '0' else '', 'runs': runs,
         'command': ' '.join(['python benchmarks/aot_memory.py', *sys.argv[1:]]),
         'seeds': [0], 'provenance': {**provenance.finish(record), 'seeds': [0]}}
  print(json.dumps(out))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + '\n')
