"""The streaming step on the GPU: T steps of N streams, the whole model, ONE kernel launch.

The CUDA twin of ``kernels/cpu/_stream.py``'s ``stream_step`` (same arguments, same meaning;
see the "streaming" section there). Batch-1 token latency is the goal, and numba's Python
launch costs 10-30 us a launch, so everything runs in one persistent cooperative kernel
whose phases are separated by grid-wide barriers (``cuda.cg.this_grid().sync()``):

    for each step t, for each layer l:      phase "layer": gates and cell update  | sync
    decoder rows, per-block softmax stats                                         | sync
    per-stream log-sum-exp, out = logits - lse

A T-step call with L layers costs T * L + 1 grid barriers and no other launches.

Phase "layer": one warp per hidden unit j (warps numbered block-fastest, so consecutive
units land on different SMs). The warp computes all gate rows of unit j (rnn 1, gru 3,
lstm 4: rows g * H + j of W_ih and W_hh), lanes striding over each row (coalesced 128-byte
loads), for up to _S streams per pass (a loaded weight serves every stream of the pass;
N > _S streams take ceil(N / _S) passes over the same rows, which then come from L1/L2).
Both products accumulate into one vector of _G x _S sums (gru keeps n's recurrent side in
the fourth slot, since r scales it); butterfly shuffles leave every sum in every lane,
and lane s applies the cell for stream s. The whole cell update happens in the same phase, so one
barrier per layer suffices. That needs the new state to go to a different buffer than the
previous one: step t reads h_in (t = 0) or the previous step's buffer and writes h_out
when T - 1 - t is even, else a scratch buffer, so the last step lands in h_out. A T = 1
call uses no scratch. Layer 0's input projection is a row of ``table`` (which includes
b_ih0) when one is given, else emb[id] @ w_ih0^T computed in the same pass.

An int8 model's matrices (int8 rows, a float32 scale each: the s_* arguments) go through
the same code: each weight is dequantized as it is loaded (q * s, one float32 product, the
dequantized model's weight exactly), so the kernel reads a quarter of the weight bytes.

Phase "decoder": block b owns vocabulary rows [b V / B, (b + 1) V / B); its warps take
rows in turn, keep an online (max, sum of exp) per stream, and combine them (through the
block's row of a global scratch array, between syncthreads) into one partial per (stream,
block). Phase "finish": each block reduces the B
partials of a stream (one warp per stream) into log-sum-exp, then writes out for its own
rows. The logits scratch holds the raw logits, as on the CPU.

Launch shape: ``threads`` per block (a multiple of 32) and ``blocks``, both keywords of
``stream_step``. The default of 256 threads always fits one block per SM (255 registers
a thread at most: 65,280 of an SM's 65,536); ptxas gives this kernel 188 registers for
sm_90 (numba 0.68, CUDA 13 NVVM; no spills), so one block of 256 per SM. ``blocks``
defaults to min(co-resident blocks, _BLOCKS_PER_SM * SM count), from the compiled
kernel's max_cooperative_grid_blocks, on the first call per (device, threads), cached.

The simulator (NUMBA_ENABLE_CUDASIM=1) runs blocks one after another and its grid sync is
a block barrier, so simulated launches must use one block (the default there); it has no
warp shuffles, so the warp reductions are emulated with a per-warp barrier there. Gate
math uses libdevice's expf/tanhf/logf (no fastmath): the kernel is bound by memory and
barriers, not by its few transcendentals.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import config, cuda, float32, int64

from ._cells import _sigmoid  # the cells' own: one sigmoid for the CUDA backend

STREAM_CELLS = {"rnn": 0, "gru": 1, "lstm": 2}

_SIMULATOR = bool(config.ENABLE_CUDASIM)

_S = 4  # streams per pass over a weight row
_G = 4  # gate slots per hidden unit (lstm's four; gru's r, z, n; rnn's one)
_SG = _S * _G
_WARP = 32
_MAX_WARPS = 32  # per block (1024 threads)
_FULL_MASK = 0xFFFFFFFF
_NEG = np.float32(-3.0e38)  # "minus infinity" that stays finite (exp(_NEG - m) == 0)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
# a block's scratch (a row of a global array: the block's threads exchange values through
# it between cuda.syncthreads(), as through shared memory; numba cannot return a shared
# array from a device function, and the simulator's shared arrays are not thread-safe):
# the decoder's per-warp (max, sum) of _S streams, then the log-sum-exp of a stream a warp
_SH_M = 0
_SH_S = _S * _MAX_WARPS
_SH_LSE = 2 * _S * _MAX_WARPS
_SHARED_LEN = 2 * _S * _MAX_WARPS + _MAX_WARPS

DEFAULT_THREADS = 256
_BLOCKS_PER_SM = 2

# ---------------------------------------------------------------------------- warp sums

if _SIMULATOR:
    # numba's simulator implements no shuffles. A warp reduction is emulated (state kept
    # on the launch's fake cuda module): every lane posts its value and waits at a barrier
    # of the warp's 32 Python threads; two slots, used in turn, so a fast lane's next post
    # never overwrites a value another lane still reads (it cannot pass the next barrier
    # before every lane has left this one).
    from numba.cuda.simulator.kernel import _get_kernel_context

    _sim_lock = threading.Lock()

    def _sim_block_state(name, key, make):
        launch = _get_kernel_context()
        with _sim_lock:
            table = launch.__dict__.setdefault("_rnnlm_" + name, {})
            entry = table.get(key)
            if entry is None:
                entry = table[key] = make()
        return entry

    def _sim_allreduce(value, combine):
        thread = threading.current_thread()
        lane = thread.thread_id % _WARP
        count = getattr(thread, "_rnnlm_exchanges", 0)
        thread._rnnlm_exchanges = count + 1
        b = thread.blockIdx
        barrier, *slots = _sim_block_state(
            "warps",
            (b.x, b.y, b.z, thread.thread_id // _WARP),
            lambda: (threading.Barrier(_WARP, timeout=120), [0.0] * _WARP, [0.0] * _WARP),
        )
        slot = slots[count % 2]
        slot[lane] = value
        barrier.wait()
        return combine(slot)

    def _warp_sum(v):
        return np.float32(math.fsum(_sim_allreduce(v, list)))

    def _warp_max(v):
        return _sim_allreduce(v, max)

    def _warp_sum_slots(vec, nslots, ns):
        # one exchange for the whole vector (the simulator's barrier costs milliseconds)
        rows = _sim_allreduce(vec.copy(), list)
        with np.errstate(invalid="ignore"):  # slots of absent streams may hold garbage
            total = np.sum(np.array(rows, np.float64), axis=0)
        for i in range(nslots * _S):
            if i % _S < ns:
                vec[i] = np.float32(total[i])

else:

    @cuda.jit(device=True)
    def _warp_sum(v):
        """The sum of v over the 32 lanes, in every lane (butterfly shuffles)."""
        v += cuda.shfl_xor_sync(_FULL_MASK, v, 16)
        v += cuda.shfl_xor_sync(_FULL_MASK, v, 8)
        v += cuda.shfl_xor_sync(_FULL_MASK, v, 4)
        v += cuda.shfl_xor_sync(_FULL_MASK, v, 2)
        v += cuda.shfl_xor_sync(_FULL_MASK, v, 1)
        return v

    @cuda.jit(device=True)
    def _warp_max(v):
        v = _fmax(v, cuda.shfl_xor_sync(_FULL_MASK, v, 16))
        v = _fmax(v, cuda.shfl_xor_sync(_FULL_MASK, v, 8))
        v = _fmax(v, cuda.shfl_xor_sync(_FULL_MASK, v, 4))
        v = _fmax(v, cuda.shfl_xor_sync(_FULL_MASK, v, 2))
        v = _fmax(v, cuda.shfl_xor_sync(_FULL_MASK, v, 1))
        return v

    @cuda.jit(device=True)
    def _warp_sum_slots(vec, nslots, ns):
        """vec[g * _S + s] summed over the lanes, in every lane, for g < nslots, s < ns."""
        for i in range(_SG):
            if i // _S < nslots and i % _S < ns:
                vec[i] = _warp_sum(vec[i])


# ---------------------------------------------------------------------------- pieces


@cuda.jit(device=True)
def _imin(a, b):
    # (numba 0.68's builtin min and max fail to compile for this target)
    return a if a < b else b


@cuda.jit(device=True)
def _fmax(a, b):
    return a if a > b else b


@cuda.jit(device=True)
def _gate_dots(w, ws, rows, x, xs, xrow, lane, acc):
    """acc[g * _S + s] += this lane's share of w[rows[g]] . x[xrow[s]], for every slot g
    with rows[g] >= 0 and every s < _S.

    Lanes stride over the row, so each warp-wide load of w is 128 contiguous bytes; each
    loaded weight serves all _S streams (rows of x; unused slots repeat a valid row).
    int8 rows (an int8 model): ws holds their scales, and each weight is dequantized as
    it is loaded (q * s, one float32 product, the dequantized model's weight exactly),
    a quarter of the bytes read; likewise x's rows with xs (an int8 embedding). A float32
    w or x has no scales (ws or xs of length 0)."""
    K = w.shape[1]
    xv = cuda.local.array(_S, float32)
    for k in range(lane, K, _WARP):
        for s in range(_S):
            xv[s] = float32(x[xrow[s], k])
            if xs.shape[0] > 0:
                xv[s] *= xs[xrow[s]]
        for g in range(_G):
            if rows[g] >= 0:
                wv = float32(w[rows[g], k])
                if ws.shape[0] > 0:
                    wv *= ws[rows[g]]
                for s in range(_S):
                    acc[g * _S + s] += wv * xv[s]


@cuda.jit(device=True)
def _x_bias(use_table, table, tok, b_ih, layer, row):
    """The input side's bias, or layer 0's whole input projection from the table."""
    if use_table:
        return table[tok, row]
    return b_ih[layer, row]


@cuda.jit(device=True)
def _gate(pre, slot, s, use_table, table, tok, b_ih, b_hh, layer, row):
    """Gate row `row`'s pre-activation for stream slot s: pre[slot * _S + s] plus both
    sides' biases."""
    return pre[slot * _S + s] + _x_bias(use_table, table, tok, b_ih, layer, row) + b_hh[layer, row]


@cuda.jit(device=True)
def _cell(
    cell, layer, j, n, tok, s, use_table, table, b_ih, b_hh, pre, h_prev, c_prev, h_new, c_new
):  # fmt: skip
    """Unit j of stream n from pre[g * _S + s], the lanes' summed products (gru: r and z
    both sides, then n's input side, then n's recurrent side): add the biases, apply the
    cell, store the new state."""
    H = h_new.shape[2]
    if cell == 2:
        i = _sigmoid(_gate(pre, 0, s, use_table, table, tok, b_ih, b_hh, layer, j))
        f = _sigmoid(_gate(pre, 1, s, use_table, table, tok, b_ih, b_hh, layer, H + j))
        g = math.tanh(_gate(pre, 2, s, use_table, table, tok, b_ih, b_hh, layer, 2 * H + j))
        o = _sigmoid(_gate(pre, 3, s, use_table, table, tok, b_ih, b_hh, layer, 3 * H + j))
        c = f * c_prev[layer, n, j] + i * g
        c_new[layer, n, j] = c
        h_new[layer, n, j] = o * math.tanh(c)
    elif cell == 1:
        r = _sigmoid(_gate(pre, 0, s, use_table, table, tok, b_ih, b_hh, layer, j))
        z = _sigmoid(_gate(pre, 1, s, use_table, table, tok, b_ih, b_hh, layer, H + j))
        row = 2 * H + j
        xn = pre[2 * _S + s] + _x_bias(use_table, table, tok, b_ih, layer, row)
        hn = pre[3 * _S + s] + b_hh[layer, row]
        nn = math.tanh(xn + r * hn)
        h_new[layer, n, j] = (_ONE - z) * nn + z * h_prev[layer, n, j]
    else:
        h_new[layer, n, j] = math.tanh(
            _gate(pre, 0, s, use_table, table, tok, b_ih, b_hh, layer, j)
        )


@cuda.jit(device=True)
def _layer(
    cell, residual, layer, t, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh,
    s_hh, b_hh, h_prev, c_prev, h_new, c_new, res, lane, unit_warp, n_warps,
):  # fmt: skip
    """One layer of one step for every stream: h_new[layer], c_new[layer] from
    h_prev[layer], c_prev[layer] and the layer's input (the layer below's output, or
    token ids); a residual layer's output h + input goes to res[layer]."""
    N = ids.shape[1]
    H = w_hh.shape[2]
    ng = 4 if cell == 2 else (3 if cell == 1 else 1)
    use_table = layer == 0 and table.shape[0] > 0
    xrow = cuda.local.array(_S, int64)
    hrow = cuda.local.array(_S, int64)
    x_rows = cuda.local.array(_G, int64)  # the weight row of each gate slot, -1: none
    h_rows = cuda.local.array(_G, int64)
    acc = cuda.local.array(_SG, float32)
    # the layer below's output: its h, or h + its input for a residual layer
    below = layer - 1 if layer > 0 else 0
    x_in = res[below] if layer > 0 and residual[below] != 0 else h_new[below]
    for j in range(unit_warp, H, n_warps):
        for g in range(_G):
            x_rows[g] = g * H + j if g < ng else -1
            h_rows[g] = x_rows[g]
        if cell == 1:  # gru: r scales n's recurrent side, which needs a slot of its own
            h_rows[2] = -1
            h_rows[3] = 2 * H + j
        for n0 in range(0, N, _S):
            ns = _imin(_S, N - n0)
            for s in range(_S):
                n = n0 + _imin(s, ns - 1)
                hrow[s] = n
                xrow[s] = ids[t, n] if layer == 0 else n
            for i in range(_SG):
                acc[i] = _ZERO
            no_scales = s_hh[layer, :0]  # the states are float32
            if layer > 0:
                _gate_dots(w_ih[layer - 1], s_ih[layer - 1], x_rows, x_in, no_scales, xrow,
                           lane, acc)  # fmt: skip
            elif not use_table:
                _gate_dots(w_ih0, s_ih0, x_rows, emb, s_emb, xrow, lane, acc)
            _gate_dots(w_hh[layer], s_hh[layer], h_rows, h_prev[layer], no_scales, hrow, lane,
                       acc)  # fmt: skip
            _warp_sum_slots(acc, 1 if cell == 0 else _G, ns)
            for s in range(_S):  # lane s applies the cell for stream n0 + s (constant
                if s == lane and s < ns:  # indices keep acc and xrow in registers)
                    _cell(
                        cell, layer, j, n0 + s, xrow[s], s, use_table, table, b_ih, b_hh, acc,
                        h_prev, c_prev, h_new, c_new,
                    )  # fmt: skip
                    if residual[layer] != 0:  # (layer 0: E == H, its input is emb[id])
                        n = n0 + s
                        if layer > 0:
                            x = x_in[n, j]
                        else:
                            x = float32(emb[xrow[s], j])
                            if s_emb.shape[0] > 0:
                                x *= s_emb[xrow[s]]
                        res[layer, n, j] = h_new[layer, n, j] + x


@cuda.jit(device=True)
def _decoder(
    w_dec, s_dec, b_dec, top, logits, part_m, part_s, sh, tid, lane, warp, wpb, blk, nblk
):  # fmt: skip
    """logits[n, v] for this block's rows v, and the block's (max, sum of exp(logit -
    max)) of each stream n in part_m[n, blk], part_s[n, blk]."""
    V = w_dec.shape[0]
    N = top.shape[0]
    v0 = blk * V // nblk
    v1 = (blk + 1) * V // nblk
    xrow = cuda.local.array(_S, int64)
    rows = cuda.local.array(_G, int64)
    acc = cuda.local.array(_SG, float32)
    m = cuda.local.array(_S, float32)
    sm = cuda.local.array(_S, float32)
    for g in range(1, _G):  # one weight row: slot 0's, set per row below
        rows[g] = -1
    for n0 in range(0, N, _S):  # the same in every thread of the block (syncthreads below)
        ns = _imin(_S, N - n0)
        for s in range(_S):
            xrow[s] = n0 + _imin(s, ns - 1)
            m[s] = _NEG
            sm[s] = _ZERO
        for v in range(v0 + warp, v1, wpb):
            for s in range(_S):
                acc[s] = _ZERO
            rows[0] = v
            _gate_dots(w_dec, s_dec, rows, top, s_dec[:0], xrow, lane, acc)
            _warp_sum_slots(acc, 1, ns)
            b = b_dec[v]
            for s in range(_S):
                if s == lane and s < ns:
                    logits[n0 + s, v] = acc[s] + b
            for s in range(_S):
                if s < ns:
                    x = acc[s] + b
                    mx = _fmax(m[s], x)
                    sm[s] = sm[s] * math.exp(m[s] - mx) + math.exp(x - mx)
                    m[s] = mx
        for s in range(_S):
            if s == lane:
                sh[_SH_M + warp * _S + s] = m[s]
                sh[_SH_S + warp * _S + s] = sm[s]
        cuda.syncthreads()
        if tid < ns:
            mx = _NEG
            for w in range(wpb):
                mx = _fmax(mx, sh[_SH_M + w * _S + tid])
            total = _ZERO
            for w in range(wpb):
                total += sh[_SH_S + w * _S + tid] * math.exp(sh[_SH_M + w * _S + tid] - mx)
            part_m[n0 + tid, blk] = mx
            part_s[n0 + tid, blk] = total
        cuda.syncthreads()


@cuda.jit(device=True)
def _finish(logits, part_m, part_s, out, sh, tid, lane, warp, wpb, blk, nblk, nthreads):
    """out[n, v] = logits[n, v] - logsumexp(logits[n]) for this block's rows v."""
    N, V = logits.shape
    v0 = blk * V // nblk
    span = (blk + 1) * V // nblk - v0
    if span > 0:  # the same in every thread of the block
        for c0 in range(0, N, wpb):
            n = c0 + warp
            if n < N:  # the same in every lane of the warp
                mx = _NEG
                for q in range(lane, nblk, _WARP):
                    mx = _fmax(mx, part_m[n, q])
                mx = _warp_max(mx)
                total = _ZERO
                for q in range(lane, nblk, _WARP):
                    total += part_s[n, q] * math.exp(part_m[n, q] - mx)
                total = _warp_sum(total)
                if lane == 0:
                    sh[_SH_LSE + warp] = mx + math.log(total)
            cuda.syncthreads()
            count = _imin(wpb, N - c0) * span
            for e in range(tid, count, nthreads):
                s = e // span
                v = v0 + e - s * span
                out[c0 + s, v] = logits[c0 + s, v] - sh[_SH_LSE + s]
            cuda.syncthreads()


@cuda.jit(cache=True)
def _stream_kernel(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    w_dec, s_dec, b_dec, h_in, c_in, h_out, c_out, h_tmp, c_tmp, res, part_m, part_s,
    block_scratch, logits, out,
):  # fmt: skip
    grid = cuda.cg.this_grid()
    tid = cuda.threadIdx.x
    lane = tid % _WARP
    warp = tid // _WARP
    nthreads = cuda.blockDim.x
    wpb = nthreads // _WARP
    blk = cuda.blockIdx.x
    nblk = cuda.gridDim.x
    unit_warp = warp * nblk + blk  # block-fastest: consecutive units on different SMs
    n_warps = wpb * nblk
    T = ids.shape[0]
    L = w_hh.shape[0]
    for t in range(T):
        # the state goes h_in -> (h_tmp <-> h_out) so that the last step writes h_out
        if (T - 1 - t) % 2 == 0:
            h_new, c_new = h_out, c_out
            h_prev, c_prev = (h_in, c_in) if t == 0 else (h_tmp, c_tmp)
        else:
            h_new, c_new = h_tmp, c_tmp
            h_prev, c_prev = (h_in, c_in) if t == 0 else (h_out, c_out)
        for layer in range(L):
            _layer(
                cell, residual, layer, t, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih,
                b_ih, w_hh, s_hh, b_hh, h_prev, c_prev, h_new, c_new, res, lane, unit_warp,
                n_warps,
            )  # fmt: skip
            grid.sync()
    sh = block_scratch[blk]
    top = res[L - 1] if residual[L - 1] != 0 else h_out[L - 1]
    _decoder(w_dec, s_dec, b_dec, top, logits, part_m, part_s, sh, tid, lane, warp, wpb, blk, nblk)
    grid.sync()
    _finish(logits, part_m, part_s, out, sh, tid, lane, warp, wpb, blk, nblk, nthreads)


# ---------------------------------------------------------------------------- launch

_grid_lock = threading.Lock()
_grid_blocks_cache: dict = {}  # (device id, threads, weight dtype) -> blocks
_scratch_local = threading.local()


def _device_key() -> int:
    return 0 if _SIMULATOR else cuda.get_current_device().id


def _default_blocks(device: int, threads: int, args: list) -> int:
    """min(co-resident blocks of the compiled kernel, _BLOCKS_PER_SM * SMs), once per
    (device, threads, weight dtype); args: the launch's, the three scratch arrays not yet there. The
    simulator runs one block (it cannot sync across blocks)."""
    if _SIMULATOR:
        return 1
    key = (device, threads, str(args[11].dtype))  # float32 and int8 weights compile apart
    blocks = _grid_blocks_cache.get(key)
    if blocks is None:
        with _grid_lock:
            blocks = _grid_blocks_cache.get(key)
            if blocks is None:
                # logits stands in for the scratch arrays (the same array type)
                typed = args[:24] + [args[27]] * 3 + args[27:]
                sig = tuple(_stream_kernel.typeof_pyval(a) for a in typed)
                kernel = _stream_kernel.compile(sig)
                resident = kernel.max_cooperative_grid_blocks(threads)
                if resident < 1:
                    raise RuntimeError(
                        f"stream_step: no block of {threads} threads fits on the device"
                    )
                sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
                blocks = max(1, min(resident, _BLOCKS_PER_SM * sms))
                _grid_blocks_cache[key] = blocks
    return blocks


def _scratch(device: int, stream, name: str, shape: tuple):
    """The calling thread's float32 device array `name` of `shape` for launches on
    `stream` (kept for reuse): a launch owns its scratch until it ends, and launches of
    one thread on one stream run in order."""
    arrays = _scratch_local.__dict__.setdefault("arrays", {})
    key = (device, stream, name)
    a = arrays.get(key)
    if a is None or a.shape != shape:
        a = cuda.device_array(shape, np.float32)
        arrays[key] = a
    return a


def stream_step(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    w_dec, s_dec, b_dec, h_in, c_in, h_out, c_out, gx, gh, logits, out,
    *, threads=None, blocks=None, stream=0,
):  # fmt: skip
    """T streaming steps of N streams and the next-token log-probabilities, one launch.

    Arguments as the CPU ``stream_step`` (all device arrays): residual (L,) uint8 (1: the
    layer's output adds its input, kept in a scratch array); ids (T, N) int64; table
    (V, G) or (0, G); emb (V, E); w_ih0 (G, E); w_ih (L - 1, G, H); b_ih, b_hh (L, G);
    w_hh (L, G, H); w_dec (V, H); b_dec (V,); h_in, c_in read, h_out, c_out written
    (L, N, H; c untouched unless cell is lstm); logits (N, V) gets the raw logits and
    out (N, V) the log-probabilities. gx, gh are the CPU's scratch: unused here.
    threads (a multiple of 32, at most 1024) and blocks override the launch shape;
    stream is the CUDA stream to launch on. Each matrix is float32, or int8 with its
    scales in the s_* beside it (see the CPU kernel); a float32 matrix's s_* have a last
    dimension of 0.
    """
    threads = DEFAULT_THREADS if threads is None else int(threads)
    if threads % _WARP or not 0 < threads <= _WARP * _MAX_WARPS:
        raise ValueError(f"threads must be a multiple of 32 in [32, 1024], not {threads}")
    T, N = ids.shape
    L, _, H = h_out.shape
    lstm = cell == STREAM_CELLS["lstm"]
    device = _device_key()
    if T > 1:
        h_tmp = _scratch(device, stream, "h", (L, N, H))
        c_tmp = _scratch(device, stream, "c", (L, N, H)) if lstm else c_out
    else:  # never touched: a one-step call goes straight from h_in to h_out
        h_tmp, c_tmp = h_out, c_out
    # the residual layers' outputs (L, N, H), written only where residual is set (a
    # scratch array kept for reuse: checking the flags would cost a copy from the device)
    res = _scratch(device, stream, "res", (L, N, H))
    args = [
        cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh,
        b_hh, w_dec, s_dec, b_dec, h_in, c_in, h_out, c_out, h_tmp, c_tmp, res, None, None,
        None, logits, out,
    ]  # fmt: skip
    if blocks is None:
        blocks = _default_blocks(device, threads, args)
    blocks = int(blocks)
    if blocks < 1 or (_SIMULATOR and blocks != 1):
        raise ValueError(
            f"blocks must be >= 1 (and 1 under the simulator, whose grid sync only "
            f"synchronizes one block), not {blocks}"
        )
    part = 24  # the places of part_m, part_s and block_scratch in args
    args[part] = _scratch(device, stream, "part_m", (N, blocks))
    args[part + 1] = _scratch(device, stream, "part_s", (N, blocks))
    args[part + 2] = _scratch(device, stream, "block", (blocks, _SHARED_LEN))
    _stream_kernel[blocks, threads, stream](*args)


@cuda.jit
def _pick_top_k(residual, res, h_out, top):
    """top (N, H) = the top layer's output: its residual sum, or its cell's h."""
    L = h_out.shape[0]
    H = top.shape[1]
    src = res if residual[L - 1] != 0 else h_out
    for i in range(cuda.grid(1), top.shape[0] * H, cuda.gridsize(1)):
        n = i // H
        j = i - n * H
        top[n, j] = src[L - 1, n, j]


def stream_layers(
    cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh, b_hh,
    h_in, c_in, h_out, c_out, gx, gh, top,
    *, threads=None, blocks=None, stream=0,
):  # fmt: skip
    """stream_step without the output layer (an empty decoder: the kernel's decoder and
    softmax then have no rows); top (N, H) gets the top layer's output after the last
    step (for an output layer of its own: the adaptive softmax)."""
    N, H = top.shape
    L = h_out.shape[0]
    none = cuda.device_array((0, H), np.float32)
    no_rows = cuda.device_array(0, np.float32)
    stream_step(
        cell, residual, ids, table, emb, s_emb, w_ih0, s_ih0, w_ih, s_ih, b_ih, w_hh, s_hh,
        b_hh, none, no_rows, no_rows, h_in, c_in, h_out, c_out, gx, gh,
        cuda.device_array((N, 0), np.float32), cuda.device_array((N, 0), np.float32),
        threads=threads, blocks=blocks, stream=stream,
    )  # fmt: skip
    res = _scratch(_device_key(), stream, "res", (L, N, H))
    if N * H:
        threads_ = 128
        _pick_top_k[max(1, min(64, -(-N * H // threads_))), threads_, stream](
            residual, res, h_out, top
        )


__all__ = ["DEFAULT_THREADS", "STREAM_CELLS", "stream_layers", "stream_step"]
