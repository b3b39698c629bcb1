"""Attention layers: MultiHeadAttention, Attention and AdditiveAttention (Keras 3 weights and layouts)."""
import math

import numpy as np

from ..errors import ShapeError, format_shape
from .base import BoolArg, Choice, FloatArg, InitializerArg, IntArg, Layer, Optional


def masked_softmax(ctx, scores, allowed, subtract=False, zero_masked=False):
    """softmax(scores) over the last axis, the scores pushed down where ``allowed`` (0/1 numbers
    broadcasting to them; None: nothing masked) is 0, as Keras 3 does in each layer:
    MultiHeadAttention's where(allowed, scores, -1e9) leaves a masked score no gradient (a query
    row masked everywhere, uniform, trains nothing upstream), and with ``zero_masked`` the
    probabilities are where(allowed, p, 0) too (such a row attends nowhere); Attention's
    (``subtract``) where(allowed, scores, scores - 1e9) keeps a masked score's gradient (a row
    masked everywhere is softmax(scores - 1e9))."""
    if allowed is None:
        return ctx.op("Softmax", scores, axis=-1)
    if subtract:
        big = 65504.0 if scores.dtype == "float16" else 1e9  # (float16's largest, as Keras's Attention)
        return ctx.op("Softmax", ctx.op("Add", scores, ctx.op("Mul", ctx.op("Sub", 1.0, allowed), -big)), axis=-1)
    scores = ctx.op("Add", ctx.op("Mul", scores, allowed), ctx.op("Mul", ctx.op("Sub", 1.0, allowed), -1e9))
    probs = ctx.op("Softmax", scores, axis=-1)
    return ctx.op("Mul", probs, allowed) if zero_masked else probs


def _check_dtypes(kind, query, value, key):
    """Floating-point inputs of one dtype (the products mix no dtypes)."""
    for what, t in (("query", query), ("value", value), ("key", key)):
        if not t.type.is_float:
            raise ShapeError(f"{kind} needs floating-point inputs, got the {what} {t.type}",
                             hint="Embedding maps ids to vectors; cast(x, float32) converts numbers")
    for what, t in (("value", value), ("key", key)):
        if t.dtype != query.dtype:
            raise ShapeError(f"{kind} needs the query and the {what} to have one dtype, got {query.dtype} and "
                             f"{t.dtype}", hint=f"cast the {what} with cast({what}, {query.dtype})")


def causal_mask(ctx, query, value):
    """Keras's use_causal_mask as [1, Tq, Tv] 0/1 numbers: query step i sees value steps j <= i.
    A constant where both step counts are known, else made from the steps at run time."""
    rows, cols = query.shape[1], value.shape[1]
    if isinstance(rows, int) and isinstance(cols, int):
        return ctx.const((np.arange(rows)[:, None] >= np.arange(cols)[None, :])[None].astype(query.dtype),
                         query.dtype)
    i = ctx.op("Unsqueeze", ctx.op("Positions", query, axis=1), axes=(1,))
    j = ctx.op("Unsqueeze", ctx.op("Positions", value, axis=1), axes=(0,))
    return ctx.op("Unsqueeze", ctx.op("Cast", ctx.op("GreaterOrEqual", i, j), to=query.dtype), axes=(0,))


def _query_value_key(kind, inputs):
    """An attention layer's (query, value[, key]) inputs, the key being the value where not
    given: each [steps, features] with known features, key and value of one length, one dtype."""
    if len(inputs) not in (2, 3):
        raise ShapeError(f"{kind} takes (query, value) or (query, value, key), got {len(inputs)} input"
                         f"{'s' * (len(inputs) != 1)}")
    query, value = inputs[:2]
    key = inputs[2] if len(inputs) == 3 else value
    for what, t in (("query", query), ("value", value), ("key", key)):
        if t.rank != 3 or not isinstance(t.shape[-1], int):
            raise ShapeError(f"{kind} expects the {what} as [steps, features] with known features, "
                             f"got {format_shape(t.shape[1:])}")
    if key.shape[1] != value.shape[1]:
        raise ShapeError(f"{kind} key and value need one number of steps, got {key.shape[1]} and {value.shape[1]}")
    _check_dtypes(kind, query, value, key)
    return query, value, key


