"""A model's parameters: the config they imply (PyTorch word_language_model names and
shapes), their validation (float32, finite, the config's shapes) and the bound that keeps
every sum of their products within float32. Model and QuantizedModel build on these."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .config import CELLS, GATES, ModelConfig
from .errors import ConfigError, ParameterError


def infer_config(sd: dict, cell: str, tied: bool, residual: bool = False) -> ModelConfig:
    def shape_of(name):
        if name not in sd:
            raise ParameterError(f"state_dict has no {name!r}")
        return as_array(name, sd[name]).shape

    enc = shape_of("encoder.weight")
    if len(enc) != 2:
        raise ParameterError(f"encoder.weight must be 2-D (V, E); got shape {enc}")
    hh = shape_of("rnn.weight_hh_l0")
    if len(hh) != 2:
        raise ParameterError(f"rnn.weight_hh_l0 must be 2-D (G, H); got shape {hh}")
    H = hh[1]
    if hh[0] != GATES[cell] * H:
        hint = [c for c in CELLS if GATES[c] * H == hh[0]]
        raise ParameterError(
            f"rnn.weight_hh_l0 has shape {hh}, but a {cell} cell with hidden size {H} needs "
            f"({GATES[cell] * H}, {H})" + (f"; is this a {hint[0]} model?" if hint else "")
        )
    layers = 0
    while f"rnn.weight_ih_l{layers}" in sd:
        layers += 1
    if layers == 0:
        raise ParameterError("state_dict has no 'rnn.weight_ih_l0'")
    adaptive = (
        _infer_adaptive(sd, int(enc[0]), int(H), shape_of) if "decoder.head.weight" in sd else {}
    )
    if adaptive and tied:
        raise ConfigError(
            "tied=True, but the state_dict has an adaptive output (decoder.head.weight), "
            "which cannot be tied: pass tied=False"
        )
    return ModelConfig(
        cell=cell,
        vocab_size=int(enc[0]),
        emb_size=int(enc[1]),
        hidden_size=int(H),
        num_layers=layers,
        tied=tied,
        residual=residual,
        **adaptive,
    )


def _infer_adaptive(sd: dict, V: int, H: int, shape_of) -> dict:
    """cutoffs, div_value and head_bias of an nn.AdaptiveLogSoftmaxWithLoss decoder from
    its parameters' shapes (head (C + n, H), tail i (u_i, H) and (w_i, u_i))."""
    n = 0
    while f"decoder.tail.{n}.0.weight" in sd:
        n += 1
    head = shape_of("decoder.head.weight")
    if n == 0 or len(head) != 2 or head[0] <= n:
        raise ParameterError(
            f"decoder.head.weight has shape {head} with {n} tail cluster(s) "
            "(decoder.tail.{i}.0.weight): not an adaptive softmax's head (C + n, H)"
        )
    cutoffs, units = [head[0] - n], []
    for i in range(n):
        s0, s1 = shape_of(f"decoder.tail.{i}.0.weight"), shape_of(f"decoder.tail.{i}.1.weight")
        if len(s0) != 2 or len(s1) != 2 or s1[1] != s0[0] or s0[1] != H or s1[0] < 1:
            raise ParameterError(
                f"decoder.tail.{i} has shapes {s0} and {s1}: they must be (u, {H}) and (w, u)"
            )
        units.append(s0[0])
        cutoffs.append(cutoffs[-1] + s1[0])
    if cutoffs[-1] != V:
        raise ParameterError(
            f"the adaptive output covers {cutoffs[-1]} ids (shortlist {cutoffs[0]} + the "
            f"tails' {cutoffs[-1] - cutoffs[0]}), but encoder.weight has {V} rows"
        )
    # div_value: PyTorch projects tail i to int(H // div ** (i + 1)) units; the shapes pin
    # it down only to a range, so take the default 4 or another power that fits
    candidates = [4.0, 2.0, 8.0, 3.0, 16.0, float(H) / units[0]]
    div = next(
        (d for d in candidates if all(int(H // d ** (i + 1)) == u for i, u in enumerate(units))),
        None,
    )
    if div is None:
        raise ParameterError(
            f"the tail projections have {units} units for hidden size {H}: no div_value "
            "gives H // div_value ** (i + 1) for each"
        )
    return {
        "cutoffs": tuple(cutoffs[:-1]),
        "div_value": div,
        "head_bias": "decoder.head.bias" in sd,
    }


def as_array(name: str, value) -> np.ndarray:
    """np.asarray(value), with any failure (a ragged list, a torch tensor that requires
    grad, ...) reported as a ParameterError naming the parameter."""
    try:
        return np.asarray(value)
    except Exception as e:
        raise ParameterError(
            f"parameter {name!r} is not an array ({type(e).__name__}: {e}); pass numpy "
            "arrays (for torch: {k: v.detach().cpu().numpy() for k, v in sd.items()})"
        ) from None


def validated_params(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Float32, C-contiguous, read-only copies, checked against config. Raises ParameterError."""
    if not isinstance(params, Mapping):
        raise ParameterError(f"params must be a dict of name -> array; got {type(params).__name__}")
    expected = config.parameter_shapes()
    unknown = sorted(set(params) - set(expected))
    if unknown:
        raise ParameterError(
            f"unexpected parameter(s) {', '.join(map(repr, unknown))} for a "
            f"{config.num_layers}-layer {config.cell} model"
            + ("; tied models take no decoder.weight" if "decoder.weight" in unknown else "")
        )
    out = {}
    for name, shape in expected.items():
        if name not in params:
            raise ParameterError(f"missing parameter {name!r} (expected shape {shape})")
        a = as_array(name, params[name])
        if not np.issubdtype(a.dtype, np.floating):
            raise ParameterError(f"parameter {name!r} must be floating point; got dtype {a.dtype}")
        if a.shape != shape:
            raise ParameterError(f"parameter {name!r} must have shape {shape}; got {a.shape}")
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: reported below
            a = np.array(a, dtype=np.float32, order="C", copy=True)
        if not np.all(np.isfinite(a)):
            raise ParameterError(
                f"parameter {name!r} contains NaN or infinity (or values beyond float32)"
            )
        a.flags.writeable = False
        out[name] = a
    return out


# Sums are checked against this rather than float32's largest value (3.4e38), leaving room
# for the rounding of a sum computed in float32 in a different order.
FLOAT32_SUM_LIMIT = 1e38


def check_sums_fit_float32(
    config: ModelConfig, params: dict[str, np.ndarray], output, row_l1=None, max_abs=None
) -> list:
    """Raise ParameterError when some pre-activation or logit could overflow float32.

    Every cell output lies in [-1, 1] (tanh, and convex mixes of tanh), so each row of a
    product is bounded by the L1 norm of its weights times the largest input (a residual
    layer's output adds its input: the bound grows by 1 a layer): bounding all
    of them here means the kernels never see an inf, nor a NaN from inf - inf, which the
    softmax's max could not be trusted to report. The bound is loose only for absurd
    weights: a trained model's sums are below 1e3.

    An initial state given by the caller may hold |h| > 1: returns, per layer, (bound of
    the pre-activations without the recurrent term, largest row L1 norm of W_hh), with
    which inputs.check_state bounds the first step's sums for such a state.

    row_l1(name), max_abs(name): a matrix's row L1 norms (float64) and largest |weight|,
    computed from params by default (an int8 model gives its own, from q and the scales,
    without a float copy of the weights); params must hold the biases.
    """

    if row_l1 is None:

        def row_l1(name):
            return np.abs(params[name].astype(np.float64)).sum(axis=1)

    if max_abs is None:

        def max_abs(name):
            return float(np.max(np.abs(params[name]), initial=0.0))

    def check(names, bound):
        largest = float(np.max(bound))
        if not largest < FLOAT32_SUM_LIMIT:
            raise ParameterError(
                f"parameters {', '.join(map(repr, names))} are so large that the model's sums "
                f"of their products would overflow float32 (a bound of {largest:.3g} on them); "
                "weights of a trained model are far smaller"
            )

    recurrent_bounds = []
    x_bound = max_abs("encoder.weight")
    for layer in range(config.num_layers):
        w_ih, w_hh = f"rnn.weight_ih_l{layer}", f"rnn.weight_hh_l{layer}"
        b_ih, b_hh = f"rnn.bias_ih_l{layer}", f"rnn.bias_hh_l{layer}"
        biases = np.abs(params[b_ih].astype(np.float64)) + np.abs(params[b_hh])
        x_name = "encoder.weight" if layer == 0 else f"the layer {layer - 1} outputs"
        input_part = row_l1(w_ih) * x_bound + biases
        check([x_name, w_ih, b_ih, b_hh], input_part)
        check([w_ih, w_hh, b_ih, b_hh], input_part + row_l1(w_hh))
        recurrent_bounds.append((float(np.max(input_part)), float(np.max(row_l1(w_hh)))))
        x_bound = 1.0 + (x_bound if config.residual_layers[layer] else 0.0)
    output.check_sums(params, x_bound, check, row_l1)  # the logits
    return recurrent_bounds
