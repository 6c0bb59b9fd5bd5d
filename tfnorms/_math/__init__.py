"""The math of tfnorms, pure functions of `keras.ops` (no layers, no state).

Bottom up: `reduce` (constants, dtypes, axes, counts, masked means), `select`
(top-k and extremes with their gradients), `replicas` (local or cross-replica
merging of statistics), `stats` (Lp statistics), `apply` (normalize, dtype
policy) and, apart, `kernel` (the weight-norm reparameterization).
"""
