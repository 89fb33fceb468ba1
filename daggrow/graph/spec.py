"""Serialisable descriptions of nodes and edges (pydantic, frozen).

A node is a tensor: ``z_v = Σ_{e=(u→v)} f_e(h_u)``, then ``h_v = dropout(σ_v(norm(z_v)))``.
An edge is a block ``f_e`` from its source's value to its target's pre-activation.
An *op node* (``NodeSpec.op``) is the exception: ``z_v = op(h_{u_0}, …, h_{u_{k-1}})``, a fixed
program of torch calls whose inputs are the sources of its operand edges (opaque to growth).
The specs hold no tensors; the graph keeps each edge's ``nn.Module`` beside its spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT_VERSION = 2  # 2: layouts, op nodes, placement/operand edges, ceil_mode pools


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LinearBlock(_Frozen):
    """``f(h) = W h + b``; W has shape (width of target, features of source). Growable.

    A source with a spatial shape (an image or sequence node) is flattened first, channel-major
    (``torch.flatten(h, 1)``), so "conv → flatten → linear" is one linear edge.
    """

    kind: Literal["linear"] = "linear"
    bias: bool = True


def _tuple(value: int | tuple[int, ...] | list[int], dim: int, name: str) -> tuple[int, ...]:
    out = (value,) * dim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != dim:
        raise ValueError(f"{name} needs {dim} entries for a {dim}-d block, got {value!r}")
    return out


def conv_output_shape(shape: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                      padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial output shape of a convolution (PyTorch's formula), per dimension."""
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(shape, kernel, stride, padding, dilation))


