"""Cross-process reductions for synchronized statistics on the PyTorch backend.

The PyTorch counterpart of `tfnorms.distribute` (docs/distributed.md,
"PyTorch"). Where `torch.distributed` is initialized with more than one
process (`torch.distributed.init_process_group`, as `torchrun` and
`DistributedDataParallel` training do), `reduction(True)` is a
`Replicated` whose merge is `cross_process_reduce`: the statistics of the
layers with `synchronized=True` are those of the global batch, every
process's share together. Elsewhere (no process group, one process) the
layers compute the statistics of the batch they see, as on JAX.

Design, the same as on TensorFlow:

- One collective per call: the sums are flattened, each gathered tensor is
  written into this process's slot of a zero tensor of `world_size` slots,
  and everything travels in one `torch.distributed.all_reduce(SUM)` over the
  default process group.
- Differentiable: the reduction is a `torch.autograd.Function` whose
  backward is again one `all_reduce(SUM)`, of the gradient. Each process's
  loss depends on the reduced value that every process sees, so the
  gradient of the sum of the processes' losses with respect to one
  process's contribution is the sum over the processes of their output
  gradients. Each process's input and weight gradients are then those of
  one device on the global batch (the weights' summed over processes, as
  `DistributedDataParallel` sums them before it averages).
- Every process must run the same collectives in the same order, forward
  and backward: the statistics keep a process with no rows (or no valid
  rows) connected to the graph (`zero_if_empty`), so it runs the same
  backward collectives, with zero gradients, as the others.
"""

from __future__ import annotations

import keras

from tfnorms._math import replicas


def process_group_size():
    """The number of processes of the initialized default
    `torch.distributed` process group when it is more than one; `None`
    otherwise (another backend, no process group, one process)."""
    if keras.backend.backend() != "torch":
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return size if size > 1 else None


_ALL_REDUCE = []


def _all_reduce_function():
    """The differentiable SUM all-reduce (a `torch.autograd.Function`),
    defined once, on first use, so that importing tfnorms imports no torch."""
    if _ALL_REDUCE:
        return _ALL_REDUCE[0]
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        """`all_reduce(SUM)` whose backward is the `all_reduce(SUM)` of the
        gradient."""

        @staticmethod
        def forward(ctx, tensor):
            reduced = tensor.detach().clone().contiguous()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            return reduced

        @staticmethod
        def backward(ctx, gradient):
            reduced = gradient.detach().clone().contiguous()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            return reduced

    _ALL_REDUCE.append(AllReduceSum)
    return AllReduceSum


def cross_process_reduce(sums=(), gathers=()):
    """Sum `sums` and all-gather `gathers` across processes in one collective.

    The PyTorch counterpart of `tfnorms.distribute.cross_replica_reduce`,
    over the default `torch.distributed` process group.

    Args:
        sums: tensors of one floating dtype; each is returned summed over the
            processes.
        gathers: tensors of that dtype; each is returned with a new leading
            axis of size `world_size`, slot `r` holding process `r`'s value.

    Returns:
        `(summed, gathered)`, two lists. Without a process group of more
        than one process, the sums come back unchanged and each gathered
        tensor with a leading axis of size 1.
    """
    sums, gathers = list(sums), list(gathers)
    size = process_group_size()
    if size is None:
        return sums, [keras.ops.expand_dims(g, 0) for g in gathers]

    import torch
    import torch.distributed as dist

    tensors = [keras.ops.convert_to_tensor(t) for t in sums + gathers]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(
            f"cross_process_reduce needs one dtype; received {sorted(map(str, dtypes))}."
        )
    (dtype,) = dtypes
    device = tensors[0].device
    slot = torch.zeros(size, dtype=dtype, device=device)
    slot[dist.get_rank()] = 1

    pieces = [t.reshape(-1) for t in tensors[: len(sums)]]
    for t in tensors[len(sums) :]:
        pieces.append((slot[:, None] * t.reshape(1, -1)).reshape(-1))
    sizes = [piece.numel() for piece in pieces]
    reduced = _all_reduce_function().apply(torch.cat(pieces))
    parts = torch.split(reduced, sizes)

    summed = [parts[i].reshape(tensors[i].shape) for i in range(len(sums))]
    gathered = [
        part.reshape(size, *t.shape)
        for part, t in zip(parts[len(sums) :], tensors[len(sums) :], strict=True)
    ]
    return summed, gathered


def reduction(synchronized):
    """The `reduction` argument of the statistics (`tfnorms._math.stats`): a
    `Replicated` over this module's collective when `synchronized` and an
    initialized process group has more than one process, else `LOCAL`."""
    if not synchronized or process_group_size() is None:
        return replicas.LOCAL
    return replicas.Replicated(cross_process_reduce)
