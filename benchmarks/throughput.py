"""Training-step throughput and model FLOPs utilisation (MFU) of the jitted, sharded step.

Times the real train step (full-softmax loss over the catalog) for each preset after compilation,
excluding data loading and evaluation, and reports examples/s, tokens/s, the step's model FLOPs,
the FLOPs XLA counts in the compiled step, and MFU against the accelerator's datasheet peak (dense
bf16, per chip, from ``DATASHEET_PEAK_TFLOPS`` by device kind; none for a CPU or an unlisted card).
``--peak`` also measures a peak on the same device (a chain of large matrix products in the preset's
compute dtype) and reports MFU against it as the extra field ``mfu_vs_measured_peak``.

Datasets: ``beauty`` (the real Beauty windows, batch 128 x 50 positions) or ``random``: a catalog of
``--num_items`` items (the synthetic generator's, so the model, content and loss are the real ones)
and windows of Zipf-distributed random item ids, full length, so every position is a target. It
needs no files, which is what runs on an accelerator machine.

Variants: ``id`` (id-only items) and ``fusion`` (Beauty attributes fused into the item
representation, ``item_repr=both``, plus cross-attention to the history's content in every block).
``--attention`` repeats each run per attention kernel (``auto`` = cuDNN on GPUs in bf16, ``xla``).

  python benchmarks/throughput.py [--quick] [--presets tiny,small] [--variants id,fusion]
      [--steps_per_call 1,8] [--replicas 1,3]
  python benchmarks/throughput.py --dataset=random --presets=base,1b --batch_sizes=128,64 \\
      --max_len=200 --num_items=32768 --attention=auto,xla --peak     # on a GPU

``--replicas R``: R seeds' train states stacked and advanced by one vmapped step
(``llm4rec_jax.train.replicas``, what ``llm4rec train --seeds`` runs), each with its own batch; its
step_ms is one call for all R, its examples/s, tokens/s and TFLOP/s count all R, and
``speedup_vs_separate`` (when ``--replicas`` also lists 1) is R x the one-replica step_ms over it.

Model FLOPs per step (the usual accounting, 3x forward for forward + backward): 6 x tokens x the
blocks' matmul parameters, + 12 x layers x batch x seq^2 x heads x head_dim for attention scores and
values (the full square, as PaLM counts it; a causal kernel does about half), + 6 x targets x d_model
x vocab for the output head (only target positions are scored). Embedding lookups, norms and the
softmax are not counted.
"""

import itertools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import provenance
from common import apply_overrides, load_config, parser

# Dense (no sparsity) bf16 tensor peak per chip in TFLOP/s, from the vendors' datasheets, keyed by
# the device kind JAX reports (lower-cased substrings, first match wins, so more specific names come
# first; None = known but not listed). A card not listed (e.g. an H100 PCIe) gets no datasheet MFU
# rather than a wrong one.
DATASHEET_PEAK_TFLOPS = (
    (('h100', 'hbm3'), 989.0, 'NVIDIA H100 SXM'),
    (('h100', 'sxm'), 989.0, 'NVIDIA H100 SXM'),
    (('h200',), 989.0, 'NVIDIA H200'),
    (('a100',), 312.0, 'NVIDIA A100'),
    (('tpu v5 lite',), 197.0, 'TPU v5e'),
    (('tpu v5e',), 197.0, 'TPU v5e'),
    (('tpu v5p',), 459.0, 'TPU v5p'),
    (('tpu v5',), 459.0, 'TPU v5p'),  # v5p reports itself as "TPU v5"
    (('tpu v4 lite',), None, None),  # v4i: not listed
    (('tpu v4',), 275.0, 'TPU v4'),
)


def datasheet_peak(device_kind: str) -> tuple[float, str] | tuple[None, None]:
  """(dense bf16 TFLOP/s per chip, the part it was read for), or (None, None) when not listed."""
  kind = device_kind.lower()
  for needles, tflops, part in DATASHEET_PEAK_TFLOPS:
    if all(n in kind for n in needles):
      return tflops, part
  return None, None


