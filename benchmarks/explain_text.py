"""Generated explanations on Amazon Musical Instruments reviews, held out by time.

  python benchmarks/explain_text.py --rec_workdir=workdirs/musical_instruments [--epochs=10]
  python benchmarks/explain_text.py --rec_workdir=W --epochs=30 --context_loss=1  # PETER's context loss
  python benchmarks/explain_text.py --quick

The recommender (``configs/musical_instruments.py``, trained first when no --rec_workdir is given)
attributes every review's item to the user's earlier items; the generator is conditioned on user,
item, the item's feature words from past reviews and the top attributed history items, and trained
on the review sentences of the first 80% of time; the last 10% is the test set. Prints one JSON line:
BLEU-1/4, ROUGE-1/2/L, USR, FMR (x 100) for greedy and beam decoding, and for the grounded template.
Published PETER on Amazon reviews (no features): BLEU-4 about 1.2, ROUGE-L F about 11-13.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from common import load_config, make_quick


def _attribution_inputs(rec, examples, history_len: int, steps: int):
  """(history [n, H], weights [n, H]): each example's top attributed history items, most first."""
  from llm4rec_jax.explain import attribution, faithfulness  # pylint: disable=import-outside-toplevel
  max_len = rec.spec.cfg.max_len
  hist = np.zeros((len(examples), history_len), np.int32)
  weights = np.zeros((len(examples), history_len), np.float32)
  idx = [n for n, e in enumerate(examples) if len(e.history)]
  if not idx:
    return hist, weights
  inputs = np.stack([faithfulness.delete_positions(examples[n].history, [], max_len) for n in idx])
  items = np.asarray([examples[n].item for n in idx])
  a = attribution.attribute_batch(rec.spec.graphdef, rec.params, inputs, items, rec.content,
                                  steps=steps, batch_size=256)
  for row, n in enumerate(idx):
    h = examples[n].history[-max_len:]
    att = a.history[row, max_len - len(h):]
    order = np.argsort(-att, kind='stable')[:history_len]
    hist[n, :len(order)] = h[order]
    weights[n, :len(order)] = att[order] / max(np.abs(att).sum(), 1e-6)
  return hist, weights


