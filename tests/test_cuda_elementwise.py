"""The CUDA element-wise, softmax, optimizer and sampling kernels (kernels/cuda/_elementwise.py)
against the float64 oracle or an obvious float64 NumPy reference, on inputs drawn by
Hypothesis.

Runs on a real GPU or in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), and skips
when numba.cuda has neither. The simulator runs every GPU thread as a Python thread, so
every launch here uses 4 to 32 threads per block (the kernels' ``threads=`` keyword) and
a few blocks (``blocks=`` for the grid-stride kernels), with sizes chosen to cross block
boundaries; the same small launches are valid on a GPU.

Outputs are poisoned (NaN, or -1 for ids) before each call so that an element a kernel
fails to write shows. Error measure: oracle.normwise_error, max|got - want| / max|want|.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kernel_cases import f32, rel_err
from numba import cuda

from rnnlm_engine import oracle
from rnnlm_engine.kernels.cuda import _elementwise as ew

pytestmark = pytest.mark.usefixtures("cuda_simulator_fixes")

if not cuda.is_available():
    pytest.skip(
        "numba.cuda has no GPU and the simulator is off (set NUMBA_ENABLE_CUDASIM=1)",
        allow_module_level=True,
    )


THREADS = st.sampled_from([4, 8, 16, 32])
SEEDS = st.integers(0, 2**32 - 1)

# Tolerances (float32 unit roundoff u = 6e-8):
# - softmax rows: exp error ~2 ulp per term, a tree sum of V <= 80 terms (log2 V u of the
#   sum), log(s) then adds an absolute error of ~1e-6 relative to values of size ~10;
#   normwise, with a floor of 1, 1e-5 keeps a 10x margin (as tests/test_kernels_cpu.py).
SOFTMAX_TOL = 1e-5
# - embedding_backward: up to N <= 40 float32 additions per element in any order (atomics):
#   error <= N u sum|terms|, about 3e-6 of the largest sum of magnitudes (the floor: a sum
#   that cancels to near 0 keeps the absolute error of its terms); 1e-5.
SCATTER_TOL = 1e-5
# - optimizer updates: a handful of float32 operations per element (the scalars rounded
#   to float32 as the CPU kernel does): a few ulps of |param| + |update|; 1e-6.
UPDATE_TOL = 1e-6
# - sampling: the kernel's weights exp(z - z_max) are float32 exps (relative error ~3e-7
#   on a GPU) summed in float64, so CDF values (and the top-p cumulative sums) may move by
#   under 1e-6: a draw may differ from the float64 reference only when u (or top_p) lies
#   within 1e-6 of a boundary.
CDF_TOL = 1e-6


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def poisoned(shape, dtype=np.float32):
    fill = -1 if np.dtype(dtype).kind == "i" else np.nan
    return cuda.to_device(np.full(shape, fill, dtype))


# ---------------------------------------------------------------------------- embedding


@settings(max_examples=15)
@given(
    V=st.integers(1, 20),
    E=st.integers(1, 13),
    N=st.integers(1, 12),
    threads=THREADS,
    blocks=st.sampled_from([None, 1, 3]),
    seed=SEEDS,
)
def test_embedding_forward(V, E, N, threads, blocks, seed):
    rng = np.random.default_rng(seed)
    weight = f32(rng, (V, E))
    ids = rng.integers(0, V, N).astype(np.int64)
    out = poisoned((N, E))
    ew.embedding_forward(dev(weight), dev(ids), out, threads=threads, blocks=blocks)
    np.testing.assert_array_equal(out.copy_to_host(), weight[ids])  # a copy: exact


@settings(max_examples=15)
@given(
    V=st.integers(1, 12),
    E=st.integers(1, 11),
    N=st.integers(1, 40),
    threads=THREADS,
    blocks=st.sampled_from([None, 1, 3]),
    seed=SEEDS,
)
def test_embedding_backward(V, E, N, threads, blocks, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, N).astype(np.int64)  # N up to 40 over V <= 12 rows: repeats
    dout = f32(rng, (N, E))
    start = f32(rng, (V, E))
    dweight = dev(start)
    ew.embedding_backward(dev(ids), dev(dout), dweight, threads=threads, blocks=blocks)
    want = start.astype(np.float64) + oracle.embedding_backward(ids, dout.astype(np.float64), V)
    magnitude = np.abs(start) + oracle.embedding_backward(ids, np.abs(dout).astype(np.float64), V)
    assert rel_err(dweight.copy_to_host(), want, floor=float(magnitude.max())) < SCATTER_TOL


# ---------------------------------------------------------------------------- rows


def _rows(rng, N, V, scale):
    return f32(rng, (N, V), scale), f32(rng, (V,), scale)


ROW_SHAPES = dict(N=st.integers(1, 4), V=st.integers(1, 80), threads=THREADS, seed=SEEDS)
SCALES = st.sampled_from([0.1, 1.0, 10.0])


@settings(max_examples=15)
@given(**ROW_SHAPES, scale=SCALES)
@example(N=1, V=1, threads=4, seed=0, scale=1.0)
def test_row_max_and_row_shift(N, V, threads, seed, scale):
    rng = np.random.default_rng(seed)
    logits, bias = _rows(rng, N, V, scale)
    want = oracle.row_max(logits.astype(np.float64), bias.astype(np.float64))
    for fn in (ew.row_max, ew.row_shift):
        out = poisoned((N,))
        fn(dev(logits), dev(bias), out, threads=threads)
        # float32 rounding of logits + bias is monotone: the max of the rounded sums is the
        # rounded max, so the result is exact
        np.testing.assert_array_equal(out.copy_to_host(), want.astype(np.float32))


@settings(max_examples=15)
@given(**ROW_SHAPES, scale=SCALES)
@example(N=2, V=33, threads=32, seed=1, scale=10.0)  # one element past a block of threads
def test_log_softmax(N, V, threads, seed, scale):
    rng = np.random.default_rng(seed)
    logits, bias = _rows(rng, N, V, scale)
    out = poisoned((N, V))
    shift = poisoned((N,))  # ignored by the CUDA kernels: NaN must not matter
    ew.log_softmax(dev(logits), dev(bias), shift, out, threads=threads)
    want = oracle.log_softmax(logits.astype(np.float64), bias.astype(np.float64))
    assert rel_err(out.copy_to_host(), want, floor=1.0) < SOFTMAX_TOL


@settings(max_examples=15)
@given(**ROW_SHAPES, scale=SCALES, K=st.integers(0, 4), ties=st.booleans())
@example(N=2, V=33, threads=32, seed=1, scale=10.0, K=3, ties=False)
def test_prediction_stats(N, V, threads, seed, scale, K, ties):
    rng = np.random.default_rng(seed)
    logits, bias = _rows(rng, N, V, scale)
    if ties:  # repeated values, where the lower id must come first
        logits, bias = np.round(logits), np.zeros_like(bias)
    targets = rng.integers(0, V, N).astype(np.int64)
    K = min(K, V)
    out = (poisoned((N,)), poisoned((N,)), poisoned((N,), np.int64),
           poisoned((N, K), np.int64), poisoned((N, K)))  # fmt: skip
    shift = poisoned((N,))  # ignored
    ew.prediction_stats(dev(logits), dev(bias), shift, dev(targets), *out, threads=threads)
    logp, entropy, rank, top_ids, top_vals = (a.copy_to_host() for a in out)
    want = oracle.prediction_stats(logits.astype(np.float64), bias.astype(np.float64), targets, K)
    assert rel_err(logp, want[0], floor=1.0) < SOFTMAX_TOL
    assert rel_err(entropy, want[1], floor=1.0) < SOFTMAX_TOL
    z = logits + bias  # float32 sums, compared exactly as the kernel does
    rows = np.arange(N)
    np.testing.assert_array_equal(rank, 1 + np.sum(z > z[rows, targets][:, None], axis=1))
    np.testing.assert_array_equal(top_ids, np.argsort(-z, axis=1, kind="stable")[:, :K])
    if K:
        assert rel_err(top_vals, want[4], floor=1.0) < SOFTMAX_TOL


@settings(max_examples=15)
@given(**ROW_SHAPES, scale=SCALES)
def test_xent_forward(N, V, threads, seed, scale):
    rng = np.random.default_rng(seed)
    logits, bias = _rows(rng, N, V, scale)
    targets = rng.integers(0, V, N).astype(np.int64)
    nll = poisoned((N,))
    ew.xent_forward(dev(logits), dev(bias), dev(targets), poisoned((N,)), nll, threads=threads)
    want = oracle.xent_forward(logits.astype(np.float64), bias.astype(np.float64), targets)
    assert rel_err(nll.copy_to_host(), want, floor=1.0) < SOFTMAX_TOL


@settings(max_examples=15)
@given(**ROW_SHAPES, scale=SCALES, loss_scale=st.sampled_from([1.0, 0.25, 1 / 7]))
@example(N=3, V=17, threads=8, seed=2, scale=1.0, loss_scale=1.0)
def test_xent_forward_backward(N, V, threads, seed, scale, loss_scale):
    rng = np.random.default_rng(seed)
    logits, bias = _rows(rng, N, V, scale)
    targets = rng.integers(0, V, N).astype(np.int64)
    d_logits = dev(logits)
    nll, dbias = poisoned((N,)), poisoned((V,))
    ew.xent_forward_backward(
        d_logits, dev(bias), dev(targets), poisoned((N,)), loss_scale, nll, dbias,
        threads=threads,
    )  # fmt: skip
    w_nll, w_d, w_db = oracle.xent_forward_backward(
        logits.astype(np.float64), bias.astype(np.float64), targets, loss_scale
    )
    assert rel_err(nll.copy_to_host(), w_nll, floor=1.0) < SOFTMAX_TOL
    # gradients: softmax probabilities (error ~2 ulp each) minus 1 at the target, scaled;
    # the column sums add N <= 4 of them
    assert rel_err(d_logits.copy_to_host(), w_d, floor=loss_scale) < SOFTMAX_TOL
    assert rel_err(dbias.copy_to_host(), w_db, floor=loss_scale) < SOFTMAX_TOL


# ---------------------------------------------------------------------------- optimizer


FLAT = dict(n=st.integers(1, 200), threads=THREADS, blocks=st.sampled_from([None, 1, 3]))


@settings(max_examples=10)
@given(**FLAT, seed=SEEDS, scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_sum_of_squares(n, threads, blocks, seed, scale):
    x = f32(np.random.default_rng(seed), (n,), scale)
    got = ew.sum_of_squares(dev(x), threads=threads, blocks=blocks)
    assert isinstance(got, float)
    # float64 sums of float32 squares (exact in float64): only the order differs
    assert got == pytest.approx(oracle.sum_of_squares(x), rel=1e-12)


@settings(max_examples=10)
@given(**FLAT, seed=SEEDS, scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_max_abs(n, threads, blocks, seed, scale):
    x = f32(np.random.default_rng(seed), (n,), scale)
    x[np.random.default_rng(seed + 1).integers(n)] *= -2.0  # the largest may be negative
    assert ew.max_abs(dev(x), threads=threads, blocks=blocks) == float(np.max(np.abs(x)))
    assert ew.max_abs(dev(np.zeros(0, np.float32))) == 0.0


def test_sum_of_squares_of_nothing():
    assert ew.sum_of_squares(cuda.device_array(0, np.float32)) == 0.0


@settings(max_examples=10)
@given(**FLAT, seed=SEEDS, factor=st.sampled_from([0.0, 0.37, -2.0, 1e-6]))
def test_scale_inplace(n, threads, blocks, seed, factor):
    x = f32(np.random.default_rng(seed), (n,))
    d = dev(x)
    ew.scale_inplace(d, factor, threads=threads, blocks=blocks)
    got = d.copy_to_host()
    # one float32 product with the factor rounded to float32: exactly numpy's float32 result
    np.testing.assert_array_equal(got, x * np.float32(factor))


@settings(max_examples=10)
@given(**FLAT, seed=SEEDS, lr=st.sampled_from([1e-3, 0.1, 1.0, 20.0]))
def test_sgd_update(n, threads, blocks, seed, lr):
    rng = np.random.default_rng(seed)
    param, grad = f32(rng, (n,)), f32(rng, (n,))
    d = dev(param)
    ew.sgd_update(d, dev(grad), lr, threads=threads, blocks=blocks)
    want = oracle.sgd_update(param.astype(np.float64), grad.astype(np.float64), lr)
    assert rel_err(d.copy_to_host(), want) < UPDATE_TOL


@settings(max_examples=10)
@given(
    V=st.integers(1, 60),
    E=st.integers(1, 9),
    threads=THREADS,
    blocks=st.sampled_from([None, 1, 3]),
    seed=SEEDS,
)
def test_sgd_update_rows(V, E, threads, blocks, seed):
    rng = np.random.default_rng(seed)
    param = f32(rng, (V, E))
    rows = np.unique(rng.integers(0, V, size=rng.integers(1, V + 1)))
    grad = f32(rng, (len(rows), E))
    d = dev(param)
    ew.sgd_update_rows(d, dev(rows), dev(grad), 0.37, threads=threads, blocks=blocks)
    want = oracle.sgd_update_rows(param.astype(np.float64), rows, grad.astype(np.float64), 0.37)
    assert rel_err(d.copy_to_host(), want) < UPDATE_TOL


@settings(max_examples=10)
@given(
    **FLAT,
    seed=SEEDS,
    lr=st.sampled_from([1e-3, 0.1]),
    betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]),
    eps=st.sampled_from([1e-8, 1e-3]),
    step=st.sampled_from([1, 2, 10, 1000]),
)
def test_adam_update(n, threads, blocks, seed, lr, betas, eps, step):
    rng = np.random.default_rng(seed)
    param, grad, m = f32(rng, (n,)), f32(rng, (n,)), f32(rng, (n,), 0.1)
    v = np.abs(f32(rng, (n,), 0.01))
    dp, dm, dv = dev(param), dev(m), dev(v)
    b1, b2 = betas
    ew.adam_update(dp, dev(grad), dm, dv, lr, b1, b2, eps, step, threads=threads, blocks=blocks)
    f64 = [a.astype(np.float64) for a in (param, grad, m, v)]
    w_p, w_m, w_v = oracle.adam_update(*f64, lr, b1, b2, eps, step)
    assert rel_err(dm.copy_to_host(), w_m) < UPDATE_TOL
    assert rel_err(dv.copy_to_host(), w_v) < UPDATE_TOL
    # the step, lr m_hat / (sqrt(v_hat) + eps), goes through about ten float32 roundings
    # (beta1, 1 - beta1 and lr / c1 as float32 scalars, the products and sums of m and v,
    # sqrt, the division), each of at most half an ulp relative to the terms' magnitudes:
    # m's terms can cancel, so the bound takes |beta1 m| + |(1 - beta1) g| in place of
    # |m|. 16 ulps of that bound per element, plus half an ulp of param for the last
    # subtraction (the step's ratio to lr varies widely: up to ~57 where v is small)
    got_p = dp.copy_to_host().astype(np.float64)
    c1, c2 = 1.0 - b1**step, 1.0 - b2**step
    m_terms = b1 * np.abs(f64[2]) + (1.0 - b1) * np.abs(f64[1])
    step_bound = lr * m_terms / c1 / (np.sqrt(w_v / c2) + eps)
    f32_eps = float(np.finfo(np.float32).eps)
    tol = 16 * f32_eps * step_bound + np.spacing(np.abs(w_p).astype(np.float32))
    assert np.all(np.abs(got_p - w_p) <= tol), np.max(np.abs(got_p - w_p) / tol)


@settings(max_examples=10)
@given(
    shape=st.sampled_from([(1,), (37,), (3, 11), (2, 3, 5), (4, 1, 9)]),
    threads=THREADS,
    blocks=st.sampled_from([None, 1, 3]),
    seed=SEEDS,
)
def test_multiply(shape, threads, blocks, seed):
    rng = np.random.default_rng(seed)
    a, b = f32(rng, shape), f32(rng, shape)
    out = poisoned(shape)
    ew.multiply(dev(a), dev(b), out, threads=threads, blocks=blocks)
    got = out.copy_to_host()
    assert got.shape == shape
    np.testing.assert_array_equal(got, a * b)  # one float32 product: exact


def test_set_block_size_checks_power_of_two():
    old = ew.BLOCK
    with pytest.raises(ValueError):
        ew.set_block_size(48)
    try:
        ew.set_block_size(64)
        assert ew.BLOCK == 64
    finally:
        ew.set_block_size(old)


# ---------------------------------------------------------------------------- sampling


def reference_draws(logprobs, temperature, top_k, top_p, u, tol=CDF_TOL):
    """(exact, acceptable): the float64 reference's draw for one row (the rule of
    rnnlm_engine.sampling.sample_id with rng.choice's inverse CDF, given u) and the set of
    ids a kernel may return when u or top_p lie within tol of a boundary."""
    z = logprobs.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    exact = None
    ok = set()
    for dp in (0.0, -tol, tol):
        if top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), top_p + dp) + 1)
        else:
            keep = len(order)
        o, q = order[:keep], p[:keep] / p[:keep].sum()
        cdf = np.cumsum(q)
        cdf /= cdf[-1]
        last = len(o) - 1
        if exact is None:
            exact = int(o[min(int(np.searchsorted(cdf, u, "right")), last)])
        lo = min(int(np.searchsorted(cdf, u - tol, "right")), last)
        hi = min(int(np.searchsorted(cdf, u + tol, "right")), last)
        ok.update(int(i) for i in o[lo : hi + 1])
    return exact, ok


def _logprob_rows(rng, kind, N, V):
    if kind == "normal":  # realistic: a log-softmax of random logits
        x = rng.standard_normal((N, V)) * 2.0
    elif kind == "ties":  # few distinct values: many ties, including at the cut-offs
        x = rng.integers(-3, 1, (N, V)).astype(np.float64)
        x[rng.random((N, V)) < 0.2] = -0.0  # -0.0 ties with 0.0
    else:  # "wide": tails whose weights underflow at low temperature
        x = rng.standard_normal((N, V)) * 2.0
        x[rng.random((N, V)) < 0.3] -= 5e3
    if kind != "ties":
        x = x - np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
        x -= x.max(axis=1, keepdims=True)
    return x.astype(np.float32)


def _check_sample(lp, temperature, top_k, top_p, u, threads):
    N = lp.shape[0]
    out = poisoned((N,), np.int64)
    ew.sample(dev(lp), temperature, top_k, top_p, dev(u), out, threads=threads)
    got = out.copy_to_host()
    for n in range(N):
        exact, ok = reference_draws(lp[n], temperature, top_k, top_p, u[n])
        assert int(got[n]) in ok, (n, int(got[n]), exact, sorted(ok))
    return got


@settings(max_examples=30)
@given(
    N=st.integers(1, 3),
    V=st.integers(1, 70),
    threads=st.sampled_from([4, 8, 16]),
    kind=st.sampled_from(["normal", "ties", "wide"]),
    temperature=st.sampled_from([0.05, 0.7, 1.0, 1.6]),
    top_k=st.integers(0, 80),
    top_p=st.one_of(st.just(1.0), st.floats(0.05, 0.99)),
    seed=SEEDS,
)
@example(N=2, V=20, threads=8, kind="ties", temperature=1.0, top_k=3, top_p=1.0, seed=3)
@example(N=1, V=1, threads=4, kind="normal", temperature=1.0, top_k=0, top_p=0.5, seed=0)
def test_sample_matches_reference(N, V, threads, kind, temperature, top_k, top_p, seed):
    rng = np.random.default_rng(seed)
    lp = _logprob_rows(rng, kind, N, V)
    u = rng.random(N)
    u[rng.random(N) < 0.2] = 0.0
    u[rng.random(N) < 0.1] = 1.0 - 2.0**-53  # u * sum may round up to the sum itself
    _check_sample(lp, temperature, top_k, top_p, u, threads)


def test_sample_top_k_1_is_argmax_with_lowest_id_on_ties():
    lp = np.array(
        [
            [-3.0, -1.0, -2.0, -1.0, -5.0, -1.0],  # max -1 at ids 1, 3, 5
            [0.0, -0.0, -1.0, -7.0, 0.0, -2.0],  # 0.0 and -0.0 tie: id 0
            [-9.0, -8.0, -7.0, -6.0, -5.0, -0.5],
        ],
        np.float32,
    )
    u = np.array([0.99, 0.5, 0.0])
    got = _check_sample(lp, 1.0, 1, 1.0, u, threads=4)
    np.testing.assert_array_equal(got, [1, 0, 5])


def test_sample_inverse_cdf_in_tie_order():
    # four equal tokens: the CDF is 0.25, 0.5, 0.75, 1 over ids 2, 4, 6, 7 in id order
    lp = np.full((4, 9), -50.0, np.float32)
    lp[:, [2, 4, 6, 7]] = -1.0
    u = np.array([0.1, 0.3, 0.6, 0.9])
    got = _check_sample(lp, 1.0, 4, 1.0, u, threads=4)
    np.testing.assert_array_equal(got, [2, 4, 6, 7])
    # top_p 0.5 keeps the first two of the tie (cumulative 0.25, 0.5 >= 0.5)
    got = _check_sample(lp, 1.0, 0, 0.5, u, threads=8)
    np.testing.assert_array_equal(got, [2, 2, 4, 4])