def model_flops_per_step(cfg, batch: int, seq: int, targets: float) -> float:
  """Training FLOPs of one step of the decoder described by ``cfg`` (a ``DecoderConfig``)."""
  d, heads, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  attn_params = d * heads * hd * 2 + d * kv * hd * 2  # q, o and k, v projections
  mlp_params = 3 * d * cfg.ffn_dim  # SwiGLU gate, up, down
  tokens = batch * seq
  dense = 6.0 * tokens * cfg.num_layers * (attn_params + mlp_params)
  attention = 12.0 * cfg.num_layers * batch * seq * seq * heads * hd
  head = 6.0 * targets * d * cfg.vocab_size
  return dense + attention + head


def measure_peak_tflops(dtype: str, n: int = 8192, reps: int = 10) -> float:
  """Sustained TFLOP/s of an n x n x n matrix product in ``dtype`` on the default device."""
  dt = jnp.dtype(dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)

  @jax.jit
  def chain(a, b):
    def body(_, x):  # each product feeds the next, so none can be skipped or cached
      return (x @ b) * jnp.asarray(1e-2, dt)
    return jax.lax.fori_loop(0, reps, body, a)

  jax.block_until_ready(chain(a, b))
  t0 = time.perf_counter()
  jax.block_until_ready(chain(a, b))
  return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def random_windows(num_items: int, num_windows: int, max_len: int, seed: int) -> np.ndarray:
  """[num_windows, max_len + 1] item ids drawn from a Zipf(1) popularity over 1..num_items."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, num_items + 1)
  return (rng.choice(num_items, size=(num_windows, max_len + 1), p=p / p.sum()) + 1).astype(np.int32)


def xla_flops(compiled) -> float | None:
  """FLOPs XLA's cost model counts in the compiled step (None where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def peak_memory_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return round(peak / 2 ** 30, 2) if peak else None


