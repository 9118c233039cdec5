"""``python -m llm4rec_jax.data.prepare --input DIR --output DIR [--runner DirectRunner] [--num_shards N]``

Converts a raw Amazon Reviews 2023 (``{Category}.jsonl[.gz]``) or Yelp Open Dataset review file into
sharded ArrayRecord per-user sequences (see :mod:`llm4rec_jax.data.prepare`). Flags this parser does
not know are passed to Beam (``--direct_num_workers=2``, ``--project``, ``--region``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys

from llm4rec_jax.data.prepare import beam_pipeline
from llm4rec_jax.errors import Llm4RecError


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m llm4rec_jax.data.prepare',
                              description=__doc__.splitlines()[0])
  p.add_argument('--input', required=True, help='release directory or one JSON-lines file')
  p.add_argument('--output', required=True, help='output directory (local, gs://, ...)')
  p.add_argument('--format', default='amazon-2023', choices=['amazon-2023', 'yelp-open'])
  p.add_argument('--category', default=None, help='Amazon category when the folder holds several')
  p.add_argument('--num_shards', type=int, default=16)
  p.add_argument('--shuffle', default='files', choices=['files', 'beam'],
                 help="'files': bucket files under --temp_dir (bounded on the DirectRunner); "
                      "'beam': the runner's GroupByKey")
  p.add_argument('--temp_dir', default=None)
  p.add_argument('--chunk_mb', type=int, default=256)
  p.add_argument('--block_mb', type=int, default=16)
  p.add_argument('--runner', default='DirectRunner')
  args, beam_args = p.parse_known_args(argv)
  opts = beam_pipeline.PrepareOptions(
      input=args.input, output=args.output, format=args.format, category=args.category,
      num_shards=args.num_shards, shuffle=args.shuffle, temp_dir=args.temp_dir,
      chunk_bytes=args.chunk_mb << 20, block_bytes=args.block_mb << 20)
  try:
    manifest = beam_pipeline.run(opts, [f'--runner={args.runner}', *beam_args])
  except Llm4RecError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps({k: v for k, v in manifest.items() if k != 'shards'}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
