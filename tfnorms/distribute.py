"""Cross-replica reductions for synchronized statistics.

The TensorFlow-specific module of the package (docs/design.md,
"Distribution"; its PyTorch counterpart is `tfnorms.distribute_torch`).
The layers hand `reduction(synchronized)` to the pure statistics functions
of `tfnorms._math.stats`; it wraps `cross_replica_reduce` when they are
synchronized and run in a replica context of a `tf.distribute` strategy
with more than one replica (`MirroredStrategy`,
`MultiWorkerMirroredStrategy`, ...).

Design:

- One collective per call. Everything a stage of the statistics needs (the
  per-channel sums and the element count; or the per-channel maxima / top-k
  values) is flattened into one vector and reduced by a single
  `ReplicaContext.all_reduce(SUM)`. Keras's own synchronized batch norm issues
  three all-reduces per layer; ours issue two (one for the mean, one for the
  scale), and mean-only batch norm one.
- `all_reduce` offers SUM and MEAN only. A maximum or a top-k across replicas
  needs every replica's values: each replica writes its values into its own
  slot of a zero tensor of `num_replicas` slots, and the SUM all-reduce of
  those tensors is the all-gather. It rides in the same collective as the
  sums, and its gradient is again one all-reduce (TensorFlow's
  `all_gather` gradient adds two collectives to the backward pass).
- On the PyTorch backend, `tfnorms.distribute_torch` does the same over the
  processes of an initialized `torch.distributed` process group (one
  differentiable `all_reduce`); without one, nothing is reduced.
- On the JAX backend, and with no strategy or one replica, nothing is
  reduced: the layers then compute the statistics of the batch they see. On
  JAX that is already the global batch when the training step is jitted
  over a batch sharded across devices (`keras.distribution.DataParallel`):
  XLA inserts the cross-device reductions itself.
"""

from __future__ import annotations

import keras

from tfnorms._math import replicas


def replica_context():
    """The current `tf.distribute.ReplicaContext` when there is more than one
    replica to synchronize with; `None` otherwise (JAX, no strategy, one
    replica, or a cross-replica context)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def cross_replica_reduce(sums=(), gathers=(), context=None):
    """Sum `sums` and all-gather `gathers` across replicas in one collective.

    Args:
        sums: tensors with static shapes; each is returned summed over the
            replicas.
        gathers: tensors with static shapes; each is returned with a new
            leading axis of size `num_replicas`, slot `r` holding replica `r`'s
            value.
        context: the replica context (default: `replica_context()`).

    Returns:
        `(summed, gathered)`, two lists. Without a multi-replica context, the
        sums come back unchanged and each gathered tensor with a leading axis
        of size 1.
    """
    sums, gathers = list(sums), list(gathers)
    context = context if context is not None else replica_context()
    if context is None:
        return sums, [keras.ops.expand_dims(g, 0) for g in gathers]

    import tensorflow as tf

    tensors = [tf.convert_to_tensor(t) for t in sums + gathers]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(
            f"cross_replica_reduce needs one dtype; received {sorted(map(str, dtypes))}."
        )
    for t in tensors:
        if not t.shape.is_fully_defined():
            raise ValueError(f"cross_replica_reduce needs static shapes; received {t.shape}.")
    (dtype,) = dtypes
    replicas = context.num_replicas_in_sync
    slot = tf.one_hot(context.replica_id_in_sync_group, replicas, dtype=dtype)

    pieces = [tf.reshape(t, [-1]) for t in tensors[: len(sums)]]
    for t in tensors[len(sums) :]:
        pieces.append(tf.reshape(slot[:, None] * tf.reshape(t, [1, -1]), [-1]))
    sizes = [int(piece.shape[0]) for piece in pieces]
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(pieces, axis=0))
    parts = tf.split(reduced, sizes, axis=0)

    summed = [tf.reshape(parts[i], tensors[i].shape) for i in range(len(sums))]
    gathered = [
        tf.reshape(part, [replicas, *t.shape])
        for part, t in zip(parts[len(sums) :], tensors[len(sums) :], strict=True)
    ]
    return summed, gathered


def reduction(synchronized):
    """The `reduction` argument of the statistics (`tfnorms._math.stats`): a
    `Replicated` over this module's collective when `synchronized` and there
    are replicas to reduce over, else `LOCAL` (the statistics of this batch).
    On the PyTorch backend, `tfnorms.distribute_torch.reduction`: the
    processes of an initialized `torch.distributed` process group."""
    if synchronized and keras.backend.backend() == "torch":
        from tfnorms import distribute_torch

        return distribute_torch.reduction(synchronized)
    context = replica_context() if synchronized else None
    if context is None:
        return replicas.LOCAL
    return replicas.Replicated(
        lambda sums, gathers: cross_replica_reduce(sums, gathers, context=context)
    )
