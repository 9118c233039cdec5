"""Preparing a release beyond one machine's memory: a Beam pipeline from raw JSON lines to sharded
ArrayRecord per-user sequences (:mod:`.beam_pipeline`), their on-disk form (:mod:`.seqrecord`), and
the per-process Grain input that cuts training windows and evaluation cases from them
(:mod:`.source`). The Beam modules import ``apache_beam`` (the ``beam`` extra); :mod:`.seqrecord`
and :mod:`.source` do not.
"""

from llm4rec_jax.data.prepare.seqrecord import (SCHEMA_VERSION, UserSequence, decode, encode,
                                                read_items, read_manifest)

__all__ = ['SCHEMA_VERSION', 'UserSequence', 'decode', 'encode', 'read_items', 'read_manifest']
