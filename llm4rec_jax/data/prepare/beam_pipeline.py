"""The Beam pipeline: a raw JSON-lines release -> sharded ArrayRecord per-user sequences.

Stages (all of them bounded in memory by a block or a bucket, never by the whole release):
  1. ``parse``: byte-range chunks of the input (planned by the driver from file sizes) are read in
     blocks of ``block_bytes`` and parsed in batches (:mod:`.parse`). Each block's rows are bucketed
     by a stable hash of the raw user id into ``num_shards`` buckets. With ``shuffle='files'`` (the
     default) a block becomes one Arrow IPC *part* file under ``temp_dir`` whose record batch ``b``
     holds bucket ``b``; with ``shuffle='beam'`` the (bucket, rows) pairs go through Beam's
     ``GroupByKey`` instead. The distinct items of each block go to a lifted ``CombineGlobally``.
  2. ``vocab``: the union of the items, sorted by raw id (UTF-8 bytes): item ``i`` is line ``i`` of
     ``items.txt``. Its size is O(items), the one table every shard writer needs.
  3. ``count``: the distinct users of each bucket (reading only the user column), so that user
     indices are contiguous: bucket ``b`` numbers its users, sorted by raw id, from
     ``1 + sum(count[:b])``.
  4. ``write``: bucket ``b`` (all its parts) is sorted by (user, time, source position), items are
     mapped through the vocabulary, and one record per user goes to ArrayRecord shard ``b``.
  5. ``manifest``: counts and per-shard stats into ``manifest.json``.

The DirectRunner's ``GroupByKey`` holds everything it groups in memory, so on it the shuffle goes
through files: the Beam graph only carries file names, counts and the item sets. On Dataflow, Spark
or Flink (``--runner`` plus their usual options) the same graph runs as is with ``temp_dir`` on a
file system every worker sees (``gs://``, ``hdfs://``, a shared mount), or with ``shuffle='beam'``
to use the runner's own shuffle. Memory per worker is one block plus one bucket plus the vocabulary;
raise ``num_shards`` as the release grows to keep a bucket small.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from array_record.python import array_record_module

from llm4rec_jax.data.prepare import parse, seqrecord
from llm4rec_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """What to read and how to cut it. ``input`` is a release directory or one JSON-lines file."""
  input: str
  output: str
  format: str = 'amazon-2023'
  category: str | None = None
  num_shards: int = 16
  shuffle: str = 'files'  # 'files' (bounded on any runner) | 'beam' (the runner's GroupByKey)
  chunk_bytes: int = 256 << 20
  block_bytes: int = 16 << 20
  temp_dir: str | None = None  # default: {output}/_tmp-{random}


def input_files(opts: PrepareOptions) -> list[str]:
  """The interaction file(s) of the release, as :func:`readers.read_amazon_2023` would pick them."""
  if opts.format not in parse.FORMATS:
    raise DataError(f'unknown format {opts.format!r} ({" | ".join(parse.FORMATS)})', field='format')
  if not os.path.isdir(opts.input):
    if not FileSystems.exists(opts.input):
      raise DataError('input does not exist', path=opts.input)
    return [opts.input]
  names = sorted(os.listdir(opts.input))
  if opts.format == 'yelp-open':
    wanted = [n for n in names if n == 'yelp_academic_dataset_review.json']
  else:
    wanted = [n for n in names if parse.AMAZON_2023_FILE.match(n) and not n.startswith('meta_')
              and (opts.category is None or parse.AMAZON_2023_FILE.match(n)['category'] == opts.category)]
    cats = {parse.AMAZON_2023_FILE.match(n)['category'] for n in wanted}
    if len(cats) > 1:
      raise DataError(f'{len(cats)} categories {sorted(cats)}: pick one with --category',
                      path=opts.input, field='category')
    wanted = [n for n in wanted if n.endswith('.jsonl')] or wanted  # plain beats .gz: splittable
  if not wanted:
    raise DataError(f'no {opts.format} interaction file (e.g. Electronics.jsonl[.gz])',
                    path=opts.input)
  return [os.path.join(opts.input, wanted[0])]


def bucket_of(user_ids: Iterable[bytes | str], num_buckets: int) -> np.ndarray:
  """int32 bucket of each raw user id: CRC-32 of its UTF-8 bytes, stable across machines."""
  return np.asarray([zlib.crc32(u if isinstance(u, bytes) else u.encode()) % num_buckets
                     for u in user_ids], np.int32)


class _ParseChunk(beam.DoFn):
  """A chunk -> part files (or (bucket, rows) pairs), plus each block's distinct items."""
  ITEMS = 'items'

  def __init__(self, fmt: parse.Format, num_buckets: int, block_bytes: int, part_dir: str | None):
    self.fmt, self.num_buckets, self.block_bytes, self.part_dir = (
        fmt, num_buckets, block_bytes, part_dir)

  def process(self, chunk: parse.Chunk):
    for offset, data in parse.read_blocks(chunk, self.block_bytes):
      table = parse.parse_block(data, fmt=self.fmt, file_index=chunk.file_index, offset=offset,
                                path=chunk.path)
      if not len(table):
        continue
      yield beam.pvalue.TaggedOutput(self.ITEMS, pc.unique(table.column('item_id')))
      bucket = bucket_of(table.column('user_id').to_pylist(), self.num_buckets)
      by_bucket = np.argsort(bucket, kind='stable')
      table = table.take(pa.array(by_bucket))
      bounds = np.searchsorted(bucket[by_bucket], np.arange(self.num_buckets + 1))
      if self.part_dir is None:
        for b in range(self.num_buckets):
          if bounds[b + 1] > bounds[b]:
            yield b, table.slice(bounds[b], bounds[b + 1] - bounds[b])
        continue
      path = f'{self.part_dir}/part-{chunk.file_index:03d}-{offset:015d}.arrow'
      with FileSystems.create(path) as f, ipc.new_file(f, parse.COLUMNS) as w:
        for b in range(self.num_buckets):  # batch b = bucket b (possibly empty)
          w.write_batch(pa.record_batch(
              [c.combine_chunks() for c in table.slice(bounds[b], bounds[b + 1] - bounds[b]).columns],
              schema=parse.COLUMNS))
      yield path


