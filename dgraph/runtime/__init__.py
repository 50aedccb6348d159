"""Layer 6, the runtime: a validated graph trained into a run directory.

:mod:`~dgraph.runtime.setup` builds a run once (device, seeding, stages, weights, loaders,
caches, optimizers); :mod:`~dgraph.runtime.step` runs one update with its non-finite and
failure checks; :mod:`~dgraph.runtime.state` is what a checkpoint holds;
:mod:`~dgraph.runtime.evaluate` the held-out metrics; :mod:`~dgraph.runtime.train` the loop.
Files, locks, logs and signals: :mod:`~dgraph.runtime.rundir`, :mod:`~dgraph.runtime.checkpoint`,
:mod:`~dgraph.runtime.logging`, :mod:`~dgraph.runtime.shutdown`. The runtime imports nothing
above it (no ``dgraph.viz``): the entry point :func:`dgraph.api.train` hands it the pictures.
"""

__all__: list[str] = []
