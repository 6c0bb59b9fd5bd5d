"""The k largest entries per channel of a batch that JAX shards across
devices (`keras.distribution.DataParallel`): each device selects among its
own share, and one all-gather of those k per device gives the global k.

Under `DataParallel` a jitted step runs over the global batch, which XLA
partitions along the batch axis; it partitions the single-device selection
(`select.top_k_values`) too, but with an all-gather of the block maxima and
a gather across devices per layer, which cost a top-10 batch norm's
training step on two host devices 1.19-1.22x Keras's layer against
1.05x on one device (docs/design.md, "Distribution", JAX). The global k
largest are among the devices' own k largest (a device's entries above the
global k-th largest are fewer than k), so selecting per shard is exact for
any values, ties and sentinels included.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnorms._math.reduce import kept_axes


def batch_mesh(values, axis, k):
    """`(mesh, batch axis name)` where the k largest of `values` per channel
    should be selected per shard: the JAX backend under a Keras
    `DataParallel` distribution over several devices, `values`' first axis
    (its batch) among the reduced ones with a static size that the devices
    divide, and at least k entries per channel in all (with fewer, the
    result has fewer columns than k). None otherwise, and with a JAX that
    has no public `jax.shard_map` (older releases): XLA's partitioning then."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    if not hasattr(jax, "shard_map"):
        return None
    distribution = keras.distribution.distribution()
    if type(distribution) is not keras.distribution.DataParallel:
        return None
    devices = distribution.device_mesh.devices.size
    ndim = len(values.shape)
    if devices < 2 or 0 in kept_axes(ndim, axis):
        return None
    reduced = [values.shape[a] for a in range(ndim) if a not in kept_axes(ndim, axis)]
    if any(d is None for d in reduced) or values.shape[0] % devices:
        return None
    if math.prod(reduced) < k:
        return None
    return distribution.device_mesh.backend_mesh, distribution.batch_dim_name


def top_k_values(values, k, local_top_k, mesh, batch_name):
    """`(*kept sizes, k)`: the k largest of each channel of `values`, from
    `local_top_k(share)` (the k largest of a device's share, padded to k
    with sentinels, `(*kept sizes, k)`) on every device and one top_k over
    the devices' k."""
    import jax
    from jax.sharding import PartitionSpec

    def local(share):
        return ops.expand_dims(local_top_k(share), 0)  # a leading device axis

    spec = PartitionSpec(batch_name)
    tops = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(values)
    devices = tops.shape[0]
    # (devices, *kept, k) -> (*kept, devices * k)
    candidates = ops.reshape(ops.moveaxis(tops, 0, -2), (*tops.shape[1:-1], devices * k))
    top, _ = ops.top_k(candidates, k, sorted=False)
    return top
