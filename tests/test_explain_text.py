"""Text metrics against hand-computed values; the explanation generator's decoding; templates."""

import math

import pytest

from llm4rec_jax.explain import text_metrics as tm

REF = 'The cat is on the mat.'
HYP = 'the cat the cat on the mat'


def test_bleu_hand_computed():
  ref, hyp = tm.words(REF), tm.words(HYP)
  assert ref == ['the', 'cat', 'is', 'on', 'the', 'mat']
  # Unigrams: the x3 (clipped to 2), cat x2 (clipped to 1), on, mat -> 5 of 7; hyp longer: BP = 1.
  assert tm.corpus_bleu([ref], [hyp], 1) == pytest.approx(5 / 7)
  # p1..p4 = 4/5, 3/4, 2/3, 1/2 -> (0.2) ** (1/4).
  assert tm.corpus_bleu([list('abcde')], [list('abcdf')], 4) == pytest.approx(0.2 ** 0.25)
  # A short hypothesis pays the brevity penalty exp(1 - 6/3).
  assert tm.corpus_bleu([ref], [['the', 'cat', 'is']], 1) == pytest.approx(math.exp(1 - 2))
  # Corpus pooling: counts are summed over cases before dividing.
  pooled = tm.corpus_bleu([['a', 'b'], ['c', 'd']], [['a', 'x'], ['c', 'd']], 1)
  assert pooled == pytest.approx(3 / 4)
  assert tm.corpus_bleu([ref], [['dog']], 4) == 0.0


def test_rouge_hand_computed():
  ref, hyp = tm.words(REF), tm.words(HYP)
  p, r, f = tm.rouge_n(ref, hyp, 1)  # overlap 5, |hyp| 7, |ref| 6
  assert (p, r) == pytest.approx((5 / 7, 5 / 6)) and f == pytest.approx(50 / 65)
  p, r, f = tm.rouge_n(ref, hyp, 2)  # the-cat, on-the, the-mat: 3 of 6 and of 5
  assert (p, r, f) == pytest.approx((0.5, 0.6, 6 / 11))
  assert tm.lcs_length(ref, hyp) == 5  # the cat on the mat
  assert tm.rouge_l(ref, hyp)[2] == pytest.approx(50 / 65)


def test_usr_fmr_and_summary():
  assert tm.unique_sentence_ratio(['A b.', 'a b', 'c']) == pytest.approx(2 / 3)
  assert tm.feature_matching_ratio(['great sound', 'nice strings', 'ok'],
                                   [{'sound'}, {'tuner'}, set()]) == pytest.approx(0.5)
  m = tm.text_metrics([REF, 'a b c d e'], [HYP, 'a b c d f'], [{'mat'}, {'z'}])
  assert m['rouge1_f'] == pytest.approx((50 / 65 + 0.8) / 2)
  assert m['usr'] == 1.0 and m['fmr'] == 0.5
  assert 0 < m['bleu4'] < m['bleu1'] <= 1


# --- decoding --------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import itertools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from llm4rec_jax.explain import generator as gen  # noqa: E402


def _tiny(vocab=5, max_len=3, seed=0):
  cfg = gen.GeneratorConfig(vocab_size=vocab, num_users=3, num_items=4, d_model=16, num_layers=1,
                            num_heads=2, mlp_dim=32, dropout=0.0, num_features=1, history_len=2,
                            max_text_len=max_len)
  model = gen.ExplanationDecoder(cfg, rngs=nnx.Rngs(seed))
  cond = {'user': jnp.asarray([1, 2]), 'item': jnp.asarray([3, 4]),
          'features': jnp.asarray([[3], [0]]), 'history': jnp.asarray([[1, 2], [4, 0]]),
          'weights': jnp.asarray([[0.7, 0.3], [1.0, 0.0]])}
  return model, cond


def _seq_logprobs(model, cond, row, seqs):
  """log p(seq) of each sequence under teacher forcing (one batched call), with PAD and BOS
  excluded as the decoder does."""
  n, width = len(seqs), max(len(s) for s in seqs)
  c = jax.tree.map(lambda x: jnp.repeat(x[row:row + 1], n, axis=0), cond)
  text_in = np.zeros((n, width), np.int32)
  for i, seq in enumerate(seqs):
    text_in[i, :len(seq)] = [gen.BOS] + list(seq[:-1])
  logits = model(c, jnp.asarray(text_in))
  logits = logits.at[..., gen.PAD].set(-jnp.inf).at[..., gen.BOS].set(-jnp.inf)
  lp = np.asarray(jax.nn.log_softmax(logits))
  return [float(sum(lp[i, t, tok] for t, tok in enumerate(seq))) for i, seq in enumerate(seqs)]


def test_greedy_picks_the_argmax_at_every_step():
  model, cond = _tiny(vocab=7, max_len=4)
  graphdef, params = nnx.split(model, nnx.Param)
  out = np.asarray(gen.make_decoder(graphdef, max_len=4)(params, cond))
  for row in range(2):
    seq = list(out[row])
    text_in = jnp.asarray([[gen.BOS] + seq[:-1]])
    logits = np.array(model(jax.tree.map(lambda x: x[row:row + 1], cond), text_in)[0])
    logits[:, [gen.PAD, gen.BOS]] = -np.inf
    for t, tok in enumerate(seq):
      if t and seq[t - 1] in (gen.EOS, gen.PAD):
        assert tok == gen.PAD  # nothing after the end
      else:
        assert tok == int(np.argmax(logits[t]))


