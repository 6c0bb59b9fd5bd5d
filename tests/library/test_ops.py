"""The Lp statistics of tfnorms._math.stats (docs/design.md, "Lp batch
normalization") against the NumPy references of lp_reference.py."""

import math
import re

import keras
import numpy as np
import pytest
from keras import ops
from layer_checks import is_tensorflow, to_numpy, value_and_gradients
from lp_reference import c_inf as np_c_inf
from lp_reference import gaussian_abs_moment as np_gaussian_abs_moment
from lp_reference import lp_statistics as np_lp_statistics

from tfnorms._math import apply, reduce, select, stats, torch_top_k
from tfnorms._math.top_k import top_k_deviation_mean


def t(x):
    """A tensor keeping NumPy's dtype (JAX's convert_to_tensor would make
    float64 into float32)."""
    x = np.asarray(x)
    return ops.convert_to_tensor(x, dtype=str(x.dtype))


P_CASES = [(1.0, None), (1.5, None), (2.0, None), (3.0, None), (math.inf, None)]
P_CASES += [(math.inf, 1), (math.inf, 3), (math.inf, 10)]
P_IDS = [f"p{p}" + (f"-top{k}" if k else "") for p, k in P_CASES]


# ---------------------------------------------------------------- constants
@pytest.mark.parametrize("p", [1, 1.5, 2, 3, 4.5, 8])
def test_lp_constant_makes_gaussian_scale_unbiased(p):
    # C_p * E(|X|^p)^(1/p) = 1 for the standard normal.
    assert reduce.lp_constant(p) * np_gaussian_abs_moment(p) ** (1 / p) == pytest.approx(
        1.0, rel=1e-9
    )


def test_lp_constant_published_values():
    assert reduce.lp_constant(1) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-12)
    assert reduce.lp_constant(2) == pytest.approx(1.0, rel=1e-12)
    assert reduce.lp_constant(3) == pytest.approx(0.8557, abs=5e-5)
    # Large p goes through lgamma: finite, no overflow.
    assert math.isfinite(reduce.lp_constant(1000.0))


@pytest.mark.parametrize("p", [0.5, math.inf, math.nan, "x", None])
def test_lp_constant_refuses_bad_p(p):
    with pytest.raises(ValueError, match=rf"p >= 1; received p={re.escape(repr(p))}\."):
        reduce.lp_constant(p)


@pytest.mark.parametrize("n", ["x", None, True])
def test_linf_constant_refuses_what_is_not_a_count(n):
    with pytest.raises(ValueError, match=rf"element count n .*; received n={re.escape(repr(n))}\."):
        reduce.linf_constant(n)


@pytest.mark.parametrize("n", [2, 3, 10, 1000, 10**6])
def test_linf_constant_formula_and_bounds(n):
    assert reduce.linf_constant(n) == pytest.approx(np_c_inf(n), rel=1e-12)
    # The supplement's bounds: C_inf(n) times the two bounds on E||x - mu||_inf
    # are the same constants for every n: 0.740 and 1.543 (the paper prints
    # 0.793 for the first, an arithmetic slip).
    if n > 2:
        lower = reduce.linf_constant(n) * math.sqrt(math.log(n) / (math.pi * math.log(2)))
        upper = reduce.linf_constant(n) * math.sqrt(2 * math.log(n))
        assert lower == pytest.approx(0.740, abs=5e-4)
        assert upper == pytest.approx(1.543, abs=5e-4)


@pytest.mark.parametrize("n", [0, 1, 1.5, 2])
def test_linf_constant_guards_small_n(n):
    value = reduce.linf_constant(n)
    assert math.isfinite(value) and value == pytest.approx(np_c_inf(2))
    tensor = to_numpy(reduce.linf_constant(t(float(n))))
    assert np.isfinite(tensor) and tensor == pytest.approx(np_c_inf(2), rel=1e-6)


def test_linf_constant_tensor_matches_python():
    n = np.array([2.0, 5.0, 64.0, 1e5])
    got = to_numpy(reduce.linf_constant(t(n)))
    np.testing.assert_allclose(got, [np_c_inf(v) for v in n], rtol=1e-12)


