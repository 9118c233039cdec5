"""Command line: ``llm4rec {train,evaluate,recommend} --config=configs/X.py[:preset] --workdir=DIR``.

Thin by design: parse flags, then call the same functions tests and notebooks use
(``train_and_evaluate``, ``evaluate``, ``recommend``). Errors about input or config are printed as
one clear line (exit status 2), not a traceback.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from llm4rec_jax.errors import Llm4RecError

COMMANDS = ('train', 'evaluate', 'recommend', 'index', 'adapt', 'explain')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/beauty.py or configs/beauty.py:tiny.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "evaluate/recommend: 'best', 'latest' or a "
                                  'step number.')
_SAVE_RANKINGS = flags.DEFINE_bool('save_rankings', False, 'evaluate: write per-user top-k lists '
                                   'with the target to WORKDIR/rankings_{valid,test}.jsonl.')
_HISTORY = flags.DEFINE_string('history', None, 'recommend: comma-separated raw item ids, oldest '
                               'first.')
_TOP_K = flags.DEFINE_integer('top_k', 10, 'recommend: number of items to return.')
_ITEM = flags.DEFINE_string('item', None, 'explain: raw id of the item to explain (default: the '
                            'top recommendation after --history).')
_INCLUDE_SEEN = flags.DEFINE_bool('include_seen', False, 'recommend: allow items of the history.')
_ADJUST = flags.DEFINE_float('adjust_strength', None, 'recommend: scores -= STRENGTH * log item '
                            'popularity (default: the saved config.debias.adjust_strength).')
_TRANSITION = flags.DEFINE_float('transition_weight', None, 'recommend: scores += WEIGHT * '
                                'log1p(training count of newest item -> item) (default: the weight '
                                'chosen on validation by eval.transition_weights; 0 = off).')
_SNAPSHOT = flags.DEFINE_string('snapshot', 'auto', "recommend: 'auto' (the latest online snapshot "
                                 "of `llm4rec adapt` when WORKDIR has one, else --checkpoint), "
                                 "'none', 'latest' or a stream position.")
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Log library internals (Orbax, JAX) at INFO.')
_EVENTS = flags.DEFINE_string('events', None, "adapt: JSON-lines event file, or '-' for stdin.")
_ONLINE = flags.DEFINE_multi_string('online', [], 'adapt: a config.online override KEY=VALUE '
                                    '(repeatable), e.g. --online=learning_rate=3e-4 '
                                    '--online=params=item_embed,fusion.')
_PREQUENTIAL = flags.DEFINE_bool('prequential', False, 'adapt: rank every event before learning '
                                 'from it and report the metrics.')


def _maybe_initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` exactly once, from the entry point, only when configured.

  Without a coordinator address JAX detects the cluster (SLURM, Cloud TPU, Open MPI). On CPU the
  processes' devices talk through Gloo (JAX's default CPU collectives).
  """
  d = config.get('distributed') if config is not None else None
  if d is not None and d.initialize:
    import jax  # pylint: disable=import-outside-toplevel
    if jax.distributed.is_initialized():
      return
    kwargs = {}
    if d.coordinator_address:
      kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                    process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'usage: llm4rec {{{",".join(COMMANDS)}}} --workdir=DIR [--config=FILE]')
  command = argv[1]
  absl_logging.set_verbosity(absl_logging.INFO if _VERBOSE.value else absl_logging.WARNING)
  logging.getLogger('llm4rec').setLevel(logging.INFO)
  try:
    if not _WORKDIR.value:
      raise Llm4RecError('--workdir is required')
    if command in ('train', 'evaluate') and _CONFIG.value is None:
      raise Llm4RecError(f'--config is required for {command}')
    _maybe_initialize_distributed(_CONFIG.value)
    # Imported here so `--help` and flag errors do not pay for importing JAX.
    from llm4rec_jax.serving import recommend  # pylint: disable=import-outside-toplevel
    from llm4rec_jax.train.trainer import evaluate, train_and_evaluate  # pylint: disable=import-outside-toplevel
    if command == 'train':
      result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif command == 'index':  # the ScaNN item index of a checkpoint, used by recommend
      from llm4rec_jax.retrieval.workdir_index import build_index  # pylint: disable=import-outside-toplevel
      result = build_index(_WORKDIR.value, checkpoint=_CHECKPOINT.value)
    elif command == 'adapt':
      if not _EVENTS.value:
        raise Llm4RecError("--events is required for adapt (a JSON-lines file, or '-' for stdin)")
      from llm4rec_jax.online import adapt  # pylint: disable=import-outside-toplevel
      result = adapt(_WORKDIR.value, _EVENTS.value, overrides=_parse_overrides(_ONLINE.value),
                     evaluate=_PREQUENTIAL.value, checkpoint=_CHECKPOINT.value)
    elif command == 'explain':
      if not _HISTORY.value:
        raise Llm4RecError('--history is required for explain (comma-separated item ids)')
      from llm4rec_jax.explain.explainer import explain  # pylint: disable=import-outside-toplevel
      result = explain(_WORKDIR.value, [h.strip() for h in _HISTORY.value.split(',') if h.strip()],
                       _ITEM.value, checkpoint=_CHECKPOINT.value)
    elif command == 'evaluate':
      result = evaluate(_CONFIG.value, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
                        save_rankings=_SAVE_RANKINGS.value)
    else:
      if not _HISTORY.value:
        raise Llm4RecError('--history is required for recommend (comma-separated item ids)')
      history = [h.strip() for h in _HISTORY.value.split(',') if h.strip()]
      result = recommend(_WORKDIR.value, history, _TOP_K.value, checkpoint=_CHECKPOINT.value,
                         exclude_seen=not _INCLUDE_SEEN.value, adjust_strength=_ADJUST.value,
                         transition_weight=_TRANSITION.value,
                         snapshot=_SNAPSHOT.value)
  except Llm4RecError as e:
    print(f'llm4rec {command}: error: {e}', file=sys.stderr)
    sys.exit(2)
  except MemoryError:
    print(f'llm4rec {command}: error: out of host memory. The sizes that matter most: data.max_len, '
          'train.batch_size and loss.chunk_targets (training logits), eval.batch_size (scores), '
          "the model size; a smaller release or data.k_core; loss.type='sampled_softmax' for "
          'catalogs of millions', file=sys.stderr)
    sys.exit(2)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:  # one result, not one per process
    print(json.dumps(result, indent=2))


def _parse_overrides(items: list[str]) -> dict:
  """``['learning_rate=3e-4', 'params=embeddings']`` -> values parsed as Python literals."""
  import ast  # pylint: disable=import-outside-toplevel
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise Llm4RecError(f'--online: expected KEY=VALUE, got {item!r}')
    try:
      out[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key.strip()] = value
  return out


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