def test_exhaustive_beam_finds_the_most_likely_sequence():
  """With as many beams as sequences, beam search (no length penalty) is exact search."""
  model, cond = _tiny(vocab=5, max_len=3)
  graphdef, params = nnx.split(model, nnx.Param)
  out = np.asarray(gen.make_decoder(graphdef, max_len=3, beam_size=27, length_penalty=0.0)(
      params, cond))
  real = (gen.EOS, 3, 4)
  seqs = []
  for seq in itertools.product(real, repeat=3):
    seq = list(seq)
    seqs.append(seq[:seq.index(gen.EOS) + 1] if gen.EOS in seq else seq)
  seqs = [list(s) for s in dict.fromkeys(map(tuple, seqs))]
  for row in range(2):
    lps = _seq_logprobs(model, cond, row, seqs)
    best = seqs[int(np.argmax(lps))]
    got = [t for t in out[row] if t != gen.PAD]
    assert got == best, (got, best)
  # A small beam never scores below greedy.
  greedy = np.asarray(gen.make_decoder(graphdef, max_len=3)(params, cond))
  beam2 = np.asarray(gen.make_decoder(graphdef, max_len=3, beam_size=3, length_penalty=0.0)(
      params, cond))
  for row in range(2):
    lp = _seq_logprobs(model, cond, row, [[t for t in s[row] if t != gen.PAD]
                                          for s in (greedy, beam2)])
    assert lp[1] >= lp[0] - 1e-5


def test_training_learns_item_conditioned_text():
  """Each item has its own sentence; a few hundred steps make greedy decoding reproduce it."""
  model, _ = _tiny(vocab=9, max_len=4, seed=1)
  texts = np.asarray([[3, 4, 5, gen.EOS], [6, 7, gen.EOS, 0], [8, 3, gen.EOS, 0],
                      [5, 5, 6, gen.EOS]], np.int32)
  cond = {'user': jnp.asarray([1, 1, 2, 3]), 'item': jnp.asarray([1, 2, 3, 4]),
          'features': jnp.zeros((4, 1), jnp.int32), 'history': jnp.zeros((4, 2), jnp.int32),
          'weights': jnp.zeros((4, 2))}
  text_in, text_out = gen.text_batch(texts)
  batch = {'cond': cond, 'text_in': jnp.asarray(text_in), 'text_out': jnp.asarray(text_out)}
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  step = gen.make_train_step(graphdef, tx)
  for i in range(150):
    params, opt, loss = step(params, opt, batch, jax.random.key(i))
  assert float(loss) < 0.05
  out = np.asarray(gen.make_decoder(graphdef, max_len=4, beam_size=2)(params, cond))
  np.testing.assert_array_equal(out, texts)


def test_context_prediction_and_label_smoothing_hand_computed():
  """The training objective is the label-smoothed next-token cross-entropy plus ``context_loss`` x
  the item position's bag-of-words NLL of the explanation's words (EOS and PAD left out); the
  validation loss is the plain cross-entropy."""
  base, cond = _tiny(vocab=7, max_len=4)
  cfg = dataclasses.replace(base.cfg, context_loss=0.5, label_smoothing=0.2)
  model = gen.ExplanationDecoder(cfg, rngs=nnx.Rngs(0))  # the same parameters as base
  texts = np.asarray([[3, 4, 3, gen.EOS], [5, gen.EOS, 0, 0]], np.int32)
  text_in, text_out = gen.text_batch(texts)
  batch = {'cond': cond, 'text_in': jnp.asarray(text_in), 'text_out': jnp.asarray(text_out)}
  logits, ctx = model(cond, batch['text_in'], with_context=True)
  np.testing.assert_allclose(logits, base(cond, batch['text_in']), atol=1e-5)
  lp, lc = np.asarray(jax.nn.log_softmax(logits)), np.asarray(jax.nn.log_softmax(ctx))
  ce = smooth = bow = 0.0
  tokens = words = 0
  for b, row in enumerate(texts):
    for t, tok in enumerate(row):
      if tok == gen.PAD:
        continue
      tokens += 1
      ce -= lp[b, t, tok]
      smooth -= 0.8 * lp[b, t, tok] + 0.2 * lp[b, t].mean()
      if tok != gen.EOS:
        words += 1
        bow -= lc[b, tok]
  assert (tokens, words) == (6, 4)
  np.testing.assert_allclose(gen.loss_fn(model, batch, deterministic=True, objective=False),
                             ce / tokens, rtol=1e-5)
  np.testing.assert_allclose(gen.loss_fn(model, batch, deterministic=True),
                             smooth / tokens + 0.5 * bow / words, rtol=1e-5)
  np.testing.assert_allclose(gen.loss_fn(base, batch, deterministic=True), ce / tokens, rtol=1e-5)


def test_text_codec_round_trip_with_the_wordpiece_tokenizer():
  from llm4rec_jax.model import text_encoder  # pylint: disable=import-outside-toplevel
  tok = text_encoder.load_tokenizer(text_encoder.default_model_dir())
  texts = ["I've been using these strings, they sound great.", 'A solid tuner!']
  codec = gen.TextCodec.fit(tok, texts)
  ids = codec.encode(texts, 32)
  assert all(row[list(row).index(gen.EOS) + 1:].sum() == 0 for row in ids)  # PAD after EOS
  assert codec.decode(ids) == ["i've been using these strings, they sound great.",
                               'a solid tuner!']
  assert tm.words(codec.decode(ids)[0])[0] == "i've"
  np.testing.assert_array_equal(codec.word_ids(['tuner', 'zzzqqq']) > 0, [True, False])