class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product attention, called on ``(query, value)`` or
    ``(query, value, key)`` (key defaults to value), each ``[steps, features]``:
    per head, ``softmax(Q K^T / sqrt(key_dim)) V``, the heads joined by the output projection.

    Args:
        num_heads: number of heads.
        key_dim: size of each head's query and key.
        value_dim: size of each head's value; none = key_dim.
        dropout: dropout rate on the attention probabilities (training only), 0.0.
        use_bias: true.
        output_shape: size of the output's last axis; none = the query's.
        use_causal_mask: false; true lets query step i attend to the value steps 0..i only
            (Keras's call argument of that name; named step counts too).
        kernel_initializer: glorot_uniform. bias_initializer: zeros.

    Weights (Keras 3 order): query/kernel [query_dim, num_heads, key_dim], query/bias
    [num_heads, key_dim], key/kernel [key_features, num_heads, key_dim], key/bias,
    value/kernel [value_features, num_heads, value_dim], value/bias [num_heads, value_dim],
    attention_output/kernel [num_heads, value_dim, output], attention_output/bias [output]
    (biases only with use_bias).

    Called with ``attention_mask=m`` (Keras's call argument), m [Tq, Tv] per sample (any dtype:
    nonzero where query step i may attend to value step j), which joins the padding and causal
    masks; with ``return_attention_scores=true`` it also gives the attention probabilities
    [num_heads, Tq, Tv] per sample (``y, scores = MultiHeadAttention(2, 8)(q, v,
    return_attention_scores=true)``); ``use_causal_mask=true`` in the call is the argument's.
    """
    n_inputs = None  # two or three
    call_keywords = ("attention_mask",)
    call_flags = ("return_attention_scores", "use_causal_mask")

    def __init__(self, num_heads: IntArg(1), key_dim: IntArg(1), value_dim: Optional(IntArg(1)) = None,
                 dropout: FloatArg(0.0, 1.0) = 0.0, use_bias: BoolArg() = True,
                 output_shape: Optional(IntArg(1)) = None, use_causal_mask: BoolArg() = False,
                 kernel_initializer: InitializerArg() = ("glorot_uniform", ()),
                 bias_initializer: InitializerArg() = ("zeros", ())):
        self.num_heads, self.key_dim = num_heads, key_dim
        self.use_causal_mask = use_causal_mask
        self.value_dim = key_dim if value_dim is None else value_dim
        self.dropout, self.use_bias, self.output_shape = dropout, use_bias, output_shape
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def _inputs(self, inputs):
        return _query_value_key(self.kind(), inputs)

    def build(self, ctx, *inputs):
        query, value, key = self._inputs(inputs)
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        out = self.output_shape or query.shape[-1]
        self.w = {}
        for part, t, size in (("query", query, dk), ("key", key, dk), ("value", value, dv)):
            kernel = ctx.add_weight(self, f"{part}/kernel", (t.shape[-1], h, size), t.dtype, self.kernel_initializer)
            bias = ctx.add_weight(self, f"{part}/bias", (h, size), t.dtype, self.bias_initializer) \
                if self.use_bias else None
            self.w[part] = (kernel, bias)
        kernel = ctx.add_weight(self, "attention_output/kernel", (h, dv, out), query.dtype, self.kernel_initializer)
        bias = ctx.add_weight(self, "attention_output/bias", (out,), query.dtype, self.bias_initializer) \
            if self.use_bias else None
        self.w["attention_output"] = (kernel, bias)

    def _project(self, ctx, x, part, size):
        """x [N, T, D] -> [N, heads, T, size] (EinsumDense abc,cde->abde, then heads first)."""
        kernel, bias = self.w[part]
        h = self.num_heads
        y = ctx.op("MatMul", x, ctx.op("Reshape", kernel, shape=(x.shape[-1], h * size)))
        if bias is not None:
            y = ctx.op("Add", y, ctx.op("Reshape", bias, shape=(h * size,)))
        y = ctx.op("Reshape", y, shape=(0, 0, h, size))
        return ctx.op("Transpose", y, perm=(0, 2, 1, 3))

    def call(self, ctx, *inputs, attention_mask=None, return_attention_scores=False, use_causal_mask=None):
        causal = self.use_causal_mask if use_causal_mask is None else use_causal_mask  # (the call's, as Keras)
        query, value, key = self._inputs(inputs)
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        q = self._project(ctx, query, "query", dk)
        k = self._project(ctx, key, "key", dk)
        v = self._project(ctx, value, "value", dv)
        q = ctx.op("Mul", q, 1.0 / math.sqrt(dk))  # Keras scales the query before the product
        scores = ctx.op("MatMul", q, ctx.op("Transpose", k, perm=(0, 1, 3, 2)))  # [N, h, Tq, Tk]
        allowed = self._padding_mask(ctx, query, value, key, inputs, causal)
        if attention_mask is not None:
            given = self._attention_mask(ctx, attention_mask, query, value)
            allowed = given if allowed is None else ctx.op("Mul", allowed, given)
        # Keras 3.15 computes the attention two ways: with dropout or the scores returned, its
        # Softmax layer, which zeroes the masked probabilities (a query step masked everywhere
        # attends nowhere); else dot_product_attention, where such a step attends uniformly
        zero = self.dropout > 0 or return_attention_scores
        scores = probs = masked_softmax(ctx, scores, allowed, zero_masked=zero)  # (returned before the dropout)
        if self.dropout > 0:
            probs = ctx.op("Dropout", probs, rate=self.dropout)
        attended = ctx.op("MatMul", probs, v)  # [N, h, Tq, dv]
        attended = ctx.op("Reshape", ctx.op("Transpose", attended, perm=(0, 2, 1, 3)), shape=(0, 0, h * dv))
        kernel, bias = self.w["attention_output"]
        out = kernel.shape[-1]
        y = ctx.op("MatMul", attended, ctx.op("Reshape", kernel, shape=(h * dv, out)))
        if bias is not None:
            y = ctx.op("Add", y, bias)
        if ctx.mask_of(query) is not None:  # (the output keeps the query's steps, and their mask)
            ctx.set_mask(y, ctx.mask_of(query))
        return (y, scores) if return_attention_scores else y

    @staticmethod
    def _attention_mask(ctx, masks, query, value):
        """Keras's attention_mask [N, Tq, Tv] as [N, 1, Tq, Tv] 0/1 numbers (nonzero: attend)."""
        mask = masks[0] if isinstance(masks, (list, tuple)) and len(masks) == 1 else masks
        want = (query.shape[1], value.shape[1])
        if isinstance(mask, (list, tuple)) or mask.rank != 3 or tuple(mask.shape[1:]) != want:
            got = f"{len(mask)} tensors" if isinstance(mask, (list, tuple)) else str(mask.type)
            raise ShapeError(f"MultiHeadAttention's attention_mask takes one tensor [{want[0]}, {want[1]}] "
                             f"(query steps, value steps), got {got}")
        allowed = mask if mask.dtype == "bool" else ctx.op("Cast", mask, to="bool")
        return ctx.op("Unsqueeze", ctx.op("Cast", allowed, to=query.dtype), axes=(1,))

    def _padding_mask(self, ctx, query, value, key, inputs, causal):
        """Where each query step may attend ([N, 1, Tq, Tk] as 0/1 numbers, None where nothing
        is masked), from the inputs' step masks (Embedding(mask_zero=true)), as Keras 3's
        MultiHeadAttention: a masked query step attends uniformly, or nowhere (masked_softmax's
        zero_masked), a masked value (or key) step is attended by no query step."""
        masks = [(ctx.mask_of(query), -1), (ctx.mask_of(value), 1)]
        if len(inputs) == 3:
            masks.append((ctx.mask_of(key), 1))
        allowed = None
        for mask, axis in masks:
            if mask is None:
                continue
            m = ctx.op("Unsqueeze", ctx.op("Cast", mask, to=query.dtype), axes=(axis,))  # [N, Tq, 1] or [N, 1, Tk]
            allowed = m if allowed is None else ctx.op("Mul", allowed, m)
        if causal:
            causal = causal_mask(ctx, query, value)
            allowed = causal if allowed is None else ctx.op("Mul", allowed, causal)
        return None if allowed is None else ctx.op("Unsqueeze", allowed, axes=(1,))


class Attention(Layer):
    """Dot-product (Luong) attention, called on ``(query, value)`` or ``(query, value, key)`` (key
    defaults to value), query ``[Tq, dim]``, key ``[Tv, dim]``, value ``[Tv, value_features]``:
    ``softmax(scores(query, key)) value``, ``[Tq, value_features]``.

    Args:
        use_scale: false; true multiplies the scores by a trainable scalar ``scale`` (init 1).
        score_mode: dot (``Q K^T``) or concat (``concat_score_weight * sum(tanh(Q_i + K_j))``,
            with use_scale ``tanh(scale * (Q_i + K_j))``).
        dropout: dropout rate on the attention weights (training only), 0.0.
        seed: none (the model's seed decides).

    Weights (Keras 3 order): scale [] (with use_scale), concat_score_weight [] (score_mode=concat,
    init 1).

    Call arguments (Keras's): ``return_attention_scores=true`` also gives the attention weights
    [Tq, Tv] (after the dropout, as Keras: ``y, scores = Attention()(q, v,
    return_attention_scores=true)``); ``use_causal_mask=true`` lets query step i attend to value
    steps 0..i only. Masks come from the inputs, as Keras's call: the query's zeroes the output's
    masked steps (and is the output's mask), the value's hides its masked steps (the key's mask is
    not read, as in Keras).
    """
    n_inputs = None  # two or three
    call_flags = ("return_attention_scores", "use_causal_mask")

    def __init__(self, use_scale: BoolArg() = False, score_mode: Choice("dot", "concat") = "dot",
                 dropout: FloatArg(0.0, 1.0) = 0.0, seed: Optional(IntArg(0)) = None):
        self.use_scale, self.score_mode, self.dropout, self.seed = use_scale, score_mode, dropout, seed

    def _inputs(self, inputs):
        query, value, key = _query_value_key(self.kind(), inputs)
        if query.shape[-1] != key.shape[-1]:
            raise ShapeError(f"{self.kind()} needs the query and the key to have one number of features, got "
                             f"{query.shape[-1]} and {key.shape[-1]}")
        return query, value, key

    def build(self, ctx, *inputs):
        query = self._inputs(inputs)[0]
        self.scale = ctx.add_weight(self, "scale", (), query.dtype, ("ones", ())) if self.use_scale else None
        self.concat_score_weight = ctx.add_weight(self, "concat_score_weight", (), query.dtype, ("ones", ())) \
            if self.score_mode == "concat" else None

    def _scores(self, ctx, query, key):
        """[N, Tq, Tv]."""
        if self.score_mode == "dot":
            scores = ctx.op("MatMul", query, ctx.op("Transpose", key, perm=(0, 2, 1)))
            return scores if self.scale is None else ctx.op("Mul", scores, self.scale)
        pairs = ctx.op("Add", ctx.op("Unsqueeze", query, axes=(2,)), ctx.op("Unsqueeze", key, axes=(1,)))
        if self.scale is not None:
            pairs = ctx.op("Mul", self.scale, pairs)
        summed = ctx.op("ReduceSum", ctx.op("Tanh", pairs), axes=(-1,), keepdims=0)
        return ctx.op("Mul", self.concat_score_weight, summed)

    def call(self, ctx, *inputs, return_attention_scores=False, use_causal_mask=False):
        query, value, key = self._inputs(inputs)
        scores = self._scores(ctx, query, key)
        allowed = ctx.mask_of(value)  # (Keras reads the query's and the value's masks, not the key's)
        if allowed is not None:
            allowed = ctx.op("Unsqueeze", ctx.op("Cast", allowed, to=query.dtype), axes=(1,))  # [N, 1, Tv]
        if use_causal_mask:
            causal = causal_mask(ctx, query, value)
            allowed = causal if allowed is None else ctx.op("Mul", allowed, causal)
        weights = masked_softmax(ctx, scores, allowed, subtract=True)
        if self.dropout > 0:  # (Keras returns the weights after the dropout)
            weights = ctx.op("Dropout", weights, rate=self.dropout)
        y = ctx.op("MatMul", weights, value)
        query_mask = ctx.mask_of(query)
        if query_mask is not None:  # (Keras: where(query_mask, y, 0); the output keeps the query's mask)
            y = ctx.op("Mul", y, ctx.op("Unsqueeze", ctx.op("Cast", query_mask, to=y.dtype), axes=(2,)))
            ctx.set_mask(y, query_mask)
        return (y, weights) if return_attention_scores else y


class AdditiveAttention(Attention):
    """Additive (Bahdanau) attention, called as Attention: the scores are
    ``sum(scale * tanh(Q_i + K_j))`` over the features.

    Args:
        use_scale: true; the trainable ``scale`` [dim] (the query's features, glorot_uniform as
            Keras); false sums ``tanh(Q_i + K_j)`` as it is.
        dropout: dropout rate on the attention weights (training only), 0.0.
        seed: none (the model's seed decides).

    Weights: scale [dim] (with use_scale). Call arguments and masks as Attention's.
    """

    def __init__(self, use_scale: BoolArg() = True, dropout: FloatArg(0.0, 1.0) = 0.0,
                 seed: Optional(IntArg(0)) = None):
        super().__init__(use_scale, "dot", dropout, seed)

    def build(self, ctx, *inputs):
        query = self._inputs(inputs)[0]
        self.scale = ctx.add_weight(self, "scale", (query.shape[-1],), query.dtype, ("glorot_uniform", ())) \
            if self.use_scale else None

    def _scores(self, ctx, query, key):
        pairs = ctx.op("Add", ctx.op("Unsqueeze", query, axes=(2,)), ctx.op("Unsqueeze", key, axes=(1,)))
        pairs = ctx.op("Tanh", pairs)  # [N, Tq, Tv, dim]
        if self.scale is not None:
            pairs = ctx.op("Mul", self.scale, pairs)
        return ctx.op("ReduceSum", pairs, axes=(-1,), keepdims=0)