class _SortedUnion(beam.CombineFn):
  """The distinct strings of many arrays, sorted (by UTF-8 bytes)."""

  def create_accumulator(self):
    return pa.array([], pa.string())

  def add_input(self, acc, arr):
    return pc.unique(pa.concat_arrays([acc, arr.cast(pa.string())]))

  def merge_accumulators(self, accs):
    return pc.unique(pa.concat_arrays([a.cast(pa.string()) for a in accs]))

  def extract_output(self, acc):
    return acc.take(pc.sort_indices(acc))


def _bucket_rows(bucket: int, parts: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
  """Batch ``bucket`` of every part file, concatenated."""
  tables = []
  for path in parts:
    if '://' in path:
      with FileSystems.open(path, compression_type='uncompressed') as f:
        batch = ipc.open_file(pa.BufferReader(f.read())).get_batch(bucket)
    else:  # memory-mapped: only bucket ``bucket``'s bytes are read
      with pa.memory_map(path) as f:
        batch = ipc.open_file(f).get_batch(bucket)
    tables.append(pa.Table.from_batches([batch]))
  if not tables:
    return parse.COLUMNS.empty_table()
  t = pa.concat_tables(tables)
  return t.select(list(columns)) if columns else t


def _count_users(rows: pa.Table) -> int:
  return len(pc.unique(rows.column('user_id'))) if len(rows) else 0


def _write_shard(bucket: int, rows: pa.Table, *, vocab: pa.Array, counts: dict[int, int],
                 num_shards: int, output: str) -> dict:
  """Bucket ``bucket`` -> ``sequences`` shard + ``lengths`` file; returns the shard's stats."""
  first_user = 1 + sum(counts.get(b, 0) for b in range(bucket))
  rows = rows.take(pc.sort_indices(rows, sort_keys=[('user_id', 'ascending'),
                                                    ('timestamp', 'ascending'),
                                                    ('order', 'ascending')]))
  n = len(rows)
  items = (pc.index_in(rows.column('item_id'), value_set=vocab).to_numpy(zero_copy_only=False)
           .astype(np.int64) + 1) if n else np.zeros(0, np.int64)
  if n and (items < 1).any():  # cannot happen: the vocabulary is the union of all blocks' items
    raise DataError('an item is missing from the vocabulary', path=output)
  users = rows.column('user_id').to_numpy(zero_copy_only=False)
  starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]])) if n else np.zeros(0, int)
  bounds = np.append(starts, n)
  ts = rows.column('timestamp').to_numpy()
  ratings = rows.column('rating').to_numpy()
  lengths = np.diff(bounds).astype(np.int32)
  if len(lengths) != counts.get(bucket, 0):
    raise DataError(f'bucket {bucket}: {len(lengths)} users now, {counts.get(bucket, 0)} counted',
                    path=output)
  name = seqrecord.sequence_shard(bucket, num_shards)
  local_dir = output if '://' not in output else tempfile.mkdtemp()
  local = os.path.join(local_dir, name)
  writer = array_record_module.ArrayRecordWriter(local, 'group_size:1')
  for k in range(len(starts)):
    s, e = bounds[k], bounds[k + 1]
    writer.write(seqrecord.encode(seqrecord.UserSequence(
        first_user + k, users[s], items[s:e], ts[s:e], ratings[s:e])))
  writer.close()
  with FileSystems.create(f'{output}/{seqrecord.lengths_shard(bucket, num_shards)}') as f:
    np.save(f, lengths)
  size = os.path.getsize(local)
  if local_dir != output:
    with open(local, 'rb') as src, FileSystems.create(f'{output}/{name}') as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    shutil.rmtree(local_dir)
  return dict(shard=bucket, file=name, first_user=first_user, users=len(lengths),
              interactions=n, eval_users=int((lengths >= 3).sum()),
              max_length=int(lengths.max()) if len(lengths) else 0, bytes=size)


