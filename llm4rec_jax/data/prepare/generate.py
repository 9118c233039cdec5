"""A seeded, Amazon-Electronics-2023-shaped raw release streamed to disk in bounded memory.

Shape at ``scale=1``: about 18.3M users, 1.6M items and 43.9M ratings (Electronics in Amazon
Reviews 2023), most users with 1-2 ratings: per-user counts follow a discrete power law on
1..``max_per_user`` whose exponent is solved for the target mean; items are drawn from a Zipf-like
popularity. Lines carry the fields of the real ``Electronics.jsonl`` (``rating``, ``title``, ``text``,
``images``, ``asin``, ``parent_asin``, ``user_id``, ``timestamp`` in ms, ``helpful_vote``,
``verified_purchase``), shuffled within blocks of users so a user's reviews are not contiguous.
Memory is one block of users plus the item popularity table (O(items)).
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

FULL_USERS = 18_300_000
FULL_ITEMS = 1_610_000
FULL_RATINGS = 43_900_000
_B32 = np.frombuffer(b'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', np.uint8)
_WORDS = ('great works fine cable battery sound quality price easy use charger screen fast bought '
          'would recommend product good not very well love does after months broke stopped return '
          'the and it this for with was my is to of a in on as but too small bright loud cheap '
          'perfect expected described item seller packaging arrived quickly durable').split()


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection of uint64, so distinct inputs give distinct ids."""
  x = x.astype(np.uint64)
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _base32(x: np.ndarray, digits: int) -> np.ndarray:
  d = (x[:, None] >> (np.uint64(5) * np.arange(digits, dtype=np.uint64))) & np.uint64(31)
  return np.ascontiguousarray(_B32[d.astype(np.int64)]).view(f'S{digits}')[:, 0]


def user_ids(index: np.ndarray, seed: int) -> np.ndarray:
  """28-character ids like 'AGKHLEW2SOWHNMFQIJGBECAF7INQ', unique per index."""
  x = _mix(index.astype(np.uint64) + np.uint64(seed) * np.uint64(1 << 40))
  return np.char.add(np.char.add(b'A', _base32(x, 13)), _base32(_mix(x), 14))


def item_ids(index: np.ndarray) -> np.ndarray:
  """10-character ASIN-like ids 'B0XXXXXXXX', unique per index < 2**40."""
  with np.errstate(over='ignore'):
    x = (index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 | 1)) & np.uint64((1 << 40) - 1)
  return np.char.add(b'B0', _base32(x, 8))


def _power_law(mean: float, max_k: int) -> np.ndarray:
  """P(k) ∝ k^-a on 1..max_k with the exponent ``a`` solved (bisection) for ``mean``."""
  k = np.arange(1, max_k + 1, dtype=np.float64)
  lo, hi = 1.01, 6.0
  for _ in range(60):
    a = (lo + hi) / 2
    p = k ** -a
    if (k * p).sum() / p.sum() > mean:
      lo = a
    else:
      hi = a
  return p / p.sum()


def generate(output: str | os.PathLike, *, scale: float = 0.01, seed: int = 0, gzip_output: bool = False,
             users_per_block: int = 100_000, max_per_user: int = 2000) -> dict:
  """Writes ``Electronics.jsonl`` (or ``.jsonl.gz``) under ``output``; returns the counts."""
  rng = np.random.default_rng(seed)
  num_users = max(1, int(round(FULL_USERS * scale)))
  num_items = max(1, int(round(FULL_ITEMS * scale)))
  p_count = _power_law(FULL_RATINGS / FULL_USERS, max_per_user)
  popularity = np.cumsum((np.arange(num_items) + 10.0) ** -0.9)
  popularity /= popularity[-1]
  texts = [json.dumps(' '.join(rng.choice(_WORDS, size=int(min(400, rng.geometric(1 / 35))))))
           for _ in range(4096)]
  titles = [json.dumps(' '.join(rng.choice(_WORDS, size=int(rng.integers(1, 8)))).capitalize())
            for _ in range(1024)]
  t0, t1 = 946_684_800_000, 1_694_000_000_000  # 2000-01-01 .. 2023-09 in ms
  os.makedirs(output, exist_ok=True)
  path = os.path.join(os.fspath(output), 'Electronics.jsonl' + ('.gz' if gzip_output else ''))
  opener = (lambda: gzip.open(path, 'wt', encoding='utf-8', compresslevel=3)) if gzip_output else (
      lambda: open(path, 'w', encoding='utf-8'))
  total, seen = 0, np.zeros(num_items, bool)
  with opener() as f:
    for start in range(0, num_users, users_per_block):
      n = min(users_per_block, num_users - start)
      counts = rng.choice(max_per_user, size=n, p=p_count) + 1
      user = np.repeat(np.arange(start, start + n), counts)
      m = len(user)
      item = np.minimum(np.searchsorted(popularity, rng.random(m)), num_items - 1)
      seen[item] = True
      ts = (t0 + (t1 - t0) * rng.beta(4.0, 1.5, m)).astype(np.int64)
      rating = rng.choice(5, size=m, p=[0.08, 0.05, 0.08, 0.16, 0.63]) + 1
      votes = rng.geometric(0.6, m) - 1
      verified = rng.random(m) < 0.9
      text = rng.integers(0, len(texts), m)
      title = rng.integers(0, len(titles), m)
      perm = rng.permutation(m)
      uid = user_ids(user, seed).astype(str)
      iid = item_ids(item).astype(str)
      f.write(''.join(
          f'{{"rating": {rating[j]}.0, "title": {titles[title[j]]}, "text": {texts[text[j]]}, '
          f'"images": [], "asin": "{iid[j]}", "parent_asin": "{iid[j]}", "user_id": "{uid[j]}", '
          f'"timestamp": {ts[j]}, "helpful_vote": {votes[j]}, '
          f'"verified_purchase": {"true" if verified[j] else "false"}}}\n' for j in perm))
      total += m
  return dict(path=path, users=num_users, items_in_catalog=num_items,
              items_rated=int(seen.sum()), ratings=total)
