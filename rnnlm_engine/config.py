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
    """

    cell: str
    vocab_size: int
    emb_size: int
    hidden_size: int
    num_layers: int
    tied: bool = False
    residual: bool = False

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
        if self.tied and self.emb_size != self.hidden_size:
            raise ConfigError(
                f"tied weights need emb_size == hidden_size; got {self.emb_size} and "
                f"{self.hidden_size}"
            )

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
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {"cell", "vocab_size", "emb_size", "hidden_size", "num_layers", "tied", "residual"}
        missing = {"cell", "vocab_size", "emb_size", "hidden_size", "num_layers"} - set(d)
        if missing:
            raise ConfigError(f"config is missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in known})