def _write_items(vocab: pa.Array, output: str) -> int:
  with FileSystems.create(f'{output}/{seqrecord.ITEMS}') as f:
    for k in range(0, len(vocab), 1 << 16):
      f.write(('\n'.join(vocab.slice(k, 1 << 16).to_pylist()) + '\n').encode())
  return len(vocab)


def _write_manifest(shards: list[dict], *, num_items: int, opts: PrepareOptions,
                    files: list[str]) -> None:
  shards = sorted(shards, key=lambda s: s['shard'])
  manifest = dict(
      schema_version=seqrecord.SCHEMA_VERSION, format=opts.format, source_files=files,
      num_users=sum(s['users'] for s in shards), num_items=num_items,
      num_interactions=sum(s['interactions'] for s in shards),
      num_eval_users=sum(s['eval_users'] for s in shards),
      max_length=max((s['max_length'] for s in shards), default=0),
      timestamps='seconds', item_order='sorted raw id (UTF-8 bytes)',
      user_order='shard (CRC-32 of raw id mod num_shards), then sorted raw id',
      record='msgpack: user_index, user_id, items <i4, timestamps <i8, ratings <f4',
      num_shards=opts.num_shards, shards=shards)
  if not manifest['num_interactions']:
    raise DataError('the release holds no interactions', path=files[0])
  with FileSystems.create(f'{opts.output}/{seqrecord.MANIFEST}') as f:
    f.write(json.dumps(manifest, indent=1).encode())