def run_one(args, preset: str, variant: str, attention: str, batch_size: int,
            per_call: int = 1, replicas: int = 1) -> dict:
  from llm4rec_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import state as state_lib, trainer  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import experiment  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import replicas as replicas_lib  # pylint: disable=import-outside-toplevel
  if replicas > 1 and per_call > 1:
    raise ValueError('--replicas above 1 runs one step per call: give --steps_per_call=1')
  steps = 3 if args.quick else args.steps
  steps = -(-steps // per_call) * per_call  # whole calls of per_call steps each
  if args.dataset == 'random':
    config = load_config('synthetic', preset)
    # A small generated dataset gives the catalog; the timed windows are drawn below.
    config.data.synthetic.num_items = args.num_items
    config.data.synthetic.num_users = 64
  else:
    config = load_config(args.dataset, preset)
  config.data.max_len = args.max_len or config.data.max_len
  config.train.batch_size = batch_size or config.train.batch_size
  config.model.attention_impl = attention
  if variant == 'fusion':
    config.content.categorical = 'all'
    config.model.item_repr = 'both'
    config.model.cross_attention_every = 1
  apply_overrides(config, args.set)
  exp = experiment.build_experiment(config, '/tmp/unused')
  bs, max_len = config.train.batch_size, config.data.max_len
  if args.dataset == 'random':
    windows = random_windows(exp.dataset.num_items, bs * (steps + 2) * replicas, max_len,
                             args.seed)
    users = np.zeros(len(windows), np.int32)
  else:
    windows, users = pipeline.make_windows(exp.split.train, max_len)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, 1000,
                                              lora=exp.spec.cfg.lora_rank > 0)
  _, shardings = state_lib.state_shardings(exp.spec, tx)
  max_targets = experiment.auto_max_targets(windows, bs)
  ds = pipeline.train_dataset(windows, users, global_batch_size=bs, seed=args.seed, num_epochs=None)
  it = iter(ds)
  if replicas > 1:  # seeds 0..R-1 stacked; each call takes R batches, one per replica
    stacked = replicas_lib.stacked_shardings(shardings)
    state = replicas_lib.stack_states(
        [state_lib.init_train_state(exp.spec, tx, r, shardings) for r in range(replicas)], stacked)
    step = replicas_lib.make_replicas_step(exp, tx, schedule, stacked, max_targets)
    # Every replica at the config's learning rate (scale 1): the step's fourth argument.
    step_args = (exp.content, jax.device_put(np.ones(replicas, np.float32), exp.spec.replicated))
  else:
    step_args = (exp.content,)
    state = state_lib.init_train_state(exp.spec, tx, 0, shardings)
    step = trainer.make_train_step(exp, tx, schedule, shardings, max_targets,
                                   steps_per_call=per_call)
  if replicas > 1:
    batches = []
    for _ in range(steps + 2):
      host = [next(it) for _ in range(replicas)]
      batches.append(exp.put({k: np.stack([b[k] for b in host]) for k in host[0]}, stacked=True))
  elif per_call > 1:  # each call takes per_call stacked batches (train.steps_per_call)
    host = [next(it) for _ in range(steps + 2 * per_call)]
    batches = [exp.put({k: np.stack([b[k] for b in host[i:i + per_call]]) for k in host[0]},
                       stacked=True) for i in range(0, len(host), per_call)]
  else:
    batches = [exp.put(next(it)) for _ in range(steps + 2)]
  t0 = time.perf_counter()
  step = step.lower(state, batches[0], *step_args).compile()  # the same executable jit would run
  compile_s = time.perf_counter() - t0
  compiled_flops = xla_flops(step)
  state, m = step(state, batches[0], *step_args)
  jax.block_until_ready(m)
  state, m = step(state, batches[1], *step_args)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  targets = []
  for b in batches[2:]:
    state, m = step(state, b, *step_args)
    targets.append(m['num_targets'])  # kept on device: no per-step host sync
  jax.block_until_ready(state['params'])
  dt = (time.perf_counter() - t0) / steps  # per train step (per_call of them per call)
  # Per replica; with replicas each step advances all of them.
  mean_targets = float(np.mean(jax.device_get(targets)))
  flops = model_flops_per_step(exp.spec.cfg, bs, max_len, mean_targets) * replicas
  out = {'step_ms': round(dt * 1e3, 2), 'examples_per_s': round(replicas * bs / dt, 1),
         'tokens_per_s': round(replicas * bs * max_len / dt, 1),
         'targets_per_s': round(replicas * mean_targets / dt, 1), 'replicas': replicas,
         'compile_s': round(compile_s, 2), 'num_params': exp.spec.num_params(),
         'batch_size': bs, 'max_len': max_len, 'vocab_size': exp.spec.cfg.vocab_size,
         'attention': attention, 'dtype': exp.spec.cfg.dtype, 'steps_per_call': per_call,
         'model_tflops_per_step': round(flops / 1e12, 4),
         'achieved_tflops_per_s': round(flops / dt / 1e12, 2)}
  if compiled_flops:
    out['xla_tflops_per_step'] = round(compiled_flops / 1e12, 4)
  achieved = flops / dt / 1e12  # over all devices
  if args.datasheet_peak_tflops:
    out['mfu_vs_datasheet'] = round(achieved / (args.datasheet_peak_tflops * jax.device_count()), 4)
  if args.peak_tflops:  # measured on one device
    out['mfu_vs_measured_peak'] = round(achieved / (args.peak_tflops * jax.device_count()), 4)
  mem = peak_memory_gb()
  if mem is not None:
    out['peak_memory_gb'] = mem
  return out


