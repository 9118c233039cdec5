#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what the lent GPU machine lacks for benchmarks/gpu_suite.sh, so that
# its scarce time goes to measuring: the wheels of the packages its image does not hold (grain,
# ml_collections and their needs; Python 3.12, x86-64) in .whl/, and the Beauty data in .gpu_data/
# (copied from $LLM4REC_DATA_DIR; both folders are git-ignored through .git/info/exclude and are never
# committed). Then one device call runs everything (carry .whl and .gpu_data):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
#     LLM4REC_DATA_DIR=$PWD/.gpu_data && bash benchmarks/gpu_suite.sh
#
#   bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data="${LLM4REC_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for d in /.whl/ /.gpu_data/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
rm -rf .whl && mkdir -p .whl
# Versions as installed here; --no-deps: each need is named (the image holds the rest).
pins=$(python3 -m pip list --format=freeze 2>/dev/null | grep -iE '^(grain|array[-_]record|ml[-_]collections|dm[-_]tree)==' || true)
if [ -z "$pins" ]; then pins="grain array-record ml-collections dm-tree"; fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
rm -rf .gpu_data && mkdir -p .gpu_data/amazon
cp -r "$data/amazon/beauty" .gpu_data/amazon/
cp "$data/README.md" .gpu_data/ 2>/dev/null || true
du -sh .whl .gpu_data
