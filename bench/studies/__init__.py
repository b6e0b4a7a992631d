"""One-off profiling studies, kept as the record of a measurement; not part of the
benchmark harness (``python -m bench`` never imports them).

:mod:`bench.studies.ingest` and :mod:`bench.studies.pipelines` measured where a server's
ingest time went when every full share was spooled to a file of its own (SHA-256,
buffer copy, page-cache vs ``O_DIRECT`` writes, fsync, rename), the design before the
durable accumulator (:mod:`mpcagg.servers.accumulator`). They wrap the servicer from the
outside and match profiler rows by function name, so they describe that code and may
need adapting before they say anything about the current one. Run as
``python -m bench.studies.ingest``.
"""
