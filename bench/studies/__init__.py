"""Studies run by hand and kept as the record of a measurement; the harness
(``python -m bench``) never imports them.

:mod:`bench.studies.reveal` measures reveal mode ``servers`` against mode ``collector``
through the public API only (``python -m bench.studies.reveal``). The ingest profiling
studies of the per-share spool design (SHA-256, buffer copies, page cache against
``O_DIRECT``, fsync) were removed with that design: they described code that no longer
exists; they stand in the history before the durable accumulator.
"""
