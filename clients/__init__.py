"""The client library: trainers (:mod:`.trainer`) and the collector (:mod:`.collector`).

Users import from :mod:`mpcagg`; nothing here imports :mod:`mpcagg.servers`.
"""