# ----------------------------------------------------------- the statistics
@pytest.mark.parametrize(("p", "top_k"), P_CASES, ids=P_IDS)
@pytest.mark.parametrize("axis", [-1, 1])
def test_lp_statistics_match_numpy(p, top_k, axis, rng):
    x = rng.normal(1.5, 2.0, size=(6, 3, 5, 4)) * rng.uniform(0.5, 3, size=(1, 3, 1, 4))
    mean, variance = stats.lp_statistics(t(x), axis, p=p, top_k=top_k)
    want_mean, want_variance = np_lp_statistics(x, axis, p, top_k)
    np.testing.assert_allclose(to_numpy(mean), want_mean, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(to_numpy(variance), want_variance, rtol=1e-8)


@pytest.mark.parametrize(("p", "top_k"), P_CASES, ids=P_IDS)
def test_lp_statistics_with_mask_match_numpy(p, top_k, rng):
    x = rng.normal(-1.0, 3.0, size=(5, 7, 3))
    mask = rng.uniform(size=(5, 7, 1)) < 0.6
    mean, variance = stats.lp_statistics(t(x), -1, p=p, top_k=top_k, mask=t(mask))
    want_mean, want_variance = np_lp_statistics(x, -1, p, top_k, mask=mask)
    np.testing.assert_allclose(to_numpy(mean), want_mean, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(to_numpy(variance), want_variance, rtol=1e-8)


def test_lp_statistics_float32_dtype_and_float16_accumulate_in_float32(rng):
    x = rng.normal(size=(8, 3)).astype("float16")
    mean, variance = stats.lp_statistics(t(x), -1, p=1)
    assert keras.backend.standardize_dtype(mean.dtype) == "float32"
    assert keras.backend.standardize_dtype(variance.dtype) == "float32"
    want_mean, want_variance = np_lp_statistics(x.astype(np.float64), -1, 1.0)
    np.testing.assert_allclose(to_numpy(mean), want_mean, atol=2e-3)
    np.testing.assert_allclose(to_numpy(variance), want_variance, rtol=5e-3)


def test_top_k_with_fewer_elements_than_k(rng):
    # n = 4 < k = 10: the mean of all four deviations.
    x = rng.normal(size=(4, 3))
    _, variance = stats.lp_statistics(t(x), -1, p=math.inf, top_k=10)
    dev = np.abs(x - x.mean(0))
    np.testing.assert_allclose(to_numpy(variance), (np_c_inf(4) * dev.mean(0)) ** 2, rtol=1e-8)


def _function_and_gradient(function, x):
    """`function(x)` (a scalar) and its gradient with respect to `x`, on any backend."""
    value, (grad,) = value_and_gradients(function, np.asarray(x))
    return value, grad


@pytest.mark.parametrize(
    ("shape", "k"), [((64, 3), 3), ((40, 5, 2), 10), ((6, 8, 8, 4), 10), ((97, 2), 4)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_values_match_a_full_sort(shape, k, ties, rng):
    """top_k_values (blockwise for channels-last inputs with a static size)
    returns each channel's k largest entries, with ties and -1 sentinels too."""
    x = np.abs(rng.normal(size=shape))
    if ties:
        x = np.round(x * 2) / 2  # few distinct values: ties at the k-th largest
        x[rng.random(shape) < 0.2] = -1.0  # masked sentinels
    columns = x.reshape(-1, shape[-1])
    want_top = -np.sort(-columns, axis=0)[:k].T  # (channels, k), descending
    top = to_numpy(select.top_k_values(t(x), k, -1))
    np.testing.assert_array_equal(-np.sort(-top, axis=-1), want_top)


def _xla_compiled(function):
    """`function` as XLA compiles it: under tf.function(jit_compile=True) on
    TensorFlow; JAX compiles each op; PyTorch runs it eagerly."""
    if not is_tensorflow():
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


@pytest.mark.parametrize("ties", [False, True])
def test_k_largest_columns_match_a_sort_under_xla_on_a_cpu(ties, rng, monkeypatch):
    """k_largest_columns over many channels, as XLA compiles it on a CPU (k
    rounds of max, no top_k there): each column's k largest values with
    their k distinct rows, ties and a NaN column included."""
    k, rows, columns = 10, 48, select.MIN_ROUNDS_CHANNELS
    x = rng.normal(size=(rows, columns)).astype("float32")
    if ties:
        x = np.round(x * 2) / 2  # few distinct values: ties everywhere
    x[5, 3] = x[17, 3] = np.nan
    if keras.backend.backend() != "torch":  # PyTorch never takes the rounds

        def no_top_k(*args, **kwargs):
            raise AssertionError("top_k called: the rounds were not taken")

        monkeypatch.setattr(select.ops, "top_k", no_top_k)

    top, at = (to_numpy(v) for v in _xla_compiled(lambda v: select.k_largest_columns(v, k))(t(x)))

    def ranked(values):  # descending per column, NaN as the largest
        return -np.sort(-np.where(np.isnan(values), np.inf, values), axis=0)

    np.testing.assert_array_equal(ranked(top), ranked(x)[:k])
    for c in range(columns):
        assert len(set(at[:, c])) == k  # k distinct rows
        np.testing.assert_array_equal(x[at[:, c], c], top[:, c])


@pytest.mark.parametrize("ties", [False, True])
def test_nested_blockwise_top_k_under_xla_on_a_cpu(ties, rng, monkeypatch):
    """With many rows and channels, under XLA on a CPU, the k largest block
    maxima come blockwise too (blocks of the maxima): the values are still
    each channel's k largest, with ties and sentinels."""
    k, shape = 10, (1024, select.MIN_NESTED_CHANNELS)
    x = np.abs(rng.normal(size=shape)).astype("float32")
    if ties:
        x = np.round(x * 2) / 2
        x[rng.random(shape) < 0.2] = -1.0
    calls = []
    original = select._blockwise_top_k

    def counting(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(select, "_blockwise_top_k", counting)
    top = to_numpy(_xla_compiled(lambda v: select.top_k_values(v, k, -1))(t(x)))
    want = -np.sort(-x, axis=0)[:k].T
    np.testing.assert_array_equal(-np.sort(-top, axis=-1), want)
    if keras.backend.backend() != "torch":  # PyTorch is never compiled by XLA
        assert len(calls) == 2, calls


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("shape", "k"), [((16, 4, 3), 5), ((3, 2, 3), 10)])
def test_top_k_deviation_mean_and_its_gradient_match_numpy(shape, k, masked, rng):
    """The value is the mean of each channel's k largest valid |x - mean|
    (all of them where fewer are valid); the gradient with respect to x is
    sign(x - mean) / (number averaged) on exactly those entries, and the
    gradient with respect to the mean is minus its sum."""
    x = rng.normal(size=shape)
    mean = rng.normal(size=(1, 1, shape[-1]))
    mask = rng.random((*shape[:-1], 1)) < 0.7 if masked else np.ones((*shape[:-1], 1), bool)
    mask_t = t(mask) if masked else None
    weights = rng.uniform(1.0, 2.0, size=shape[-1])

    def weighted(x, mean):
        value = top_k_deviation_mean(x, mean, k, -1, mask_t)
        return ops.sum(value * ops.convert_to_tensor(weights, value.dtype))

    deviation = np.where(mask, np.abs(x - mean), -1.0).reshape(-1, shape[-1])
    want_grad = np.zeros_like(deviation)
    want_value = 0.0
    for c in range(shape[-1]):
        valid = np.flatnonzero(deviation[:, c] >= 0)
        top = valid[np.argsort(-deviation[valid, c])][:k]
        want_value += weights[c] * deviation[top, c].mean()
        want_grad[top, c] = weights[c] / len(top)
    want_grad = want_grad.reshape(shape) * np.sign(x - mean)

    value, (grad_x, grad_mean) = value_and_gradients(weighted, x, mean)
    assert float(value) == pytest.approx(want_value, rel=1e-12)
    np.testing.assert_allclose(to_numpy(grad_x), want_grad, atol=1e-12)
    np.testing.assert_allclose(
        to_numpy(grad_mean), -want_grad.sum(axis=(0, 1), keepdims=True), atol=1e-12
    )


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("masked", [False, True])
def test_top_k_in_a_tensorflow_graph_is_an_xla_cluster_with_the_eager_values(masked, rng):
    """In a traced TensorFlow function without jit_compile (what `fit` runs
    by default) the top-k statistic runs as an XLA-compiled function of its
    own, so that its elementwise passes fuse; value and gradients (ties and
    masks included) equal the eager computation's."""
    import tensorflow as tf

    shape, k = (64, 8, 16), 10
    x = tf.constant(np.round(rng.normal(size=shape) * 2) / 2, tf.float32)  # ties
    mean = tf.constant(rng.normal(size=(1, 1, shape[-1])), tf.float32)
    mask = tf.constant(rng.random((*shape[:-1], 1)) < 0.7) if masked else None

    def value_and_grads(x, mean):
        with tf.GradientTape() as tape:
            tape.watch([x, mean])
            value = top_k_deviation_mean(x, mean, k, -1, mask)
            total = tf.reduce_sum(value * tf.range(1.0, shape[-1] + 1.0))
        return [value, *tape.gradient(total, [x, mean])]

    traced = tf.function(value_and_grads)
    graph = traced.get_concrete_function(x, mean).graph
    compiled_calls = [
        op
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")
    ]
    assert compiled_calls, "no XLA-compiled call in the traced graph"
    for got, want in zip(traced(x, mean), value_and_grads(x, mean), strict=True):
        # float32 sums in another order: the mean gradient nets out to about 0.
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("p", [1.0, 3.0])
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("size", ["large", "small", "unknown"])
def test_abs_deviation_gradient_in_a_tensorflow_graph(p, center, masked, size, rng, monkeypatch):
    """In a traced TensorFlow function without jit_compile, the gradient of
    `|x - mean|` (finite p other than 2) of a large input, or one whose size
    is unknown until run time, is an XLA-compiled call that takes the
    upstream gradient, so that no layer's sign is computed before the
    backward pass reaches it; a small input keeps autodiff's `Abs` gradient
    (the cluster's launch costs more there). The statistics and the
    gradients of x equal the eager (autodiff) computation's either way, the
    mean's path included."""
    import tensorflow as tf

    from tfnorms._math import compiled

    shape = (32, 6, 8)
    # The threshold moved to either side of this input's size: the real one
    # is 1 MiB of float32, too large for a quick test.
    threshold = math.prod(shape) + (1 if size == "small" else 0)
    monkeypatch.setattr(compiled, "MIN_CLUSTER_ELEMENTS", threshold)
    x = tf.constant(rng.normal(size=shape) + 0.5, tf.float32)
    mask = tf.constant(rng.random((*shape[:-1], 1)) < 0.7) if masked else None
    weights = tf.range(1.0, shape[-1] + 1.0)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            result = stats.statistics(x, -1, p=p, mask=mask, center=center)
            total = tf.reduce_sum((result.variance + result.mean) * weights)
        return [result.mean, result.variance, tape.gradient(total, x)]

    traced = tf.function(value_and_grad)
    spec = tf.TensorSpec((None, *shape[1:]), tf.float32) if size == "unknown" else x
    graph = traced.get_concrete_function(spec).graph
    compiled_calls = [
        op
        for op in graph.get_operations()
        if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")
    ]
    signs = [op for op in graph.get_operations() if op.type == "Sign"]
    if size == "small":
        assert not compiled_calls and signs, "a small input should keep autodiff's gradient"
    else:
        assert compiled_calls, "no XLA-compiled call in the traced graph"
        assert not signs  # only inside
    for got, want in zip(traced(x), value_and_grad(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("axis", [-1, (0, 1)])
def test_max_abs_deviation_and_its_gradient_match_numpy(axis, masked, rng):
    """max |x - mean| per kept position, and its gradient: sign(x - mean) on
    the entry of the largest deviation (the maximum or the minimum of x,
    whichever lies farther from the mean), minus that for the mean."""
    shape = (6, 5, 4)
    x = rng.normal(size=shape)
    kept = (2,) if axis == -1 else (0, 1)
    reduced = tuple(a for a in range(3) if a not in kept)
    mean = rng.normal(scale=0.3, size=[shape[a] for a in kept])
    # Per position of the reduced axes; every kept position keeps a valid entry.
    mask_shape = (6, 5, 1) if axis == -1 else shape
    mask = rng.random(mask_shape) < 0.7 if masked else np.ones(mask_shape, bool)
    mask[0, 0] = True
    if axis != -1:
        mask[..., 0] = True
    weights = rng.uniform(1.0, 2.0, size=mean.shape)

    def weighted(x, mean):
        value = select.max_abs_deviation(x, mean, axis, t(mask) if masked else None)
        return ops.sum(value * ops.convert_to_tensor(weights, value.dtype))

    expand = np.expand_dims(mean, reduced)
    deviation = np.where(mask, np.abs(x - expand), -1.0)
    want_value = deviation.max(axis=reduced)
    hit = deviation == np.expand_dims(want_value, reduced)
    want_grad = np.where(hit, np.sign(x - expand) * np.expand_dims(weights, reduced), 0.0)
    want_grad_mean = -want_grad.sum(axis=reduced)

    value, (grad_x, grad_mean) = value_and_gradients(weighted, x, mean)
    assert float(value) == pytest.approx(float((want_value * weights).sum()), rel=1e-12)
    np.testing.assert_allclose(to_numpy(grad_x), want_grad, atol=1e-12)
    np.testing.assert_allclose(to_numpy(grad_mean), want_grad_mean, atol=1e-12)


def test_max_abs_deviation_shares_the_gradient_among_ties():
    """Three entries tie at the maximum: each gets a third; the minimum, nearer
    the mean, gets nothing; a constant channel gets a finite gradient."""
    x = np.array([[3.0, 1.0]] * 3 + [[0.0, 1.0]] * 7)  # column 0: mean 0.9
    value, grad = _function_and_gradient(
        lambda v: ops.sum(select.max_abs_deviation(v, ops.mean(v, axis=0), -1)), x
    )
    assert float(value) == pytest.approx(3.0 - 0.9)
    # Column 0: 1/3 on each maximum, and through the mean -1/10 on every entry.
    np.testing.assert_allclose(grad[:, 0], [1 / 3 - 0.1] * 3 + [-0.1] * 7, atol=1e-12)
    assert np.all(np.isfinite(grad[:, 1]))


def test_top_k_deviation_mean_splits_the_gradient_among_ties():
    """Five entries tie at the 3rd largest deviation: the two above it get
    1/3 each and the tied five share the last 1/3."""
    x = np.array([9.0, 8.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0, 0.0, 0.0])[:, None]
    value, grad = _function_and_gradient(lambda v: ops.sum(top_k_deviation_mean(v, None, 3, -1)), x)
    assert float(value) == pytest.approx((9 + 8 + 5) / 3)
    np.testing.assert_allclose(grad[:, 0], [1 / 3, 1 / 3] + [1 / 15] * 5 + [0, 0, 0], atol=1e-12)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("rows", [2, 7])
def test_top_k_with_unknown_batch_size_pads_with_sentinels(rows, rng):
    """In a graph with a batch dimension of None, the count is a tensor and
    top-k pads with sentinels (both for n < k and n >= k)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 3], tf.float64)])
    def traced(x):
        return stats.lp_statistics(x, -1, p=math.inf, top_k=5)

    x = rng.normal(size=(rows, 2, 3))
    mean, variance = traced(tf.constant(x))
    want_mean, want_variance = np_lp_statistics(x, -1, math.inf, min(5, rows * 2))
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-8)
    np.testing.assert_allclose(variance.numpy(), want_variance, rtol=1e-8)


@pytest.mark.tensorflow_only
def test_top_k_gradient_with_unknown_batch_size_and_kept_axes(rng):
    """The layer-norm case in a traced graph (a SavedModel export traces the
    gradient too): statistics per (batch, position), the batch axis None, so
    the mean's static shape holds None. The gradient equals the eager one."""
    import tensorflow as tf

    def loss(x):
        _, variance = stats.lp_statistics(x, (0, 1), p=math.inf, top_k=3)
        return ops.sum(variance)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 8], tf.float64)])
    def traced_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(x)
        return tape.gradient(value, x)

    x = tf.constant(rng.normal(size=(4, 5, 8)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    eager = tape.gradient(value, x).numpy()
    assert np.count_nonzero(eager) > 0
    np.testing.assert_allclose(traced_gradient(x).numpy(), eager, atol=1e-12)


def test_degenerate_inputs_give_finite_statistics():
    for x in (np.full((1, 3), 2.5), np.full((6, 3), -1.0), np.zeros((1, 1, 2))):
        for p, top_k in P_CASES:
            mean, variance = stats.lp_statistics(t(x), -1, p, top_k)
            np.testing.assert_allclose(to_numpy(mean), x.reshape(-1, x.shape[-1])[0])
            np.testing.assert_array_equal(to_numpy(variance), 0.0)
    # Everything masked: zeros, not NaN.
    x = np.ones((3, 2))
    for p, top_k in P_CASES:
        mean, variance = stats.lp_statistics(
            t(x), -1, p, top_k, mask=ops.zeros((3, 1), dtype="bool")
        )
        np.testing.assert_array_equal(to_numpy(mean), 0.0)
        np.testing.assert_array_equal(to_numpy(variance), 0.0)


def test_mean_statistics_match_numpy(rng):
    x = rng.normal(2.0, size=(4, 5, 3))
    np.testing.assert_allclose(to_numpy(stats.mean_statistics(t(x), -1)), x.mean((0, 1)))
    np.testing.assert_allclose(to_numpy(stats.mean_statistics(t(x), 1)), x.mean((0, 2)))
    mask = rng.uniform(size=(4, 5, 1)) < 0.5
    want = (x * mask).sum((0, 1)) / mask.sum()
    np.testing.assert_allclose(to_numpy(stats.mean_statistics(t(x), -1, mask=t(mask))), want)


def test_normalize_and_subtract_mean_match_numpy(rng):
    x = rng.normal(size=(4, 3, 5))
    mean, variance = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    shape = (1, 3, 1)
    want = gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(
        variance.reshape(shape) + 1e-3
    ) + beta.reshape(shape)

    def c(v):  # per channel, broadcasting against x
        return apply.per_channel(t(v), 3, 1)

    got = apply.normalize(t(x), c(mean), c(variance), gamma=c(gamma), beta=c(beta), epsilon=1e-3)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)
    got = apply.normalize(t(x), c(mean), c(variance), epsilon=1e-3)
    want = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + 1e-3)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)
    got = apply.normalize(t(x), None, c(variance), gamma=c(gamma), epsilon=1e-3)
    want = gamma.reshape(shape) * x / np.sqrt(variance.reshape(shape) + 1e-3)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12)
    got = apply.subtract_mean(t(x), c(mean), beta=c(beta))
    np.testing.assert_allclose(to_numpy(got), x - mean.reshape(shape) + beta.reshape(shape))