def main() -> dict:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--rec_workdir', default=None, help='trained configs/musical_instruments.py')
  p.add_argument('--save', default=None, help='save the generator here (e.g. REC_WORKDIR/explainer)')
  p.add_argument('--load', default=None, help='evaluate a generator saved by --save (no training)')
  p.add_argument('--quick', action='store_true')
  p.add_argument('--epochs', type=int, default=10)
  p.add_argument('--context_loss', type=float, default=0.0,
                 help="weight of PETER's bag-of-words context prediction (0 = off)")
  p.add_argument('--label_smoothing', type=float, default=0.0)
  p.add_argument('--beam_size', type=int, default=4)
  p.add_argument('--ig_steps', type=int, default=16)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.model import text_encoder  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.data import paths, registry  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.explain import generator as gen  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.explain import reviews, templates, text_metrics  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.serving import Recommender  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  rec_workdir = pathlib.Path(args.rec_workdir) if args.rec_workdir else None
  if args.quick or rec_workdir is None:
    config = load_config('musical_instruments')
    if args.quick:
      make_quick(config)
      args.epochs, args.ig_steps = 1, 2
    rec_workdir = rec_workdir or pathlib.Path(tempfile.mkdtemp())
    trainer.train_and_evaluate(config, rec_workdir)
  rec = Recommender(rec_workdir)
  ds = registry.load(rec.config.data)
  if list(map(str, ds.items.raw_ids)) != rec.raw_ids:
    raise SystemExit(f'{rec_workdir} was not trained on {ds.name}')
  texts = reviews.read_review_text(
      paths.resolve('amazon/musical-instruments/reviews_Musical_Instruments_5.json.gz'))
  data, vocab = reviews.build_examples(ds, texts, valid_fraction=rec.config.data.valid_fraction,
                                       test_fraction=rec.config.data.test_fraction)
  if args.quick:
    data = {k: v[:256] if k == 'train' else v[:64] for k, v in data.items()}
  item_feats = reviews.item_features(data['train'], ds.num_items, vocab)
  tokenizer = text_encoder.load_tokenizer(text_encoder.default_model_dir())
  if args.load:
    loaded, codec, _ = gen.load(args.load, tokenizer)
    cfg = loaded.cfg
  else:
    codec = gen.TextCodec.fit(tokenizer, [e.text for e in data['train']] + vocab)
    cfg = gen.GeneratorConfig(vocab_size=len(codec.vocab_ids), num_users=ds.num_users,
                              num_items=ds.num_items, dropout=0.2,
                              context_loss=args.context_loss,
                              label_smoothing=args.label_smoothing)
  feat_ids = {w: i for w, i in zip(vocab, codec.word_ids(vocab))}
  prep_s = time.perf_counter() - t0

  def arrays(examples):
    hist, weights = _attribution_inputs(rec, examples, cfg.history_len, args.ig_steps)
    feats = np.zeros((len(examples), cfg.num_features), np.int32)
    for n, e in enumerate(examples):
      ids = [feat_ids[w] for w in item_feats[e.item]][:cfg.num_features]
      feats[n, :len(ids)] = ids
    cond = {'user': np.asarray([e.user for e in examples], np.int32),
            'item': np.asarray([e.item for e in examples], np.int32),
            'features': feats, 'history': hist, 'weights': weights}
    text_in, text_out = gen.text_batch(codec.encode([e.text for e in examples], cfg.max_text_len))
    return {'cond': cond, 'text_in': text_in, 'text_out': text_out}

  t = time.perf_counter()
  test = arrays(data['test'])
  train, valid = (None, None) if args.load else (arrays(data['train']), arrays(data['valid']))
  attribution_s = time.perf_counter() - t

  def take(a, idx):
    return jax.tree.map(lambda x: jnp.asarray(x[idx]), a)

  model = loaded if args.load else gen.ExplanationDecoder(cfg, rngs=nnx.Rngs(args.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  batch_size = 128
  steps_per_epoch = max(len(data['train']) // batch_size, 1)
  total = steps_per_epoch * args.epochs
  warmup = min(50, max(total // 10, 1))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(total, warmup + 1), 2e-4)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  opt_state = tx.init(params)
  step_fn = gen.make_train_step(graphdef, tx)
  eval_loss = gen._eval_loss_fn(graphdef)  # pylint: disable=protected-access
  rng = np.random.default_rng(args.seed)
  best, best_loss, history = None, float('inf'), []
  t = time.perf_counter()
  step = 0
  if args.load:
    best, args.epochs = params, 0
  for epoch in range(args.epochs):
    perm = rng.permutation(len(data['train']))
    for s in range(steps_per_epoch):
      params, opt_state, loss = step_fn(params, opt_state,
                                        take(train, perm[s * batch_size:(s + 1) * batch_size]),
                                        jax.random.key(step))
      step += 1
    n_valid = len(data['valid'])
    vl = np.mean([float(eval_loss(params, take(valid, np.arange(i, min(i + 256, n_valid)))))
                  for i in range(0, n_valid, 256)])
    history.append(round(float(vl), 4))
    if vl < best_loss:
      best_loss, best = vl, jax.tree.map(np.asarray, params)
  train_s = time.perf_counter() - t

  refs = [e.text for e in data['test']]
  feats = [e.features for e in data['test']]
  result = {'benchmark': 'explain_text', 'dataset': ds.name, 'quick': args.quick,
            'split': 'global time: train < 80%, valid 80-90%, test >= 90% of review times',
            'num_train': len(data['train']), 'num_valid': len(data['valid']),
            'num_test': len(refs), 'feature_vocab': len(vocab), 'text_vocab': cfg.vocab_size,
            'epochs': args.epochs, 'valid_loss': history,
            'best_valid_loss': round(best_loss, 4) if history else None,
            'recommender_checkpoint_step': rec.step, 'ig_steps': args.ig_steps,
            'context_loss': cfg.context_loss, 'label_smoothing': cfg.label_smoothing,
            'device': str(jax.devices()[0])}
  t = time.perf_counter()
  for name, beam in (('greedy', 1), (f'beam{args.beam_size}', args.beam_size)):
    decode = gen.make_decoder(graphdef, max_len=cfg.max_text_len, beam_size=beam)
    out = []
    for i in range(0, len(refs), 256):
      idx = np.arange(i, min(i + 256, len(refs)))
      out.append(np.asarray(decode(best, take(test['cond'], idx))))
    hyps = codec.decode(np.concatenate(out))
    m = text_metrics.text_metrics(refs, hyps, feats)
    result[name] = {k: round(100 * v, 2) for k, v in m.items()}
    result[name]['examples'] = [{'reference': r, 'generated': h} for r, h in
                                zip(refs[:3], hyps[:3])]
  decode_s = time.perf_counter() - t
  raw = rec.raw_ids
  tmpl = []
  for n, e in enumerate(data['test']):
    liked = [raw[i] for i in test['cond']['history'][n][:2] if i]
    tmpl.append(templates.template_explanation(raw[e.item], liked,
                                               item_features=item_feats[e.item]))
  m = text_metrics.text_metrics(refs, tmpl, feats)
  result['template'] = {k: round(100 * v, 2) for k, v in m.items()}
  result['template']['example'] = tmpl[0]
  if args.save:
    gen.save(args.save, cfg, best, codec, {'feature_vocab': vocab,
                                           'item_features': item_feats})
  result.update(prep_s=round(prep_s, 1), attribution_s=round(attribution_s, 1),
                train_s=round(train_s, 1), decode_s=round(decode_s, 1),
                wall_s=round(time.perf_counter() - t0, 1),
                command='python ' + ' '.join(['benchmarks/explain_text.py', *sys.argv[1:]]))
  return result


if __name__ == '__main__':
  print(json.dumps(main()))
