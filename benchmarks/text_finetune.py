"""Frozen vs fine-tuned text encoder (config.text_finetune) for a fixed, small number of steps.

Amazon 2018 Scientific, the 1,585-item ``scientific-features`` subset (leave-one-out, full ranking,
seen items excluded), items = id + the all-MiniLM-L6-v2 embedding of their text (title, category
path, brand; 32 tokens) fused (``item_repr=both``, cross-attention in both blocks). Both variants
train the same number of steps with the same data order; ``finetune`` also trains the top encoder
layers (the embeddings and the lowest ``--freeze_layers`` stay frozen) on up to
``--items_per_step`` re-encoded batch items per step. Test metrics are taken at the last step (no
early stopping: the runs are far too short to converge). Step time is the steady-state time of the
second half of the run (after compilation, evaluation excluded). Prints one JSON line.

  python benchmarks/text_finetune.py [--steps 44] [--quick]
"""

import json
import pathlib
import shutil
import string
import sys
import tempfile
import time

from common import load_config, make_quick, parser, train_and_report


def variant_config(variant: str, args, model_dir: str | None):
  config = load_config('scientific', 'multimodal')
  config.data.name = 'scientific-features'
  config.content.update(dict(text='text', categorical='', dense='', text_max_length=32))
  config.train.update(dict(max_steps=args.steps, eval_every=args.steps // 2, patience=0,
                           log_every=max(1, args.steps // 4), keep_checkpoints=1))
  config.optimizer.warmup_steps = max(1, args.steps // 10)  # the default 100 exceeds the run
  if variant == 'finetune':
    config.text_finetune.update(dict(enabled=True, max_items_per_step=args.items_per_step,
                                     learning_rate=args.encoder_lr,
                                     freeze_layers=args.freeze_layers))
  if args.quick:
    make_quick(config)
    config.data.name = 'synthetic'
    config.data.synthetic.update(dict(num_users=240, num_items=120, mean_seq_len=12.0,
                                      max_seq_len=60))
    config.data.max_len = 16
    config.train.batch_size = 32
    config.content.update(dict(text='title,description', text_model=model_dir,
                               cache_dir=str(pathlib.Path(model_dir).parent / 'cache')))
    config.train.update(dict(max_steps=args.steps, eval_every=args.steps // 2, log_every=2))
    config.text_finetune.freeze_layers = 0
  return config


def tiny_random_model(directory: pathlib.Path) -> str:
  """--quick: a random 2-layer BERT with a character vocabulary (no pretrained weights needed)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.model import text_encoder  # pylint: disable=import-outside-toplevel
  chars = string.ascii_lowercase + string.digits
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + list(chars) + ['##' + c for c in chars]
  cfg = text_encoder.BertConfig(vocab_size=len(vocab) + 5, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=64, initializer_range=0.2)
  text_encoder.save_pretrained(text_encoder.BertEncoder(cfg, rngs=nnx.Rngs(0)), directory)
  (directory / 'vocab.txt').write_text('\n'.join(vocab + list(';,.&-')) + '\n')
  (directory / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'BertTokenizer', 'do_lower_case': True}))
  return str(directory)


def steady_step_ms(workdir: pathlib.Path) -> float:
  """ms per training step between the two evaluations (compilation and evaluation excluded)."""
  from llm4rec_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  events = workdir_lib.read_jsonl(workdir_lib.path(workdir, workdir_lib.EVENTS))
  first, last = [e for e in events if e['event'] == 'eval'][-2:]
  steps = last['step'] - first['step']
  return 1000 * (last['elapsed_s'] - last['eval_s'] - first['elapsed_s']) / steps


def main():
  p = parser(__doc__)
  p.add_argument('--steps', type=int, default=44, help='training steps per variant (even)')
  p.add_argument('--items_per_step', type=int, default=64)
  p.add_argument('--encoder_lr', type=float, default=1e-4)
  p.add_argument('--freeze_layers', type=int, default=4)
  p.add_argument('--variants', default='frozen,finetune')
  args = p.parse_args()
  if args.quick:
    args.steps = 8
  keep = args.workdir
  root = pathlib.Path(args.workdir or tempfile.mkdtemp())
  model_dir = tiny_random_model(root / 'tiny-bert') if args.quick else None
  out = {'benchmark': 'text_finetune', 'dataset': 'synthetic' if args.quick else
         'scientific-features', 'protocol': 'leave_one_out', 'full_ranking': True,
         'exclude_seen': True, 'quick': args.quick, 'steps': args.steps,
         'items_per_step': args.items_per_step, 'encoder_lr': args.encoder_lr,
         'freeze_layers': args.freeze_layers}
  t0 = time.perf_counter()
  for variant in args.variants.split(','):
    config = variant_config(variant, args, model_dir)
    args.workdir = str(root / variant)
    line = train_and_report(config, args, benchmark='text_finetune',
                            extra=lambda w, _: {'step_ms': round(steady_step_ms(w), 1)})
    out[variant] = {k: line[k] for k in ('test', 'valid_ndcg@10', 'step_ms', 'wall_s',
                                         'num_params')}
  out['wall_s'] = round(time.perf_counter() - t0, 1)
  if not keep:
    shutil.rmtree(root, ignore_errors=True)
  out['command'] = ' '.join(['python', 'benchmarks/text_finetune.py', *sys.argv[1:]])
  print(json.dumps(out))


if __name__ == '__main__':
  main()
