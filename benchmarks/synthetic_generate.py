"""Speed of the embedded synthetic dataset's generator (the default job's data): one JSON line.

Target: the default configuration generates in at most 3 s on one core of the 2-core CPU. (This
was a timed unit test; timing targets live in benchmarks, where a loaded machine cannot fail CI.)

  python benchmarks/synthetic_generate.py [--repeats 3] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import provenance

from llm4rec_jax.data.synthetic import generate

TARGET_S = 3.0


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default='')
  args = p.parse_args()
  record = provenance.start()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    ds = generate()
    times.append(time.perf_counter() - start)
  record.update({'benchmark': 'synthetic_generate', 'seeds': [0], 'interactions': int(len(ds.user)),
                 'seconds': [round(t, 3) for t in times], 'best_s': round(min(times), 3),
                 'target_s': TARGET_S, 'meets_target': min(times) <= TARGET_S})
  provenance.finish(record)
  print(json.dumps(record))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(record, indent=1) + '\n')


if __name__ == '__main__':
  main()
