"""Model configuration: the shape-defining settings, stored in model files under these names."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError

CELLS = ("rnn", "gru", "lstm")

# gate rows per hidden unit, in PyTorch's order: lstm [i, f, g, o], gru [r, z, n], rnn [h]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a recurrent language model.

    Letters used throughout: V vocabulary, E embedding, H hidden, L layers, G gate rows
    (G = GATES[cell] * H).

    residual: the output of layer l is its cell's h plus its input (the input the cell
    reads, after dropout in training) for every layer l >= 1, and for layer 0 too when
    emb_size == hidden_size (see ``residual_layers``). No parameters are added.

    cutoffs: None (a full softmax over the vocabulary), or the adaptive softmax's cutoffs
    (PyTorch's nn.AdaptiveLogSoftmaxWithLoss): increasing ids in (0, V); the head scores
    the ids below cutoffs[0] and one logit per tail cluster, cluster i holds the ids in
    [cutoffs[i], cutoffs[i + 1]) (the last ends at V) and scores them through a projection
    to hidden_size // div_value ** (i + 1) units (see ``tail_sizes``); head_bias: whether
    the head has a bias. Ids are frequency ranks, so the shortlist holds the most frequent.
    """

    cell: str
    vocab_size: int
    emb_size: int
    hidden_size: int
    num_layers: int
    tied: bool = False
    residual: bool = False
    cutoffs: tuple[int, ...] | None = None
    div_value: float = 4.0
    head_bias: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        for name in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be at least 2; got {self.vocab_size}")
        if not isinstance(self.tied, bool):
            raise ConfigError(f"tied must be True or False; got {self.tied!r}")
        if not isinstance(self.residual, bool):
            raise ConfigError(f"residual must be True or False; got {self.residual!r}")
        if self.cutoffs is not None:
            self._check_adaptive()
        if self.tied and self.emb_size != self.hidden_size:
            raise ConfigError(
                f"tied weights need emb_size == hidden_size; got {self.emb_size} and "
                f"{self.hidden_size}"
            )

    def _check_adaptive(self) -> None:
        c = self.cutoffs
        if isinstance(c, list):
            object.__setattr__(self, "cutoffs", c := tuple(c))  # from a file's list
        if (
            not isinstance(c, tuple)
            or not c
            or any(isinstance(v, bool) or not isinstance(v, int) for v in c)
        ):
            raise ConfigError(f"cutoffs must be a non-empty sequence of integers; got {c!r}")
        increasing = all(b > a for a, b in zip(c, c[1:], strict=False))
        if not increasing or c[0] < 1 or c[-1] >= self.vocab_size:
            raise ConfigError(
                f"cutoffs must increase strictly, each in [1, vocab_size - 1] = [1, "
                f"{self.vocab_size - 1}]; got {list(c)}"
            )
        d = self.div_value
        if isinstance(d, bool) or not isinstance(d, int | float) or not d > 0 or d != d:
            raise ConfigError(f"div_value must be a positive number; got {d!r}")
        if not isinstance(self.head_bias, bool):
            raise ConfigError(f"head_bias must be True or False; got {self.head_bias!r}")
        if self.tied:
            raise ConfigError(
                "tied weights cannot go with an adaptive output (the decoder has no (V, H) "
                "matrix to share; PyTorch cannot tie them either): use tied=False"
            )
        for i, (units, _) in enumerate(self.tail_sizes()):
            if units < 1:
                raise ConfigError(
                    f"tail cluster {i} would project to hidden_size // div_value ** {i + 1} = "
                    f"{self.hidden_size} // {d} ** {i + 1} = 0 units: use fewer cutoffs or a "
                    "smaller div_value"
                )

    @property
    def adaptive(self) -> bool:
        """Whether the output is an adaptive softmax (cutoffs set)."""
        return self.cutoffs is not None

    def tail_sizes(self) -> list[tuple[int, int]]:
        """Per tail cluster (projection units, words), as PyTorch computes them."""
        bounds = [*self.cutoffs, self.vocab_size]
        return [
            (int(self.hidden_size // (self.div_value ** (i + 1))), bounds[i + 1] - bounds[i])
            for i in range(len(self.cutoffs))
        ]

    @property
    def gate_rows(self) -> int:
        """G: rows of each weight_ih / weight_hh matrix."""
        return GATES[self.cell] * self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.emb_size if layer == 0 else self.hidden_size

    @property
    def residual_layers(self) -> tuple[bool, ...]:
        """For each layer, whether its output adds its input (residual and sizes match)."""
        return tuple(
            self.residual and self.layer_input_size(k) == self.hidden_size
            for k in range(self.num_layers)
        )

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape, exactly as in PyTorch word_language_model's RNNModel.state_dict().

        For tied models decoder.weight is the encoder's array and is not listed twice.
        """
        shapes: dict[str, tuple[int, ...]] = {"encoder.weight": (self.vocab_size, self.emb_size)}
        for k in range(self.num_layers):
            shapes[f"rnn.weight_ih_l{k}"] = (self.gate_rows, self.layer_input_size(k))
            shapes[f"rnn.weight_hh_l{k}"] = (self.gate_rows, self.hidden_size)
            shapes[f"rnn.bias_ih_l{k}"] = (self.gate_rows,)
            shapes[f"rnn.bias_hh_l{k}"] = (self.gate_rows,)
        if self.cutoffs is not None:  # nn.AdaptiveLogSoftmaxWithLoss's names under decoder.
            head = self.cutoffs[0] + len(self.cutoffs)
            shapes["decoder.head.weight"] = (head, self.hidden_size)
            if self.head_bias:
                shapes["decoder.head.bias"] = (head,)
            for i, (units, words) in enumerate(self.tail_sizes()):
                shapes[f"decoder.tail.{i}.0.weight"] = (units, self.hidden_size)
                shapes[f"decoder.tail.{i}.1.weight"] = (words, units)
            return shapes
        if not self.tied:
            shapes["decoder.weight"] = (self.vocab_size, self.hidden_size)
        shapes["decoder.bias"] = (self.vocab_size,)
        return shapes

    def num_parameters(self) -> int:
        total = 0
        for shape in self.parameter_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def to_dict(self) -> dict:
        """The settings by name; residual only when set, so that a plain model's dict (its
        file header, its fingerprint) is what it was before residual layers existed."""
        d = asdict(self)
        if not self.residual:
            del d["residual"]
        if self.cutoffs is None:  # a full softmax's dict is what it was before them
            del d["cutoffs"], d["div_value"], d["head_bias"]
        else:
            d["cutoffs"] = list(self.cutoffs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {"cell", "vocab_size", "emb_size", "hidden_size", "num_layers", "tied", "residual",
                 "cutoffs", "div_value", "head_bias"}  # fmt: skip
        missing = {"cell", "vocab_size", "emb_size", "hidden_size", "num_layers"} - set(d)
        if missing:
            raise ConfigError(f"config is missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in known})