class ConvBlock(_Frozen):
    """``nn.Conv1d`` / ``nn.Conv2d`` from one image/sequence node to another. Growable when
    ``groups == 1`` (new channels are new output rows / input columns of the kernel)."""

    kind: Literal["conv"] = "conv"
    dim: Literal[1, 2]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = Field(default=1, ge=1)
    bias: bool = True

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dim" in data:
            dim = int(data["dim"])
            data = dict(data)
            for name, default in (("kernel_size", None), ("stride", 1), ("padding", 0), ("dilation", 1)):
                value = data.get(name, default)
                if value is None:
                    raise ValueError("a conv block needs kernel_size")
                data[name] = _tuple(value if value != () else default, dim, name)
        return data

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape (PyTorch's formula)."""
        return conv_output_shape(shape, self.kernel_size, self.stride, self.padding, self.dilation)


class PoolBlock(_Frozen):
    """A parameter-free pooling: ``max``/``avg`` (kernel, stride, padding) or ``adaptive_avg``
    (``output_size``), 1-d or 2-d; channels pass through unchanged."""

    kind: Literal["pool"] = "pool"
    op: Literal["max", "avg", "adaptive_avg"]
    dim: Literal[1, 2]
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    output_size: tuple[int, ...] = ()
    ceil_mode: bool = False          # max/avg: windows may start in the last partial stretch
    count_include_pad: bool = True   # avg: the zero padding counts in the mean

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "dim" in data:
            dim, data = int(data["dim"]), dict(data)
            if data.get("op") == "adaptive_avg":
                data["output_size"] = _tuple(data.get("output_size", 1), dim, "output_size")
            else:
                if "kernel_size" not in data:
                    raise ValueError("a max/avg pool needs kernel_size")
                data["kernel_size"] = _tuple(data["kernel_size"], dim, "kernel_size")
                stride = data.get("stride") or data["kernel_size"]
                data["stride"] = _tuple(stride, dim, "stride")
                data["padding"] = _tuple(data.get("padding", 0), dim, "padding")
        return data

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.op == "adaptive_avg":
            return self.output_size
        return tuple(pool_output_size(s, k, st, p, self.ceil_mode)
                     for s, k, st, p in zip(shape, self.kernel_size, self.stride, self.padding))


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size: floor (or ceil) of (size + 2p − k)/s + 1; with ``ceil_mode``
    a last window that would start inside the right padding is dropped.

    >>> pool_output_size(112, 3, 2, 0, False), pool_output_size(112, 3, 2, 0, True)
    (55, 56)
    """
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class FlattenBlock(_Frozen):
    """``torch.flatten(h, 1)``: an image/sequence node to a vector node of C·Π(shape) features."""

    kind: Literal["flatten"] = "flatten"


class IdentityBlock(_Frozen):
    """``f(h) = scale · h`` (a skip connection); source and target widths must agree."""

    kind: Literal["identity"] = "identity"
    scale: float = 1.0


class FrozenBlock(_Frozen):
    """An opaque module kept as it was traced (``leaf_modules=``); growth never touches it."""

    kind: Literal["frozen"] = "frozen"
    module_type: str = "Module"


class PlaceBlock(_Frozen):
    """``scale · h_u`` written into features ``[offset, offset + width_u)`` of the target (zero
    elsewhere): a concatenation along features/channels is a sum of placements, so the
    concatenated node stays "sum of in-edges, then activation". Source and target share their
    layout and spatial shape."""

    kind: Literal["place"] = "place"
    offset: int = Field(ge=0)
    scale: float = 1.0


class OperandBlock(_Frozen):
    """Argument ``position`` of an op node's program: the source's value passed as it is.

    Only op nodes have operand in-edges, exactly one per position ``0 … k−1``."""

    kind: Literal["operand"] = "operand"
    position: int = Field(ge=0)


Block = Annotated[Union[LinearBlock, ConvBlock, IdentityBlock, PoolBlock, FlattenBlock, FrozenBlock, PlaceBlock,
                        OperandBlock],
                  Field(discriminator="kind")]
GROWABLE_KINDS = frozenset({"linear", "conv"})
PARAMETER_FREE_KINDS = frozenset({"identity", "pool", "flatten", "place", "operand"})


def is_growable(block: "Block") -> bool:
    """Linear blocks, and convolutions with ``groups == 1``."""
    return block.kind == "linear" or (block.kind == "conv" and block.groups == 1)


class NormSpec(_Frozen):
    """A normalisation applied to the node's pre-activation sum, before the activation."""

    kind: Literal["batchnorm", "layernorm"]  # batchnorm: 1-d for vectors and sequences, 2-d for images
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


class OpStep(_Frozen):
    """One call of an op node's program. Values are numbered: the program's inputs first, then
    one per step. Arguments are JSON: ``{"ref": i}`` is value i; tuples, slices, dtypes and
    devices are tagged (``{"tuple": [...]}``, ``{"slice": [a, b, c]}``, ``{"dtype": "float32"}``,
    see :mod:`daggrow.graph.opaque`).

    ``call``: ``function`` (``target`` an allow-listed name such as ``torch.cat``,
    ``operator.mul``, ``torch.nn.functional.layer_norm``), ``method`` (a tensor method name such
    as ``permute``), ``module`` (``target`` a submodule slot ``m0``, ``m1`` … of the op's module)
    or ``constant`` (a tensor slot ``p0``, ``p1`` …: a parameter or buffer the program reads).
    """

    call: Literal["function", "method", "module", "constant"]
    target: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OpSpec(_Frozen):
    """The program of an op node: ``z_v = program(h_{u_0}, …, h_{u_{inputs−1}})``.

    ``label`` names what it does (``operator.mul``, ``permute → layer_norm → permute``);
    ``modules`` gives the class name of each module slot (for drawings); ``source`` quotes
    the user's line(s) it came from.
    """

    inputs: int = Field(ge=0)
    steps: list[OpStep]
    output: int = Field(ge=0)
    label: str = ""
    modules: dict[str, str] = Field(default_factory=dict)
    source: str = ""

    @model_validator(mode="after")
    def _valid_output(self) -> "OpSpec":
        if self.output >= self.inputs + len(self.steps):
            raise ValueError(f"output {self.output} is not a value of the program ({self.inputs} inputs, "
                             f"{len(self.steps)} steps)")
        return self


Layout = Literal["channels", "tokens", "opaque"]


class NodeSpec(_Frozen):
    """A tensor of the graph. ``layout`` says how its value is laid out:

    * ``channels`` (default): ``(n, width, *shape)``: a vector (shape ``()``), a sequence
      ``(L,)`` or an image ``(H, W)`` of ``width`` channels;
    * ``tokens``: ``(n, *shape, width)``: ``width`` features per token over a token grid
      ``(T,)`` or ``(H, W)`` (transformers, MLP-Mixer, channels-last blocks); linear edges and
      LayerNorm act on the last dimension;
    * ``opaque``: anything else an op node produces or an input holds (a tuple, a tensor whose
      batch is not the first dimension or that has more than four dimensions); only op nodes
      read it, ``width`` is 1 and ``shape`` is ``()``.
    """

    name: str
    width: int = Field(ge=1)             # features of a vector node; channels of an image/sequence node
    shape: tuple[int, ...] = ()          # spatial shape: () vector, (L,) sequence, (H, W) image / token grid
    layout: Layout = "channels"
    activation: str = "identity"
    activation_params: dict[str, float] = Field(default_factory=dict)
    norm: NormSpec | None = None
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    dropout_mode: Literal["element", "row", "batch"] = "element"  # row/batch: stochastic depth
    op: OpSpec | None = None  # an op node: its value is this program of its operand edges' sources
    born: int = 0  # growth step that created the node (0: the starting graph)

    @property
    def features(self) -> int:
        """Numbers per sample: width × Π(shape)."""
        out = self.width
        for s in self.shape:
            out *= s
        return out

    @property
    def spatial(self) -> bool:
        """A sequence or image node whose channels come first: ``(n, C, L)`` or ``(n, C, H, W)``."""
        return self.layout == "channels" and bool(self.shape)

    @property
    def feature_dim(self) -> int:
        """The dimension of the value that holds the ``width`` features or channels."""
        return -1 if self.layout == "tokens" else 1

    @property
    def value_shape(self) -> tuple[int, ...] | None:
        """The shape of one sample's value: ``(width, *shape)`` or, for tokens, ``(*shape, width)``
        (``None`` for an opaque value)."""
        if self.layout == "opaque":
            return None
        return (*self.shape, self.width) if self.layout == "tokens" else (self.width, *self.shape)

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) > 2 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be () , (L,) or (H, W) with positive sizes, got {shape}")
        return shape

    @model_validator(mode="after")
    def _valid_layout(self) -> "NodeSpec":
        if self.layout == "tokens" and not self.shape:
            raise ValueError("a tokens node needs a token grid shape (T,) or (H, W)")
        if self.layout == "opaque" and (self.shape or self.width != 1 or self.norm
                                        or self.activation != "identity" or self.dropout):
            raise ValueError("an opaque-layout node (an op node's or an input's value that only op nodes read) "
                             "has width 1 and shape (), without norm, activation or dropout")
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not name or not name.strip() or any(c in name for c in "\n\r\"'"):
            raise ValueError(f"invalid node name {name!r}: use a non-empty name without quotes or newlines")
        return name


class EdgeSpec(_Frozen):
    name: str
    source: str
    target: str
    block: Block
    born: int = 0  # growth step that created the edge


class GrowthRecord(_Frozen):
    """Which parts of the graph a growth step created: kept on the graph and saved with it.

    ``neurons`` maps a node to the ``[start, stop)`` range of the neurons the step appended.
    """

    step: int
    action: str
    nodes: list[str] = Field(default_factory=list)
    edges: list[str] = Field(default_factory=list)
    neurons: dict[str, tuple[int, int]] = Field(default_factory=dict)


class GraphSpec(_Frozen):
    """Everything about a graph except its tensors: what ``Graph.save`` writes as JSON."""

    format: Literal["daggrow-graph"] = "daggrow-graph"
    format_version: int = FORMAT_VERSION
    nodes: list[NodeSpec]
    edges: list[EdgeSpec]
    inputs: list[str]
    outputs: list[str]
    step: int = 0
    growth_log: list[GrowthRecord] = Field(default_factory=list)