if __name__ == '__main__':
  p = parser(__doc__)
  p.add_argument('--dataset', default='beauty', help="'beauty' or 'random' (no files needed)")
  p.add_argument('--presets', default='tiny,small')
  p.add_argument('--batch_sizes', default='', help='one per preset (default: the config\'s)')
  p.add_argument('--max_len', type=int, default=0, help='positions per window (0 = config)')
  p.add_argument('--num_items', type=int, default=32768, help='catalog size for --dataset=random')
  p.add_argument('--steps', type=int, default=30)
  p.add_argument('--variants', default='id,fusion')
  p.add_argument('--attention', default='auto', help="comma list of 'auto', 'xla', 'cudnn'")
  p.add_argument('--peak', action='store_true',
                 help='also measure a peak TFLOP/s (matrix products in the last preset\'s dtype) '
                 'and report mfu_vs_measured_peak beside the datasheet MFU')
  p.add_argument('--steps_per_call', default='1',
                 help='comma list: train steps per jitted call (train.steps_per_call), each timed')
  p.add_argument('--replicas', default='1',
                 help='comma list: seeds trained at once by one vmapped step (llm4rec train '
                 '--seeds), each timed')
  p.add_argument('--keep_going', action='store_true',
                 help='record a failed run under "errors" and go on with the others')
  args = p.parse_args()
  record = provenance.start()
  device = jax.devices()[0]
  args.datasheet_peak_tflops, part = datasheet_peak(device.device_kind)
  presets = args.presets.split(',')
  sizes = [int(s) for s in args.batch_sizes.split(',')] if args.batch_sizes else [0] * len(presets)
  if len(sizes) != len(presets):
    p.error(f'--batch_sizes has {len(sizes)} values for {len(presets)} presets')
  args.peak_tflops = None
  if args.peak:
    from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
    dtype = config_base.PRESETS[presets[-1]].get('dtype', 'float32')
    args.peak_tflops = round(measure_peak_tflops(dtype, n=512 if args.quick else 8192), 1)
    print(json.dumps({'peak_tflops_measured': args.peak_tflops, 'dtype': dtype}), file=sys.stderr,
          flush=True)
  results, errors = {}, {}
  for preset, bs in zip(presets, sizes):
    for variant in args.variants.split(','):
      for attention, per_call, reps in itertools.product(
          args.attention.split(','), [int(k) for k in args.steps_per_call.split(',')],
          [int(r) for r in args.replicas.split(',')]):
        if reps > 1 and per_call > 1:
          continue  # a replicas step is one step per call
        name = (f'{preset}/{variant}' + (f'/{attention}' if ',' in args.attention else '')
                + (f'/per_call{per_call}' if ',' in args.steps_per_call else '')
                + (f'/replicas{reps}' if ',' in args.replicas else ''))
        try:
          results[name] = run_one(args, preset, variant, attention, bs, per_call, reps)
          one = results.get(name.replace(f'/replicas{reps}', '/replicas1'))
          if reps > 1 and one is not None:  # R separate runs' step time over the vmapped one
            results[name]['speedup_vs_separate'] = round(
                reps * one['step_ms'] / results[name]['step_ms'], 2)
        except Exception as e:  # pylint: disable=broad-except
          if not args.keep_going:
            raise
          errors[name] = f'{type(e).__name__}: {str(e)[:300]}'
        print(json.dumps({name: results.get(name, errors.get(name))}), file=sys.stderr, flush=True)
  record['machine'].update(accelerator=device.device_kind, devices=jax.device_count(),
                           datasheet_peak_tflops=args.datasheet_peak_tflops)
  out = {'benchmark': 'throughput', 'dataset': args.dataset, 'backend': jax.default_backend(),
         'device_kind': device.device_kind, 'devices': jax.device_count(), 'quick': args.quick,
         'seed': args.seed, 'datasheet_peak_tflops': args.datasheet_peak_tflops,
         'datasheet_part': part, 'peak_tflops_measured': args.peak_tflops, 'runs': results,
         'command': ' '.join(['python benchmarks/throughput.py', *sys.argv[1:]])}
  if errors:
    out['errors'] = errors
  out['provenance'] = provenance.finish(record)
  print(json.dumps(out))