def test_normalize_broadcasts_past_x_and_differentiates(rng):
    # Statistics per example (B, 1) and an offset per example and feature
    # (B, F) against an x of (B, 1): the result is larger than x * inv, so
    # PyTorch's in-place addition must not be taken there.
    x = rng.normal(size=(3, 1))
    inv_of = rng.uniform(0.5, 2, size=(3, 1))
    mean, beta = rng.normal(size=(3, 1)), rng.normal(size=(1, 4))
    got = apply.normalize(t(x), t(mean), t(1 / inv_of**2), beta=t(beta), epsilon=0.0)
    np.testing.assert_allclose(to_numpy(got), (x - mean) * inv_of + beta, rtol=1e-12)
    if keras.backend.backend() == "torch":
        import torch

        x_t, mean_t = torch.tensor(x, requires_grad=True), torch.tensor(mean, requires_grad=True)
        out = apply.normalize(x_t, mean_t, t(1 / inv_of**2), beta=t(beta[:, :1]), epsilon=0.0)
        out.sum().backward()
        np.testing.assert_allclose(x_t.grad.numpy(), inv_of, rtol=1e-12)
        np.testing.assert_allclose(mean_t.grad.numpy(), -inv_of, rtol=1e-12)


def test_normalize_keeps_float16_activations_finite_with_a_huge_variance():
    # sigma^2 = 4e6 does not fit in float16; the per-channel factor 1/sigma does.
    x = ops.convert_to_tensor(np.array([[-2000.0], [2000.0]], np.float16))
    got = apply.normalize(x, ops.zeros((1, 1)), ops.full((1, 1), 4e6), epsilon=1e-3)
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(got).astype(float).ravel(), [-1.0, 1.0], rtol=1e-3)


