"""Command line: ``llm4rec COMMAND --workdir=DIR [--config=configs/X.py[:preset]] [flags]``.

Thin by design: parse flags, then call the same functions tests and notebooks use
(``train_and_evaluate``, ``evaluate``, ``recommend``, ...). Errors about input or config are printed
as one clear line (exit status 2), not a traceback. ``llm4rec --help`` lists the commands,
``llm4rec COMMAND --help`` shows that command's flags with their defaults and an example.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import re
import sys
import textwrap

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from llm4rec_jax.errors import Llm4RecError



@dataclasses.dataclass(frozen=True)
class Command:
  summary: str  # one line, for `llm4rec --help`
  flags: tuple[str, ...]  # its flags, in the order `llm4rec COMMAND --help` lists them
  example: str


# Every command also takes --verbose; --config=FILE also accepts --config.a.b=VALUE overrides.
HELP = {
    'train': Command(
        'Train a model (resuming from the checkpoints in WORKDIR), then evaluate the best one.',
        ('config', 'workdir', 'seeds', 'learning_rates'),
        'llm4rec train --config=configs/beauty.py:tiny --workdir=/tmp/beauty '
        '--config.train.num_epochs=5'),
    'evaluate': Command(
        'Evaluate a checkpoint of WORKDIR on the validation and test cases.',
        ('config', 'workdir', 'checkpoint', 'save_rankings'),
        'llm4rec evaluate --config=configs/beauty.py:tiny --workdir=/tmp/beauty '
        '--checkpoint=latest --save_rankings'),
    'recommend': Command(
        'Top-k items to follow a history of raw item ids (needs only WORKDIR).',
        ('workdir', 'history', 'top_k', 'checkpoint', 'include_seen', 'adjust_strength',
         'snapshot'),
        'llm4rec recommend --workdir=/tmp/beauty --history=B0001,B0002 --top_k=5'),
    'index': Command(
        "Build the ScaNN item index of a checkpoint in WORKDIR/index (recommend then uses it).",
        ('workdir', 'checkpoint'),
        'llm4rec index --workdir=/tmp/beauty'),
    'adapt': Command(
        'Adapt a trained model online to a stream of JSON-lines events (snapshots in WORKDIR).',
        ('workdir', 'events', 'online', 'prequential', 'checkpoint'),
        'llm4rec adapt --workdir=/tmp/beauty --events=events.jsonl --online=learning_rate=3e-4 '
        '--prequential'),
    'explain': Command(
        'Explain why an item (default: the top recommendation) follows a history.',
        ('workdir', 'history', 'item', 'checkpoint'),
        'llm4rec explain --workdir=/tmp/beauty --history=B0001,B0002'),
}
COMMANDS = tuple(HELP)
HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')
REQUIRED = ('config', 'workdir', 'history', 'events')  # by every command that lists them

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/beauty.py or configs/beauty.py:tiny.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
_SEEDS = flags.DEFINE_string('seeds', None, 'train: comma-separated seeds trained at once as '
                             'replicas (one vmapped step), each into WORKDIR/seed_SEED, e.g. 0,1,2.')
_LEARNING_RATES = flags.DEFINE_string(
    'learning_rates', None, 'train: with --seeds, comma-separated peak learning rates, one per '
    'seed (or one seed for every rate), trained at once as replicas, each into '
    'WORKDIR/seed_SEED_lr_RATE, e.g. --seeds=0 --learning_rates=1e-3,2e-3,4e-3.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, "evaluate/recommend/index/adapt/explain: "
                                  "the checkpoint, 'best', 'latest', 'refit' (the best "
                                  "one refit on what was known at test, eval.refit_epochs), "
                                  "'auto' (the refit when WORKDIR has one, else best) or a step "
                                  "number. Default: 'auto' for recommend, index and explain (serve "
                                  "the model the run's test figures rank), 'best' for evaluate "
                                  "and adapt.")
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
                                'the training transitions of the newest item(s) (default: the weight '
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


def usage() -> str:
  """What ``llm4rec --help`` prints: the commands, a line each."""
  width = max(map(len, COMMANDS))
  lines = ['usage: llm4rec COMMAND --workdir=DIR [flags]', '', 'Commands:']
  lines += [f'  {name:<{width}}  {cmd.summary}' for name, cmd in HELP.items()]
  lines += ['', "Run `llm4rec COMMAND --help` for a command's flags and an example; "
            '`llm4rec --helpfull` lists every flag.']
  return '\n'.join(lines)


def _default_checkpoint(command: str) -> str:
  """--checkpoint when not given: serving commands load what the run's test figures rank."""
  return 'best' if command in ('evaluate', 'adapt') else 'auto'


def _flag_help(name: str, command: str) -> str:
  flag = flags.FLAGS[name]
  value = _default_checkpoint(command) if name == 'checkpoint' else flag.default
  default = 'required' if name in REQUIRED else f'default: {value!r}'
  # The help strings name their commands ('recommend: ...') for --helpfull; one command's help
  # needs no such prefix.
  text = ' '.join(re.sub(r'^[a-z/]+: ', '', flag.help).split())
  text = re.sub(r';? ?repeat this option to specify a list of values$', '', text)
  text = textwrap.fill(text, width=96, initial_indent='    ', subsequent_indent='    ')
  return f'  --{name} ({default})\n{text}'


