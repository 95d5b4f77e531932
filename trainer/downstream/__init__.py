"""Downstream transfer of the upstream representations (paper Sec. 3.4): the upstream
SavedModel as Keras layers, point-in-time representation features, the transfer layers
(non-linear adapter, linear fusion, isomorphic interaction module, standalone retrieval) and
the downstream ranker."""
