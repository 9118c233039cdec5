"""Bad input gives a clear error naming the file, line or field, never a deep JAX traceback."""

import jax
import pytest

from conftest import tiny_config
from llm4rec_jax import config_base
from llm4rec_jax.data import readers, registry
from llm4rec_jax.errors import ConfigError, DataError, Llm4RecError
from llm4rec_jax.train import trainer


@pytest.mark.parametrize('overrides,field', [
    ({'model.num_heads': 3}, 'config.model.num_heads'),
    ({'model.num_kv_heads': 3, 'model.num_heads': 4}, 'config.model.num_kv_heads'),
    ({'model.dropout': 1.5}, 'config.model.dropout'),
    ({'model.dtype': 'float64'}, 'config.model.dtype'),
    ({'loss.type': 'bpr'}, 'config.loss.type'),
    ({'data.split': 'random'}, 'config.data.split'),
    ({'train.batch_size': 0}, 'config.train.batch_size'),
    ({'mesh.num_devices': 16}, 'config.mesh.num_devices'),
    ({'optimizer.schedule': 'linear'}, 'config.optimizer.schedule'),
    ({'model.item_repr': 'pixels'}, 'config.model.item_repr'),
    ({'model.head': 'mlp'}, 'config.model.head'),
    ({'model.attention_impl': 'flash'}, 'config.model.attention_impl'),
    ({'model.item_repr': 'content'}, 'config.model.item_repr'),  # no content fields selected
    ({'content.categorical': 'no_such_field'}, 'config.content.categorical'),
    ({'data.cold_item_fraction': 1.0}, 'config.data.cold_item_fraction'),
])
def test_invalid_config_names_the_field(tmp_path, overrides, field):
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    trainer.train_and_evaluate(tiny_config(**overrides), tmp_path)


def test_batch_larger_than_the_dataset(tmp_path):
  config = tiny_config(**{'train.batch_size': 4096, 'eval.batch_size': 64})
  with pytest.raises(ConfigError, match=r'config\.train\.batch_size: 4096 exceeds the 240'):
    trainer.train_and_evaluate(config, tmp_path)


def test_filter_that_empties_the_dataset():
  config = tiny_config(**{'data.k_core': 500})
  with pytest.raises(DataError, match='500-core filtering removed every interaction'):
    registry.load_split(config.data)


def test_unknown_dataset_name_lists_the_known_ones():
  with pytest.raises(DataError) as e:
    readers.load_dataset('beuty')
  assert 'beauty' in str(e.value) and 'beuty' in str(e.value)


def test_errors_are_one_family():
  assert issubclass(DataError, Llm4RecError) and issubclass(ConfigError, Llm4RecError)
  # The CLI catches this one base class; every error above is reported without a traceback.
  with pytest.raises(Llm4RecError):
    config_base.validate(tiny_config(**{'mesh.shape': (5, 1, 1)}), jax.device_count())


def test_workdir_config_from_an_older_release_loads_with_defaults(tmp_path):
  """A config.json written before a section existed (here: content, semantic_ids) still loads."""
  import json  # pylint: disable=import-outside-toplevel
  c = tiny_config().to_dict()
  del c['content'], c['semantic_ids'], c['model']['item_repr']
  c['mesh']['rules'] = [list(r) for r in c['mesh']['rules']]
  (tmp_path / 'config.json').write_text(json.dumps(c))
  loaded = config_base.load(tmp_path)
  assert loaded.model.item_repr == 'id' and loaded.content.text == ''
  assert loaded.model.d_model == c['model']['d_model']
