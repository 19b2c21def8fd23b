"""What a caller gives a model's passes (token ids, states, dropout masks), checked before
any kernel sees it: a clear InputError naming what is wrong, then arrays of the kernels'
dtype and layout on the model's backend."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .params import FLOAT32_SUM_LIMIT
from .state import State


def check_ids(model, ids, what: str) -> np.ndarray:
    try:
        arr = np.asarray(ids)
    except Exception as e:  # ragged lists and the like
        raise InputError(f"{what} must be a (T, B) integer array; {e}") from None
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{what} must be a (T, B) integer array; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(
            f"{what} must be a (T, B) array (time, batch); got {arr.ndim} dimensions "
            f"{arr.shape}; use ids.reshape(-1, 1) for one sequence"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {arr.shape}); give at least one token")
    V = model.config.vocab_size
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= V:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in np.argwhere(arr == bad)[0])
        raise InputError(
            f"{what}[{where[0]}, {where[1]}] = {bad} is outside the vocabulary [0, {V})"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_state_magnitude(model, h: np.ndarray) -> None:
    """A cell's own h lies in [-1, 1]; a caller's larger h must still keep the first
    step's sums within float32 (see check_sums_fit_float32)."""
    for layer, (input_part, w_hh_l1) in enumerate(model._recurrent_bounds):
        largest = float(np.max(np.abs(h[layer]), initial=0.0))
        if largest > 1.0 and not input_part + w_hh_l1 * largest < FLOAT32_SUM_LIMIT:
            raise InputError(
                f"state h of layer {layer} is so large (|h| up to {largest:.3g}) that this "
                "model's sums would overflow float32; a cell's own h lies in [-1, 1]"
            )


def check_masks(model, masks, T: int, B: int):
    """None, or the masks as flat (T*B, width) float32 arrays on the backend."""
    if masks is None:
        return None
    c = model.config
    widths = [c.emb_size] + [c.hidden_size] * c.num_layers
    if not isinstance(masks, list | tuple) or len(masks) != len(widths):
        raise InputError(
            f"dropout_masks must be a list of {len(widths)} arrays (embeddings, then "
            f"each layer's output); got {type(masks).__name__}"
            + (f" of length {len(masks)}" if isinstance(masks, list | tuple) else "")
        )
    out = []
    for i, (m, width) in enumerate(zip(masks, widths, strict=True)):
        try:
            a = np.asarray(m, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"dropout mask {i} is not a float array ({e})") from None
        if a.shape != (T, B, width):
            raise InputError(f"dropout mask {i} must have shape {(T, B, width)}; got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise InputError(f"dropout mask {i} contains NaN or infinity")
        out.append(model._k.to_device(np.ascontiguousarray(a).reshape(T * B, width)))
    return out


def check_pair(model, inputs, targets):
    inputs = check_ids(model, inputs, "inputs")
    targets = check_ids(model, targets, "targets")
    if inputs.shape != targets.shape:
        raise InputError(
            f"inputs and targets must have the same (T, B) shape; got {inputs.shape} "
            f"and {targets.shape}"
        )
    return inputs, targets


def check_state(model, state, batch: int) -> State:
    c = model.config
    if state is None:
        return model.zero_state(batch)
    if isinstance(state, np.ndarray) or (
        not isinstance(state, tuple | list) and model._k.is_array(state)
    ):  # h alone: a numpy array, or a device array of the backend
        state = (state,)
    if not isinstance(state, tuple) or len(state) not in (1, 2):
        raise InputError(
            "state must be a State, a tuple (h, c) or (h,), or an array h; "
            f"got {type(state).__name__}"
        )
    h = state[0]
    cc = state[1] if len(state) == 2 else None
    shape = (c.num_layers, batch, c.hidden_size)
    if c.cell == "lstm" and cc is None:
        raise InputError("an lstm state needs both h and c; got only h")
    if c.cell != "lstm" and cc is not None:
        raise InputError(f"a {c.cell} state has no c; pass (h,) or h alone")
    out = []
    for name, a in (("h", h), ("c", cc)):
        if a is None:
            out.append(None)
            continue
        if not isinstance(a, np.ndarray) and model._k.is_array(a):
            out.append(_checked_device_state(model, name, a, shape))
            continue
        a = np.asarray(a)
        if a.shape != shape:
            raise InputError(
                f"state {name} must have shape (layers, batch, hidden) = {shape}; got {a.shape}"
            )
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"state {name} must be floating point; got {a.dtype}")
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: reported below
            a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.all(np.isfinite(a)):
            raise InputError(f"state {name} contains NaN or infinity (or values beyond float32)")
        if name == "h":
            check_state_magnitude(model, a)
        out.append(a)
    # only once both are valid: nothing reaches the backend before validation ends
    return State(*(None if a is None else model._k.to_device(a) for a in out))


def _checked_device_state(model, name: str, a, shape: tuple):
    """A state array already on the device (returned by an earlier pass, so that
    carrying it costs no copy): its shape and dtype, and finiteness through one
    reduction read back as a single number."""
    if tuple(a.shape) != shape or a.dtype != np.float32:
        raise InputError(
            f"state {name} must be a float32 array of shape (layers, batch, hidden) = "
            f"{shape}; got {a.dtype} {tuple(a.shape)}"
        )
    if not a.is_c_contiguous():  # a slice of a state (a device array's reshape
        a = model._k.clone(a)  # would copy: a real DeviceNDArray refuses to)
    flat = a.reshape(-1)
    if not np.isfinite(model._k.sum_of_squares(flat)):
        raise InputError(f"state {name} contains NaN or infinity")
    if name == "h" and model._k.max_abs(flat) > 1.0:  # a cell's own h never is
        check_state_magnitude(model, np.asarray(model._k.to_host(a)))
    return a
