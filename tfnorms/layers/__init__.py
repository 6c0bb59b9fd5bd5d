"""The layers: the normalization families on their two bases (`base`,
`batch_statistics`, `per_example`), and the kernel-norm wrappers
(`kernel_norm_wrapper`, `weight_norm`, `bounded_weight_norm`).

Public names are exported from `tfnorms` itself.
"""