def build(p: beam.Pipeline, opts: PrepareOptions, files: list[str], temp_dir: str) -> None:
  """Adds the preparation to pipeline ``p`` (see the module docstring)."""
  if opts.shuffle not in ('files', 'beam'):
    raise DataError(f"shuffle must be 'files' or 'beam', got {opts.shuffle!r}", field='shuffle')
  fmt = parse.FORMATS[opts.format]
  B = opts.num_shards
  chunks = parse.plan_chunks(files, opts.chunk_bytes)
  parsed = (p | 'Chunks' >> beam.Create(chunks) | 'Spread' >> beam.Reshuffle()
            | 'Parse' >> beam.ParDo(_ParseChunk(fmt, B, opts.block_bytes,
                                                temp_dir if opts.shuffle == 'files' else None))
            .with_outputs(_ParseChunk.ITEMS, main='rows'))
  vocab = parsed[_ParseChunk.ITEMS] | 'Vocab' >> beam.CombineGlobally(_SortedUnion())
  if opts.shuffle == 'files':
    parts = parsed.rows | 'Parts' >> beam.combiners.ToList()
    buckets = p | 'Buckets' >> beam.Create(range(B))
    counts = buckets | 'Count' >> beam.Map(
        lambda b, parts: (b, _count_users(_bucket_rows(b, parts, ['user_id']))),
        parts=beam.pvalue.AsSingleton(parts))
    # Gathering and writing a bucket is one step: a PCollection of gathered buckets would be
    # materialised between stages (the whole release, in memory on the DirectRunner).
    shards = buckets | 'Write' >> beam.Map(
        lambda b, parts, vocab, counts: _write_shard(
            b, _bucket_rows(b, sorted(parts)), vocab=vocab, counts=counts, num_shards=B,
            output=opts.output),
        parts=beam.pvalue.AsSingleton(parts), vocab=beam.pvalue.AsSingleton(vocab),
        counts=beam.pvalue.AsDict(counts))
  else:
    empty = p | 'AllBuckets' >> beam.Create([(b, parse.COLUMNS.empty_table()) for b in range(B)])
    rows = ((parsed.rows, empty) | beam.Flatten() | 'Shuffle' >> beam.GroupByKey()
            | 'Concat' >> beam.MapTuple(lambda b, ts: (b, pa.concat_tables(list(ts)))))
    counts = rows | 'Count' >> beam.MapTuple(lambda b, t: (b, _count_users(t)))
    shards = rows | 'Write' >> beam.Map(
        lambda bt, vocab, counts: _write_shard(*bt, vocab=vocab, counts=counts, num_shards=B,
                                               output=opts.output),
        vocab=beam.pvalue.AsSingleton(vocab), counts=beam.pvalue.AsDict(counts))
  num_items = vocab | 'Items' >> beam.Map(_write_items, output=opts.output)
  (shards | 'Stats' >> beam.combiners.ToList()
   | 'Manifest' >> beam.Map(lambda s, n: _write_manifest(s, num_items=n, opts=opts, files=files),
                            n=beam.pvalue.AsSingleton(num_items)))


_WHERE = re.compile(r"^(?P<path>.+?)(?::(?P<line>\d+))?(?:, field '(?P<field>[^']*)')?: (?P<msg>.*?)"
                    r"(?: \[while running .*\])?$", re.S)


def _restored(e: DataError) -> DataError:
  """Beam re-raises a worker's exception as ``type(e)(message + ' [while running ...]')``, which
  drops the path/line/field attributes: rebuild them from the message."""
  if e.path is not None:
    return e
  m = _WHERE.match(str(e))
  if m is None:
    return DataError(str(e).split(' [while running')[0])
  return DataError(m['msg'], path=m['path'], line=int(m['line']) if m['line'] else None,
                   field=m['field'])


def run(opts: PrepareOptions, pipeline_args: Sequence[str] = ('--runner=DirectRunner',)) -> dict:
  """Runs the preparation to completion; returns the manifest. Extra ``pipeline_args`` are Beam's
  (``--runner``, ``--direct_num_workers``, ``--project``, ...)."""
  files = input_files(opts)
  FileSystems.mkdirs(opts.output) if not FileSystems.exists(opts.output) else None
  temp_dir = opts.temp_dir or f'{opts.output}/_tmp-{uuid.uuid4().hex[:8]}'
  if opts.shuffle == 'files' and not FileSystems.exists(temp_dir):
    FileSystems.mkdirs(temp_dir)
  try:
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as p:
      build(p, opts, files, temp_dir)
  except DataError as e:
    raise _restored(e) from None
  finally:
    if FileSystems.exists(temp_dir):
      FileSystems.delete([temp_dir])
  return seqrecord.read_manifest(opts.output)
