"""Each benchmark's --quick mode runs on the real data and prints one JSON line of results."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import SUBPROCESS_XLA_FLAGS

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize('script,keys', [
    # The best Beauty variant, with an override given the way the llm4rec command takes it, two
    # seeds trained at once as replicas (one line per seed), each at its own learning rate.
    ('beauty.py --variant=filter_prior --config.train.log_every=3 --seeds=0,1 '
     '--learning_rates=1e-3,2e-3',
     {'test', 'best_epoch', 'time_to_best_epoch_s', 'train_examples_per_s'}),
    ('yelp.py', {'test', 'test_seen_items_ranked'}),
    ('ml100k.py', {'test', 'wall_s', 'peak_rss_mb'}),
    # The fusion variant (the id model plus content), and two seeds in one vmapped step against
    # one (the small preset and the id-only variant are left to the benchmark's own runs).
    ('throughput.py --presets=tiny --variants=fusion --replicas=1,2', {'runs'}),
    ('multimodal.py --scenario cold_start', {'variants'}),
    ('semantic_ids.py', {'softmax', 'semantic_id', 'codes'}),
    ('explain_faithfulness.py', {'integrated_gradients', 'grad_x_input', 'num_cases'}),
    ('explain_text.py', {'greedy', 'beam4', 'template', 'valid_loss'}),
    ('retrieval_ann.py', {'recall@10', 'exact_qps', 'ann_qps', 'build_s', 'index_bytes'}),
    ('retrieval_serving.py', {'with_index', 'without_index', 'same_top10_fraction'}),
    ('retrieval_rag.py', {'rag_on', 'rag_off', 'ndcg@10_on_minus_off'}),
    ('tfds_prepare.py', {'datasets'}),
    ('debias_coat.py', {'variants', 'best_debiased_beats_naive'}),
    ('debias_synthetic.py', {'variants', 'oracle_arp@10'}),
    ('debias_beauty.py', {'naive', 'debiased', 'sweep', 'plot'}),
    ('debias_ml100k.py', {'variants', 'gap_smaller_than_naive'}),
    ('online_adaptation.py', {'by_dataset', 'protocol', 'wall_s'}),
    ('online_stdin.py', {'producer', 'drain_s', 'adapt', 'kept_up'}),
    ('text_finetune.py', {'frozen', 'finetune', 'steps'}),
    ('aot_memory.py', {'runs', 'preset'}),
])
def test_quick_benchmark_prints_one_json_line(script, keys):
  # One CPU device, as benchmarks run (the tests' compile flag only).
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=SUBPROCESS_XLA_FLAGS)
  name, *flags = script.split()
  proc = subprocess.run([sys.executable, f'benchmarks/{name}', *flags, '--quick'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  seeds = [int(f.split('=')[1].split(',')[i]) for f in flags if f.startswith('--seeds=')
           for i in range(len(f.split(',')))]
  assert len(lines) == max(1, len(seeds)), proc.stdout
  if seeds:  # one line per seed, each its own run's; the wall time is the replicas run's
    per_seed = [json.loads(l) for l in lines]
    assert [r['seed'] for r in per_seed] == [r['config']['seed'] for r in per_seed] == seeds
    assert [r['provenance']['seeds'] for r in per_seed] == [[s] for s in seeds]
    assert per_seed[0]['test'] != per_seed[1]['test']
    assert len({r['replicas']['wall_s_all'] for r in per_seed}) == 1
    rates = [float(r) for f in flags if f.startswith('--learning_rates=')
             for r in f.split('=')[1].split(',')]
    if rates:  # each line its replica's rate, as its config records it
      assert [r['learning_rate'] for r in per_seed] == rates
      assert [r['config']['optimizer']['learning_rate'] for r in per_seed] == rates
  result = json.loads(lines[0])
  assert keys <= set(result) and result['quick'] is True
  if 'test' in result:
    assert 0.0 <= result['test']['ndcg@10'] <= result['test']['hr@10'] <= 1.0
  if name in ('beauty.py', 'yelp.py', 'ml100k.py'):  # the runner records where the number came from
    assert result['provenance']['commit'] and result['config']['seed'] == result['seed'] == 0
  if name == 'beauty.py':
    assert result['config']['model']['filter_mix'] == 0.7 and result['config']['train']['log_every'] == 3
    assert result['config']['eval']['transition_weights'] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    assert result['config']['eval']['transition_window'] == 3  # the wide prior, on real data
    assert result['refit']['steps'] > 0  # test ranked by the model refit on what is known
  if result.get('benchmark') == 'throughput':  # MFU against a datasheet peak: none for a CPU
    assert result['datasheet_peak_tflops'] is None and result['provenance']['machine']['cores']
    assert all('mfu_vs_datasheet' not in r for r in result['runs'].values())
    assert set(result['runs']) == {'tiny/fusion/replicas1', 'tiny/fusion/replicas2'}
    assert result['runs']['tiny/fusion/replicas2']['speedup_vs_separate'] > 0
  if result.get('benchmark') == 'multimodal':  # cold start: every variant reports cold targets
    cold = {k: v['test_cold'] for k, v in result['variants'].items()}
    assert set(cold) == {'id', 'multimodal', 'content', 'popularity'}
    assert all(0.0 <= c['ndcg@10'] <= c['hr@10'] <= 1.0 for c in cold.values())
  if result.get('benchmark') == 'online_adaptation':  # prequential: every model ranks each event
    for d in result['by_dataset'].values():
      assert {m: v['events'] for m, v in d['overall'].items()} == dict.fromkeys(
          ('frozen', 'adapted'), d['stream_events'])
      assert len({v['events'] for v in d['on_retrained_windows'].values()}) == 1
      assert d['adapted_throughput']['events_per_s'] > 0
  if result.get('benchmark') == 'online_stdin':  # every line written reached the learner
    assert result['adapt']['records'] == result['stream_events'] == result['producer']['lines']
    assert result['adapt']['compilations'] == 0
  if 'grad_x_input' in result:  # explanation faithfulness: a deletion curve per method
    curve = result['integrated_gradients']['curve']
    assert len(curve['score_drop_top']) == len(curve['ks']) and result['num_cases'] > 0
  if 'beam4' in result:  # explanation text metrics, x 100
    assert all(0.0 <= result[d][m] <= 100.0 for d in ('greedy', 'beam4', 'template')
               for m in ('bleu1', 'bleu4', 'rougel_f', 'usr'))
  if 'codes' in result:
    assert 0.0 <= result['semantic_id']['ndcg@10'] <= result['semantic_id']['hr@10'] <= 1.0
  if result.get('benchmark') == 'debias_coat':  # every variant evaluated on the random test set
    assert all(np.isfinite(v['mse']['mean']) and 0 <= v['ndcg@5']['mean'] <= 1
               for v in result['variants'].values())
    family = result['variants']['debiased_family']  # estimator picked per seed on validation
    assert {p['variant'] for p in family['points']} <= set(result['variants']) - {'naive'}
  if result.get('benchmark') == 'debias_synthetic':  # NDCG against the generator's true preferences
    assert all(0 <= v['truth_ndcg@10'] <= 1 for v in result['variants'].values())
    naive = result['variants']['naive']['truth_ndcg@10']
    assert all(b == (result['variants'][k]['truth_ndcg@10'] > naive)
               for k, b in result['beats_naive_on_truth_ndcg@10'].items())
  if result.get('benchmark') == 'debias_ml100k':
    assert all(v['gender_ndcg@10_gap'] >= 0 for v in result['variants'].values())
  if result.get('benchmark') == 'debias_beauty':  # the trade-off plot was written
    assert pathlib.Path(result['plot']).is_file() and result['sweep'][0]['strength'] == 0.0
  if result.get('benchmark') == 'retrieval_ann':  # ScaNN vs exact on the same queries
    assert 0.0 <= result['recall@10'] <= 1.0 and result['ann_qps'] > 0 and result['exact_qps'] > 0
  if result.get('benchmark') == 'retrieval_serving':
    assert 0 < result['with_index']['p50_ms'] <= result['with_index']['p99_ms']
    assert 0.0 <= result['top10_overlap'] <= 1.0
  if result.get('benchmark') == 'retrieval_rag':  # same model and budget, retrieval on and off
    assert result['rag_on']['retrieval']['rag'] and result['rag_off']['retrieval'] is None
  if 'finetune' in result:  # frozen vs fine-tuned text encoder: both trained and timed
    for run in (result['frozen'], result['finetune']):
      assert 0.0 <= run['test']['ndcg@10'] <= run['test']['hr@10'] <= 1.0 and run['step_ms'] > 0
    assert result['finetune']['num_params'] > result['frozen']['num_params']  # + the encoder
  if 'datasets' in result:  # TFDS builders: what data_source reads back equals the reader's dataset
    assert result['datasets'] and all(d['same_as_reader'] for d in result['datasets'].values())
  if result.get('benchmark') == 'aot_memory':  # compiled train step: a positive per-device estimate
    run = result['runs']['cpu']
    assert run['per_device_bytes']['peak_estimate'] > run['per_device_bytes']['argument'] > 0


def test_config_variants_validate_and_overrides_take_the_cli_form():
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  try:
    import common  # pylint: disable=import-outside-toplevel
    import leaderboard  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(str(ROOT / 'benchmarks'))
  from llm4rec_jax import config_base  # pylint: disable=import-outside-toplevel
  beauty = ROOT / 'configs' / 'beauty.py'
  assert 'filter_blend' in beauty.read_text()
  for variant in ('sasrec', 'd128', 'filter', 'filter_blend', 'filter_prior', 'fused'):
    c = common.load_config('beauty', variant)
    config_base.validate(c, 1)
    assert c.variant == variant
  default = common.load_config('beauty')  # the default is the best system: attributes fused
  assert default.variant == 'fused' and default.eval.transition_weights
  assert (default.content.categorical, default.model.item_repr) == ('all', 'both')
  ids = common.load_config('beauty', 'filter_prior')  # the same system, items as ids only
  assert (ids.content.categorical, ids.model.item_repr) == ('', 'id')
  assert common.load_config('yelp').model.item_repr == 'id'  # Yelp keeps what was measured there
  # LastFM's file is what the leaderboard trains for LastFM: filter_prior with its overrides.
  script, board_args = leaderboard.SCRIPTS['lastfm']
  board = common.load_config('beauty', board_args[0].split('=')[1])
  common.apply_overrides(board, [a.split('=', 1)[1] for a in board_args[1:]])
  lastfm = common.load_config('lastfm')
  assert script == 'beauty.py' and lastfm.to_dict() == board.to_dict()
  assert (lastfm.optimizer.learning_rate, lastfm.train.num_epochs, lastfm.model.item_repr) == (
      0.002, 200, 'id')
  with pytest.raises(config_base.ConfigError, match="configs/lastfm.py has one variant"):
    common.load_config('lastfm', 'tiny')
  tiny = common.load_config('beauty', 'tiny')  # a preset sizes the sasrec decoder
  assert (tiny.variant, tiny.model.d_model, tiny.eval.transition_weights) == ('sasrec', 32, ())
  assert common.load_config('beauty', 'preset=small').model.d_model == 64
  best = common.load_config('beauty', 'filter_blend')
  assert (best.model.d_model, best.model.filter_mix, best.train.num_epochs) == (128, 0.7, 18)
  wide = common.load_config('beauty', 'filter_prior').eval
  assert (wide.transition_window, wide.transition_history, wide.transition_decay,
          wide.transition_counts, wide.refit_epochs) == (3, 3, 0.5, 'known', 1)
  args = common.parser('x').parse_args(['--config.model.dropout=0.4', '--set', 'train.seed=1'])
  assert args.set == ['model.dropout=0.4', 'train.seed=1']
  common.apply_overrides(best, ['model.dropout=0.4'])
  assert best.model.dropout == 0.4


def test_resume_goes_on_from_a_cut_short_run_and_a_plain_run_starts_afresh(tmp_path, monkeypatch):
  """``--resume --workdir=W``: the benchmark keeps W's checkpoints and trains on from them (its
  line says where it went on); without ``--resume`` W is emptied."""
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from llm4rec_jax.train import trainer  # pylint: disable=import-outside-toplevel
  monkeypatch.syspath_prepend(str(ROOT / 'benchmarks'))
  import common  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'run'
  config = tiny_config(**{'train.eval_every': 4})
  trainer.train_and_evaluate(config, workdir, stop_after_steps=6)
  resumed = common.train_and_report(
      tiny_config(**{'train.eval_every': 4}),
      common.parser('x').parse_args(['--workdir', str(workdir), '--resume']), benchmark='t')
  assert resumed['resumed_at_steps'] == [6] and (workdir / 'metrics.json').exists()
  # Without --resume the same workdir is emptied for a fresh run (tests/test_train.py checks that a
  # resumed run ends where a whole one does).
  args = common.parser('x').parse_args(['--workdir', str(workdir)])
  fresh = common._fresh_workdir(args)  # pylint: disable=protected-access
  assert fresh == workdir and not workdir.exists()
  with pytest.raises(SystemExit, match='--resume needs the --workdir'):
    common.train_and_report(config, common.parser('x').parse_args(['--resume']), benchmark='t')
