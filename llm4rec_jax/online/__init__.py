"""Online adaptation: event streams, the incremental learner, replay, catalog growth, snapshots."""

from llm4rec_jax.data.events import Event, iter_jsonl, parse_event, read_events_dataset
from llm4rec_jax.online.catalog import ItemCatalog
from llm4rec_jax.online.learner import OnlineLearner, adapt
from llm4rec_jax.online.optimizer import trainable_mask
from llm4rec_jax.online.replay import ReplayBuffer
from llm4rec_jax.online.stream import micro_batches, open_events
from llm4rec_jax.online.summary import RunSummary

__all__ = ['Event', 'ItemCatalog', 'OnlineLearner', 'ReplayBuffer', 'RunSummary', 'adapt',
           'iter_jsonl', 'micro_batches', 'open_events', 'parse_event', 'read_events_dataset',
           'trainable_mask']