def command_usage(command: str) -> str:
  """What ``llm4rec COMMAND --help`` prints: the command's flags, their defaults and an example."""
  cmd = HELP[command]
  lines = [f'usage: llm4rec {command} ' + ' '.join(f'--{f}=...' for f in cmd.flags[:2]) +
           ' [flags]', '', cmd.summary, '', 'Flags:']
  lines += [_flag_help(f, command) for f in cmd.flags + ('verbose',)]
  if 'config' in cmd.flags:
    lines.append('  --config.SECTION.FIELD=VALUE\n    Override one field of the config file, e.g. '
                 '--config.train.batch_size=64.')
  lines += ['', 'Example:', f'  {cmd.example}']
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'expected one command of {", ".join(COMMANDS)}\n\n{usage()}')
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
    for flag in (_SEEDS, _LEARNING_RATES):
      if flag.value is not None and command != 'train':
        raise Llm4RecError(f'--{flag.name} is a flag of train, not of {command}')
    if _LEARNING_RATES.value is not None and _SEEDS.value is None:
      raise Llm4RecError('--learning_rates needs --seeds (one seed per rate, or one for all, '
                         'e.g. --seeds=0)')
    checkpoint = _CHECKPOINT.value or _default_checkpoint(command)
    if command == 'train' and _SEEDS.value is not None:
      from llm4rec_jax.train.replicas import replica_name, train_replicas  # pylint: disable=import-outside-toplevel
      seeds = _parse_seeds(_SEEDS.value)
      rates = None
      if _LEARNING_RATES.value is not None:
        seeds, rates = _pair_learning_rates(seeds, _LEARNING_RATES.value)
      names = [replica_name(s, r) for s, r in zip(seeds, rates or [None] * len(seeds))]
      workdirs = [f'{_WORKDIR.value.rstrip("/")}/{n}' for n in names]
      result = dict(zip(names, train_replicas(_CONFIG.value, workdirs, seeds,
                                              learning_rates=rates)))
    elif command == 'train':
      result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif command == 'index':  # the ScaNN item index of a checkpoint, used by recommend
      from llm4rec_jax.serving.index import build_index  # pylint: disable=import-outside-toplevel
      result = build_index(_WORKDIR.value, checkpoint=checkpoint)
    elif command == 'adapt':
      if not _EVENTS.value:
        raise Llm4RecError("--events is required for adapt (a JSON-lines file, or '-' for stdin)")
      from llm4rec_jax.online import adapt  # pylint: disable=import-outside-toplevel
      # One line on stderr once warmed up: a producer feeding stdin can wait for it.
      ready = lambda position: print(f'llm4rec adapt: ready, reading events from position '
                                     f'{position}', file=sys.stderr, flush=True)
      result = adapt(_WORKDIR.value, _EVENTS.value, overrides=_parse_overrides(_ONLINE.value),
                     evaluate=_PREQUENTIAL.value, checkpoint=checkpoint, on_ready=ready)
    elif command == 'explain':
      if not _HISTORY.value:
        raise Llm4RecError('--history is required for explain (comma-separated item ids)')
      from llm4rec_jax.explain.explainer import explain  # pylint: disable=import-outside-toplevel
      result = explain(_WORKDIR.value, [h.strip() for h in _HISTORY.value.split(',') if h.strip()],
                       _ITEM.value, checkpoint=checkpoint)
    elif command == 'evaluate':
      result = evaluate(_CONFIG.value, _WORKDIR.value, checkpoint=checkpoint,
                        save_rankings=_SAVE_RANKINGS.value)
    else:
      if not _HISTORY.value:
        raise Llm4RecError('--history is required for recommend (comma-separated item ids)')
      history = [h.strip() for h in _HISTORY.value.split(',') if h.strip()]
      result = recommend(_WORKDIR.value, history, _TOP_K.value, checkpoint=checkpoint,
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


def _parse_seeds(text: str) -> list[int]:
  """``'0,1,2'`` -> ``[0, 1, 2]``."""
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise Llm4RecError(f'--seeds: expected comma-separated integers, got {text!r}') from None
  if not seeds:
    raise Llm4RecError('--seeds: give at least one seed, e.g. --seeds=0,1,2')
  return seeds


def _pair_learning_rates(seeds: list[int], text: str) -> tuple[list[int], list[float]]:
  """``--learning_rates`` with ``--seeds``: (seeds, rates) of equal length, one seed given for
  several rates repeated for each. Rates that are not positive, or a (seed, rate) pair given twice,
  are refused by ``train_replicas`` (naming ``config.optimizer.learning_rate``)."""
  try:
    rates = [float(r) for r in text.split(',') if r.strip()]
  except ValueError:
    raise Llm4RecError(f'--learning_rates: expected comma-separated numbers, got '
                       f'{text!r}') from None
  if not rates:
    raise Llm4RecError('--learning_rates: give at least one rate, e.g. --learning_rates=1e-3,2e-3')
  if len(seeds) == 1:
    seeds = seeds * len(rates)
  if len(seeds) != len(rates):
    raise Llm4RecError(f'--learning_rates: {len(rates)} rates for {len(seeds)} seeds (--seeds): '
                       'give one rate per seed, or one seed for every rate')
  return seeds, rates


def _parse_overrides(items: list[str]) -> dict:
  """``['learning_rate=3e-4', 'params=embeddings']`` -> values parsed as Python literals."""
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
  """The ``llm4rec`` entry point; answers ``--help`` itself (absl's lists no commands)."""
  args = sys.argv[1:]
  if any(a in HELP_FLAGS for a in args):
    words = [a for a in args if not a.startswith('-')]
    if words and words[0] not in HELP:
      print(f'llm4rec: unknown command {words[0]!r}\n\n{usage()}', file=sys.stderr)
      sys.exit(2)
    print(command_usage(words[0]) if words else usage())
    sys.exit(0)
  app.run(main)


if __name__ == '__main__':
  run()