def test_cross_replica_reduce_is_identity_without_replicas():
    from tfnorms import distribute
    from tfnorms._math.replicas import LOCAL

    a, b = ops.ones((3,)), ops.full((2, 4), 2.0)
    (summed,), (gathered,) = distribute.cross_replica_reduce([a], [b])
    np.testing.assert_array_equal(to_numpy(summed), np.ones(3))
    assert tuple(gathered.shape) == (1, 2, 4)
    assert distribute.reduction(True) is LOCAL  # no strategy: local statistics
    assert distribute.reduction(False) is LOCAL
    if not is_tensorflow():
        assert distribute.replica_context() is None


@pytest.mark.parametrize("center", [True, False], ids=["centered", "uncentered"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_merged_top_k_on_one_replica_equals_local(center, masked, rng):
    """The synchronized top-k ops (`replicas.Replicated`), with a merge that
    sees one replica, give the local statistics and gradients: values, ties
    at the k-th largest and masks included."""
    from tfnorms._math import replicas

    def one_replica(sums, gathers):
        return list(sums), [ops.expand_dims(g, 0) for g in gathers]

    x = np.round(rng.normal(size=(12, 3, 4)) * 2) / 2  # ties everywhere
    mask = rng.random((12, 3, 1)) < 0.7 if masked else None
    weights = rng.uniform(1.0, 2.0, size=(2, 4))

    def loss(reduction):
        def weighted(x):
            m = None if mask is None else ops.convert_to_tensor(mask)
            result = stats.statistics(x, -1, math.inf, 3, m, reduction=reduction, center=center)
            w = ops.convert_to_tensor(weights, result.mean.dtype)
            return ops.sum(result.mean * w[0]) + ops.sum(result.scale * w[1])

        return weighted

    want_value, (want_grad,) = value_and_gradients(loss(replicas.LOCAL), x)
    got_value, (got_grad,) = value_and_gradients(loss(replicas.Replicated(one_replica)), x)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-12)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's own top-k statistic")
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize(
    ("shape", "k", "axis"),
    [((40, 6), 10, -1), ((6, 20, 4), 5, (0,)), ((8, 5, 5, 3), 10, 1), ((300, 7), 10, -1)],
)
def test_torch_top_k_statistic_equals_the_general_one(shape, k, axis, center, rng, monkeypatch):
    """On PyTorch the top-k mean is one autograd Function (`torch_top_k`):
    its value and the gradients of x and the mean equal the general
    formulation's, ties at the cut and constant channels included, for
    kept axes first, last and in between, with and without blocks (300
    rows: blocks of 10; 40: of 4; 6 x 4 = 24 per kept entry), and x itself
    is left as it was."""
    import torch

    x = rng.normal(size=shape) * 3 + 1
    x[:, 0] = np.round(x[:, 0])  # ties at the cut
    x[:, 1] = 2.0  # a constant channel: every deviation ties at 0
    kept = reduce.kept_axes(len(shape), axis)
    reduced = tuple(i for i in range(len(shape)) if i not in kept)
    assert torch_top_k.applies(x, k, axis, None)

    def value_and_gradients():
        xt = torch.tensor(x, requires_grad=True)
        mean = None
        if center:
            mean = xt.mean(dim=reduced, keepdim=True).detach().requires_grad_(True)
        value = top_k_deviation_mean(xt, mean, k, axis)
        (value * torch.arange(1, value.numel() + 1).reshape(value.shape)).sum().backward()
        np.testing.assert_array_equal(xt.detach().numpy(), x)
        grads = [xt.grad.numpy()] + ([mean.grad.numpy()] if center else [])
        return value.detach().numpy(), grads

    own_value, own_grads = value_and_gradients()
    monkeypatch.setattr(torch_top_k, "applies", lambda *args: False)
    value, grads = value_and_gradients()
    np.testing.assert_allclose(own_value, value, rtol=1e-12)
    for own, general in zip(own_grads, grads, strict=True):
        np.testing.assert_allclose(own, general, rtol=1e-12, atol=1e-15)
