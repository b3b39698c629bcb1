"""Recurrent ops, batch-major ([N, T, features]) with Keras's weight layouts (the LSTM's and
GRU's sequences for their own gradient ops alone are time-major, [T, N, features]: see
LSTM.lower_scan).

LSTM gates are in Keras's order i, f, c, o: kernel [I, 4u], recurrent kernel [u, 4u],
bias [4u]. Outputs: the hidden sequence [N, T, u], the last h and c [N, u], and the
cell sequence [N, T, u].

Inference lowers to ONNX's fused LSTM op (gates reordered to its i, o, f, c; float32, the only
type onnxruntime's LSTM computes). In training the forward pass is an ONNX ``Scan`` over time
that also emits each step's gates (the op's training form, attr ``saved``), and the backward
pass (``LSTMGrad``) a reverse ``Scan`` that carries (dh, dc) and emits each step's gate
gradients; the weight and input gradients are then a few large matrix products over all steps
at once. The graph's size does not depend on the sequence length.

Recurrent dropout (training only) is an input ``drop`` [N, G, u] of keep-masks, one per
gate, the same at every step (Keras 3: each gate's block of the recurrent kernel sees the
previous h times its own mask); the recurrent product then goes through the per-gate
kernels [G, u, u] as a batched MatMul of the masked states, gate-major [G, N, u] (onnxruntime's
Einsum took some 0.6 ms a step for a GRU(64) at 64 rows: see _step_product).

Initial states (Keras's ``initial_state``; attr ``initial``, their count) are inputs [N, u]
after the bias; the recurrence starts from them instead of zeros, and the gradient op gives
their gradients too: the state gradients its reverse Scan carries back past the first step.
"""
from __future__ import annotations

from onnx import TensorProto, helper, numpy_helper

from ..errors import ShapeError, format_shape
from ..ir import TensorType
from .base import Op, noise_input, register, replace_node

_ELEM = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


def _check(x, k, r, b, gates, units, drop=None, initial=()):
    for s in initial:
        # (a stateful layer's states have the model's fixed batch size where x's batch is symbolic)
        batch_ok = s.shape[:1] == x.shape[:1] or (isinstance(s.shape[0], int) and not isinstance(x.shape[0], int))
        if s.dtype != x.dtype or s.rank != 2 or not batch_ok or s.shape[1] != units:
            raise ShapeError(f"a recurrent layer's initial states must be {x.dtype}[{x.shape[0]}, {units}], "
                             f"got {s.dtype}{format_shape(s.shape)}")
    if drop is not None and tuple(drop.shape[1:]) != (gates, units):
        raise ShapeError(f"recurrent dropout masks must be [batch, {gates}, {units}], got {format_shape(drop.shape)}")
    if x.rank != 3:
        raise ShapeError(f"a recurrent layer expects [timesteps, features], got {format_shape(x.shape[1:])}")
    if x.dtype not in _ELEM:  # (the Scan bodies are built for these)
        raise ShapeError(f"a recurrent layer computes in float32 or float64, got {x.dtype}",
                         hint="cast the input: cast(x, float32)")
    if k.shape != (x.shape[2], gates * units) or r.shape != (units, gates * units):
        raise ShapeError("recurrent weights do not match the input and units")
    if b is not None and b.shape[-1] != gates * units:
        raise ShapeError("recurrent bias does not match the units")


class _Body:
    """Builds an ONNX subgraph (a Scan body) node by node. ``masked``: the steps read a step mask
    ``m_t`` (1 where the step counts, 0 where the state carries over); unmasked bodies compute
    none of the blending, which is most of a small step's ops."""

    def __init__(self, dtype: str, masked: bool = False):
        self.dtype, self.masked = dtype, masked
        self.nodes, self.count = [], 0
        self._skip = None

    def __call__(self, op, *inputs, **attrs):
        self.count += 1
        out = f"b{self.count}_{op.lower()}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value, name):
        self.nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, _ELEM[self.dtype], [], [float(value)])))
        return name

    def ints(self, values, name):
        self.nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, TensorProto.INT64, [len(values)], list(values))))
        return name

    def _skipped(self):
        """1 - m_t (1 where the step is masked), computed once per step."""
        if self._skip is None:
            self._skip = self("Sub", self.const(1.0, "one_for_mask"), "m_t")
        return self._skip

    def blend(self, new, old):
        """The state after the step: ``new``, or where the step is masked, ``old``."""
        if not self.masked:
            return new
        return self("Add", self("Mul", "m_t", new), self("Mul", self._skipped(), old))

    def counted(self, d):
        """A gradient reaching the step's own new state: ``d`` times the step mask."""
        return self("Mul", "m_t", d) if self.masked else d

    def passed(self, d_prev, d):
        """The gradient reaching the previous state, ``d_prev``, plus where the step is masked
        the gradient ``d`` of the state it carried over."""
        if not self.masked:
            return d_prev
        return self("Add", d_prev, self("Mul", self._skipped(), d))

    def graph(self, name, inputs, outputs):
        """The body, its ``outputs`` given by Identity nodes that name the step's values. Each value
        the step computes takes its first output's name instead, so that the Scan's output or next
        state is written where it is computed: an Identity in a Scan body copies, 2-6 us a step for
        [64, 256] (a small LSTM's step has ten)."""
        if self.masked:
            inputs = inputs + ["m_t"]
        nodes = list(self.nodes)
        made = {o for n in nodes if n.op_type != "Identity" for o in n.output}
        for out in [n for n in nodes if n.op_type == "Identity" and n.output[0] in outputs]:
            value = out.input[0]
            if value in made and value not in outputs:
                nodes.remove(out)
                for n in nodes:
                    n.input[:] = [out.output[0] if i == value else i for i in n.input]
                    n.output[:] = [out.output[0] if o == value else o for o in n.output]
                made.add(out.output[0])
        info = [helper.make_tensor_value_info(n, _ELEM[self.dtype], None) for n in inputs]
        outs = [helper.make_tensor_value_info(n, _ELEM[self.dtype], None) for n in outputs]
        return helper.make_graph(nodes, name, info, outs)


def _recurrence_macs(ins):
    """Per sample: each step's input and recurrent products, steps x (inputs + units) x gates' units."""
    x, kernel, recurrent = ins[:3]
    return (x.shape[1], kernel.shape[0] + recurrent.shape[0], kernel.shape[1])


def _time_steps(ins) -> int:
    """A recurrence's steps, T of its input [N, T, I] (0 where only the run knows it)."""
    steps = ins[0].shape[1]
    return steps if isinstance(steps, int) else 0


def _elementwise(ctx, dtype):
    """(1, a * b) as ONNX ops, for the gradient factors computed outside a Scan."""
    def mul(a, b):
        return ctx.emit("Mul", [a, b])
    return ctx.const(1.0, dtype), mul


def _onnx_recurrence(ctx, onnx_op, x, kernel, recurrent, biases, outputs, units, order=None, initial=None,
                     lengths=None, time_major=False, **attrs):
    """ONNX's fused recurrence (RNN, GRU, LSTM), batch-major in and out: ``biases`` the input and
    recurrent biases [G*u] each, or None; ``outputs`` the sequence (or None), then the last states
    (returns the sequence time-major, [T, N, u]);
    ``order``: ONNX's gates as positions among Keras's, where they differ (the LSTM's);
    ``initial``: the initial states [N, u] (h, then c), or None (zeros); ``lengths``: each row's
    steps, int32 [N] (ONNX's sequence_lens), or None (all); ``time_major``: x is [T, N, I]."""
    def gates(w, axis):
        if order is None:
            return w
        parts = ctx.emit("Split", [w, ctx.const([units] * len(order), "int64")],
                         [ctx.fresh("gate") for _ in order], axis=axis)
        return ctx.emit("Concat", [parts[k] for k in order], axis=axis)

    def weight(w):  # [in, G*u] -> [1, G*u, in]
        return ctx.emit("Unsqueeze", [ctx.emit("Transpose", [gates(w, 1)], perm=[1, 0]), ctx.const([0], "int64")])
    ins = [x if time_major else ctx.emit("Transpose", [x], perm=[1, 0, 2]), weight(kernel), weight(recurrent)]
    if biases is not None:
        b = ctx.emit("Concat", [gates(v, 0) for v in biases], axis=0)
        ins.append(ctx.emit("Unsqueeze", [b, ctx.const([0], "int64")]))
    if lengths or initial:  # (after the optional B; [N, u] -> [1, N, u], one direction)
        ins += [""] * (4 - len(ins)) + [lengths or ""]
    if initial:
        ins += [ctx.emit("Unsqueeze", [s, ctx.const([0], "int64")]) for s in initial]
    y, *states = ctx.emit(onnx_op, ins, [ctx.fresh("rnn_y")] + [ctx.fresh("rnn_state") for _ in outputs[1:]],
                          hidden_size=units, **attrs)
    y = ctx.emit("Squeeze", [y, ctx.const([1], "int64")])  # [T, 1, N, u] -> [T, N, u]
    _batch_major(ctx, y, outputs[0])
    for state, output in zip(states, outputs[1:]):
        ctx.emit("Squeeze", [state, ctx.const([0], "int64")], [output])
    return y


def _masked_by_lengths(ctx, x, mask, outputs, initial, recurrence):
    """A masked recurrence (masked steps keep the previous states and output, as Keras's) as an
    unmasked one over each row's counted steps moved first, in order, the rest cut off by ONNX's
    sequence_lens: the same states, as a masked step changes nothing. ``recurrence(x_steps,
    lengths, states)`` emits it over ``x_steps`` [T, N, I] (time-major) and ``lengths`` int32 [N],
    its last states into ``states`` (names), and returns its sequence [T, N, u] (zeros past each
    row's length); ``outputs``: the sequence [N, T, u] (None where unread), then the last states.
    With onnxruntime's fused LSTM, against the Scan that blends each step's states by the mask:
    survey.py's masked_lstm (100 steps, the second half's steps masked at random) predicts 1,024
    rows in 43-56 ms against 85-92, one row in 0.21-0.28 ms against 3.1-3.2."""
    dtype, int64 = ctx.dtype(x), ctx.onnx_dtype("int64")
    shape = ctx.emit("Shape", [x])
    t = ctx.emit("Slice", [shape, ctx.const([1], "int64"), ctx.const([2], "int64")])  # [1], TopK's k
    n_rows, n_steps = (ctx.emit("Gather", [shape, ctx.const(i, "int64")]) for i in (0, 1))  # scalars
    zero, one = ctx.const(0, "int64"), ctx.const(1, "int64")
    # Each row's steps ordered by (counted first, then time): the key t - T where counted, t where not.
    steps = ctx.emit("Cast", [ctx.emit("Range", [zero, n_steps, one])], to=ctx.onnx_dtype(dtype))
    key = ctx.emit("Sub", [steps, ctx.emit("Mul", [mask, ctx.emit("Cast", [t], to=ctx.onnx_dtype(dtype))])])
    _, order = ctx.emit("TopK", [key, t], [ctx.fresh("order_key"), ctx.fresh("order")], axis=1, largest=0, sorted=1)
    # x's rows as [N*T, I], gathered time-major: step s of row j is row order[j, s] + j*T
    row = ctx.emit("Range", [zero, n_rows, one])  # [N]
    picked = ctx.emit("Add", [ctx.emit("Transpose", [order], perm=[1, 0]), ctx.emit("Mul", [row, n_steps])])  # [T, N]
    x_steps = ctx.emit("Gather", [ctx.emit("Flatten", [x], axis=2), picked], axis=0)  # [T, N, I]
    counted = ctx.emit("ReduceSum", [mask, ctx.const([1], "int64")], keepdims=0)
    lengths = ctx.emit("Cast", [counted], to=ctx.onnx_dtype("int32"))
    states = [ctx.fresh("last_state") for _ in outputs[1:]] if initial else outputs[1:]
    y = recurrence(x_steps, lengths, states)
    if initial:  # (onnxruntime gives zeros for a row of no steps, Keras the initial states)
        none = ctx.emit("Unsqueeze", [ctx.emit("Equal", [counted, ctx.const(0.0, dtype)]), ctx.const([1], "int64")])
        for state, start, output in zip(states, initial, outputs[1:]):
            ctx.emit("Where", [none, start, state], [output])
    if outputs[0]:  # step s of a row repeats its last counted step's output: y[c_s - 1], c the running count
        count = ctx.emit("Cast", [ctx.emit("CumSum", [mask, one])], to=int64)  # [N, T]
        before = ctx.emit("Equal", [count, zero])
        last = ctx.emit("Max", [ctx.emit("Sub", [count, one]), zero])
        repeated = _at_step_of_each_row(ctx, y, last, n_rows, ctx.emit("Unsqueeze", [row, ctx.const([1], "int64")]))
        start = ctx.emit("Unsqueeze", [initial[0], ctx.const([1], "int64")]) if initial else ctx.const(0.0, dtype)
        ctx.emit("Where", [ctx.emit("Unsqueeze", [before, ctx.const([2], "int64")]), start, repeated], [outputs[0]])


def _scan_over_counted_steps(ctx, body, h0, xw, lengths, last):
    """An unmasked one-state Scan (``body``: h_prev, xw_t -> h_next, h_out) over ``xw`` [T, N, G*u],
    each row's counted steps first (_masked_by_lengths), into its sequence [T, N, u] (returned), and
    ``last``, h after each row's ``lengths`` steps (int32 [N]; h0 [N, u] where none). Against the
    Scan that blends each step's state by the mask (with the steps' Gemm, stop 38, alternating in one
    process): masked_gru predicts 1,024 rows 1.05x as fast; GRU(32) and SimpleRNN(32) over 64 rows
    1.2-1.6x (alternating processes)."""
    y = ctx.fresh("counted_h")
    _scan_forward(ctx, body, [h0, xw], [ctx.fresh("h_after_all"), y], 1, time_major=1, input_time_major=True)
    zero, one = ctx.const(0, "int64"), ctx.const(1, "int64")
    n_rows = ctx.emit("Gather", [ctx.emit("Shape", [h0]), zero])
    steps = ctx.emit("Cast", [lengths], to=ctx.onnx_dtype("int64"))
    before = ctx.emit("Max", [ctx.emit("Sub", [steps, one]), zero])
    at_length = _at_step_of_each_row(ctx, y, before, n_rows, ctx.emit("Range", [zero, n_rows, one]))  # [N, u]
    none = ctx.emit("Unsqueeze", [ctx.emit("Equal", [steps, zero]), ctx.const([1], "int64")])
    ctx.emit("Where", [none, h0, at_length], [last])
    return y


def _at_step_of_each_row(ctx, y, steps, n_rows, rows):
    """The time-major ``y`` [T, N, u] at step ``steps`` of row ``rows`` (int64 of one shape, or
    broadcasting: [N] and [N] give [N, u], [N, T] and [N, 1] give [N, T, u]), one Gather of y's
    rows as [T*N, u]."""
    index = ctx.emit("Add", [ctx.emit("Mul", [steps, n_rows]), rows])
    return ctx.emit("Gather", [ctx.emit("Flatten", [y], axis=2), index], axis=0)


def _batch_major(ctx, steps, sequence):
    """The batch-major sequence ``sequence`` [N, T, u] of the time-major ``steps`` [T, N, u], where
    it is wanted: None where nothing but the gradient op reads it (which reads ``steps``; a
    training form's outputs[0] is None then: LSTM.lower, _fused_or_scan)."""
    if sequence:
        ctx.emit("Transpose", [steps], [sequence], perm=[1, 0, 2])


def _gates(ctx, z, units, count):
    """Split [.., count*u] into count tensors along the last axis (ONNX level)."""
    return ctx.emit("Split", [z, ctx.const([units] * count, "int64")], [ctx.fresh("gate") for _ in range(count)],
                    axis=-1)


@register
class LSTM(Op):
    """inputs: x [N, T, I], kernel [I, 4u], recurrent_kernel [u, 4u], bias [4u] (optional),
    mask [N, T] (with attr masked: 0 at steps that keep the previous state).
    outputs: sequence [N, T, u], last h [N, u], last c [N, u], cell sequence [N, T, u], and in
    training (attr ``saved``) each step's gates i, f, g, o, act(c) and h for the gradient op
    (recomputing them took a fifth of a small LSTM's step: two products over all steps and five
    passes over [N, T, 4u]); in training the cell sequence and these are time-major, [T, N, u].
    attrs: units, activation/recurrent_activation (ONNX names: Tanh, Sigmoid or Relu), masked,
    saved."""
    name = "LSTM"

    def infer(self, ins, attrs):
        x, k, r, b, drop, mask = _split_inputs(ins, attrs)
        self.check_float([x, k, r])
        u = attrs["units"]
        _check(x, k, r, b, 4, u, drop, _initial_states(ins, attrs) or ())
        n, t = x.shape[0], x.shape[1]
        seq, last = TensorType(x.dtype, (n, t, u)), TensorType(x.dtype, (n, u))
        if not attrs.get("saved"):
            return [seq, last, last, seq]
        steps = TensorType(x.dtype, (t, n, u))  # (time-major: see lower_scan)
        return [seq, last, last, steps] + [steps] * 6

    def macs(self, ins, outs, attrs):
        return _recurrence_macs(ins)

    def sequential_steps(self, ins, attrs):
        return _time_steps(ins)

    def lower(self, ctx, inputs, outputs, attrs):
        # (onnxruntime's LSTM computes float32 only: "LSTM operator does not support double yet")
        # (the training form's gates: emitted where the gradient reads them, not for a frozen layer)
        outputs = outputs if any(ctx.used(o) for o in outputs[4:]) else outputs[:4]
        if len(outputs) > 4 and not ctx.used(outputs[0]):
            outputs = [None] + outputs[1:]  # (the gradient reads h time-major: no batch-major sequence)
        if len(outputs) > 4 or ctx.used(outputs[3]) or attrs.get("rdrop") or ctx.dtype(inputs[0]) != "float32":
            return self.lower_scan(ctx, inputs, outputs, attrs)
        x, kernel, recurrent, bias, _, mask = _split_inputs(inputs, attrs)
        u = attrs["units"]
        biases = None if bias is None else (bias, ctx.const([0.0] * (4 * u), ctx.dtype(x)))
        activation = attrs.get("activation", "Tanh")
        initial = _initial_states(inputs, attrs)
        # (Keras's gates i, f, c, o; ONNX's i, o, f, c)
        fused = dict(order=(0, 3, 1, 2), initial=initial,
                     activations=[attrs.get("recurrent_activation", "Sigmoid"), activation, activation])
        if mask is None:
            _onnx_recurrence(ctx, "LSTM", x, kernel, recurrent, biases, outputs[:3], u, **fused)
        else:
            def counted_steps(x_steps, lengths, states):
                return _onnx_recurrence(ctx, "LSTM", x_steps, kernel, recurrent, biases, [None] + states, u,
                                        lengths=lengths, time_major=True, **fused)
            sequence = outputs[0] if ctx.used(outputs[0]) else None
            _masked_by_lengths(ctx, x, mask, [sequence] + outputs[1:3], initial, counted_steps)

    def lower_scan(self, ctx, inputs, outputs, attrs):
        """Forward pass as a Scan over time, also giving the cell sequence. In the training form
        (``saved``) the cell sequence, the gates and h, read by the gradient op, are time-major,
        [T, N, u]: a Scan writes (and the gradient's reverse Scan reads) those in place, where a
        batch-major sequence costs a transpose of it each way (the sentiment LSTM's part step:
        12 of the 21 [N, T, u] transposes its two Scans made); the batch-major sequence is then
        h's Transpose, made only where something else reads it (_batch_major)."""
        x, kernel, recurrent, bias, drop, mask = _split_inputs(inputs, attrs)
        u, dtype = attrs["units"], ctx.dtype(x)
        # The input projection of every step at once, [N, T, 4u]; or [T, N, 4u] from the input
        # transposed, where it has fewer features than 4u: the narrower of the two is transposed
        # (the Scan would transpose the projection itself to read it step by step).
        time_major = ctx.shape(x)[2] < 4 * u
        xw = ctx.emit("MatMul", [ctx.emit("Transpose", [x], perm=[1, 0, 2]) if time_major else x, kernel])
        if bias is not None:
            xw = ctx.emit("Add", [xw, bias])
        h0, c0 = _initial_states(inputs, attrs) or [_zeros_like_state(ctx, x, u)] * 2
        gate_kernels = _gate_kernels(ctx, recurrent, u) if drop is not None else None
        body = _Body(dtype, masked=mask is not None)
        # (the kernels and dropout masks are read from the outer graph)
        z = _step_product(body, "h_prev", recurrent, _gate_major(ctx, drop), gate_kernels, plus="xw_t")
        i, f, g, o = (f"g{k}" for k in range(4))
        body.nodes.append(helper.make_node("Split", [z, body.ints([u] * 4, "split_sizes")], [i, f, g, o], axis=-1))
        act, gate_act = _activations(attrs)
        i, f, o = body(gate_act, i), body(gate_act, f), body(gate_act, o)
        g = body(act, g)
        c = body("Add", body("Mul", f, "c_prev"), body("Mul", i, g))
        tanh_c = body(act, c)  # (named for the default activation)
        h = body("Mul", o, tanh_c)
        c, h = body.blend(c, "c_prev"), body.blend(h, "h_prev")
        saved = [(i, "i_out"), (f, "f_out"), (g, "g_out"), (o, "o_out"), (tanh_c, "tanh_c_out"),
                 (h, "h_out")][:len(outputs) - 4]
        emitted = [(c, "c_out")] + saved if saved else [(h, "h_out"), (c, "c_out")]
        body.nodes += [helper.make_node("Identity", [v], [name]) for v, name in
                       [(h, "h_next"), (c, "c_next")] + emitted]
        graph = body.graph("lstm_step", ["h_prev", "c_prev", "xw_t"], ["h_next", "c_next"] + [n for _, n in emitted])
        if not saved:
            _scan_forward(ctx, graph, [h0, c0, xw] + _step_mask(ctx, mask), outputs[1:3] + [outputs[0], outputs[3]],
                          2, input_time_major=time_major)
            return
        _scan_forward(ctx, graph, [h0, c0, xw] + _step_mask(ctx, mask), outputs[1:], 2,
                      time_major=len(outputs) - 3, input_time_major=time_major)
        _batch_major(ctx, outputs[-1], outputs[0])

    def training_form(self, ctx, node):
        return _recurrent_dropout_form(ctx, node, saved=True)

    def grad(self, ctx, node, dys):
        seq, _, _, cells, *saved = node.outputs
        x, k, r, b, drop, mask = _split_inputs(node.inputs, node.attrs)
        if saved:  # (the time-major h the training form keeps, as the sequence)
            seq, saved = saved[-1], saved[:-1]
        ins = [x, k, r, seq, cells] + saved + _output_grads(ctx, node.outputs[:3], dys[:3])
        return _grad_op(ctx, "LSTMGrad", node, ins, b, drop, mask, dys[0] is not None,
                        _initial_states(node.inputs, node.attrs), **({"saved": True} if saved else {}),
                        **{a: node.attrs[a] for a in ("activation", "recurrent_activation") if a in node.attrs})


def _activations(attrs):
    """A gated recurrence's (activation, recurrent_activation), ONNX's names (Keras's defaults tanh
    and sigmoid)."""
    return attrs.get("activation", "Tanh"), attrs.get("recurrent_activation", "Sigmoid")


def _derivative(ctx, activation, a, dtype):
    """act'(z) from a = act(z), for every element at once: 1 - a^2 (Tanh), a (1 - a) (Sigmoid), or 1
    where a = relu(z) > 0 (Relu; 0 at 0, as Keras's)."""
    one = ctx.const(1.0, dtype)
    if activation == "Tanh":
        return ctx.emit("Sub", [one, ctx.emit("Mul", [a, a])])
    if activation == "Sigmoid":
        return ctx.emit("Mul", [a, ctx.emit("Sub", [one, a])])
    return ctx.emit("Cast", [ctx.emit("Greater", [a, ctx.const(0.0, dtype)])], to=_ELEM[dtype])


def _recurrent_dropout_form(ctx, node, **more):
    """Training form of recurrent dropout: one keep-mask per sequence and gate over the previous
    state's units, the same at every step, drawn from a noise input [N, gates, units] and given
    to the op as its ``drop`` input. ``more``: further attributes of the training form."""
    rate, units = node.attrs.get("recurrent_dropout"), node.attrs["units"]
    if not rate and not more:
        return None
    inputs, noise = list(node.inputs), []
    attrs = dict({k: v for k, v in node.attrs.items() if k != "recurrent_dropout"}, **more)
    if rate:
        x, recurrent = node.inputs[0], node.inputs[2]
        t = ctx.type(x)
        name, u = noise_input(ctx, node, t.with_shape((t.shape[0], ctx.type(recurrent).shape[1] // units, units)))
        keep = ctx.op("Mul", ctx.op("Cast", ctx.op("GreaterOrEqual", u, rate), to=t.dtype), 1.0 / (1.0 - rate))
        inputs.insert(len(inputs) - 1 if node.attrs.get("masked") else len(inputs), keep)  # before the step mask
        attrs["rdrop"], noise = True, [(name, x)]
    replace_node(ctx, node, ctx.op(node.op, *inputs, **attrs))
    return noise, []


def _split_inputs(inputs, attrs):
    """(x, kernel, recurrent kernel, bias, recurrent-dropout masks, step mask) of a recurrent
    op's inputs, in that order, absent ones None (the initial states, after the bias, are
    ``_initial_states``'s). attrs: ``rdrop``, ``masked`` and ``initial`` say which are there."""
    rest = list(inputs)
    mask = rest.pop() if attrs.get("masked") else None
    drop = rest.pop() if attrs.get("rdrop") else None
    del rest[len(rest) - attrs.get("initial", 0):]
    return rest[0], rest[1], rest[2], (rest[3] if len(rest) == 4 else None), drop, mask


def _initial_states(inputs, attrs):
    """A recurrent op's initial-state inputs (h, then c for an LSTM), or None where it starts
    from zeros: the ``initial`` ones after the bias, before the dropout and step masks."""
    count = attrs.get("initial", 0)
    if not count:
        return None
    end = len(inputs) - bool(attrs.get("masked")) - bool(attrs.get("rdrop"))
    return list(inputs[end - count:end])


def _gate_kernels(ctx, recurrent, units, transposed=False):
    """The recurrent kernel [u, G*u] as one matrix per gate, [G, u, u] (each transposed if asked)."""
    gates = ctx.shape(recurrent)[1] // units
    r3 = ctx.emit("Reshape", [recurrent, ctx.const([units, gates, units], "int64")])
    return ctx.emit("Transpose", [r3], perm=[1, 2, 0] if transposed else [1, 0, 2])


def _gate_major(ctx, drop):
    """Recurrent dropout's masks [N, G, u] as [G, N, u], the form the steps' products read (None
    without dropout)."""
    return None if drop is None else ctx.emit("Transpose", [drop], perm=[1, 0, 2])


def _step_product(body, h, recurrent, drop, gate_kernels, plus=None):
    """h_{t-1} R inside a step, plus ``plus`` where given ([N, G*u] or [G*u]: one Gemm, an op less
    a step); with recurrent dropout (``drop`` gate-major, [G, N, u]:
    _gate_major) each gate's block sees h times its own mask: one batched MatMul of the masked
    states [G, N, u] by the gates' kernels [G, u, u]. (onnxruntime's Einsum nu,ngu,guv->ngv took
    some 0.6 ms a step for a GRU(64) at 64 rows.)"""
    if drop is None:
        return body("MatMul", h, recurrent) if plus is None else body("Gemm", h, recurrent, plus)
    masked = body("Mul", body("Unsqueeze", h, body.ints([0], f"gate_axis_{body.count}")), drop)
    per_gate = body("Transpose", body("MatMul", masked, gate_kernels), perm=[1, 0, 2])  # [N, G, u]
    product = body("Reshape", per_gate, body.ints([0, -1], f"flat_{body.count}"))
    return product if plus is None else body("Add", product, plus)


def _step_product_grad(body, dz, recurrent_t, drop, gate_kernels_t, units):
    """The gradient reaching h_{t-1} through the recurrent product: dz R^T (with recurrent
    dropout, ``drop`` gate-major [G, N, u], each gate's dz_g R_g^T times its mask, summed)."""
    if drop is None:
        return body("MatMul", dz, recurrent_t)
    dz3 = body("Transpose", body("Reshape", dz, body.ints([0, -1, units], f"gates_{body.count}")), perm=[1, 0, 2])
    masked = body("Mul", body("MatMul", dz3, gate_kernels_t), drop)  # [G, N, u]
    return body("ReduceSum", masked, body.ints([0], f"gate_sum_{body.count}"), keepdims=0)


def _recurrent_kernel_grad(ctx, h_prev, dz_h, drop, recurrent, units, output, width=None):
    """dR = sum over steps of h_{t-1}^T dz_t (each gate's block with its own mask, one batched
    product over the gates); ``width``: the gates' units G*u where ``recurrent`` is not a graph
    value (whose shape says it). h_prev and dz_h are [N, T, ...] or both [T, N, ...]; with
    recurrent dropout ``drop`` [N, G, u], [T, N, ...] (the training form's: _grad_inputs)."""
    width = width or ctx.shape(recurrent)[1]
    if drop is None:
        hp = ctx.emit("Reshape", [h_prev, ctx.const([-1, units], "int64")])
        zh = ctx.emit("Reshape", [dz_h, ctx.const([-1, width], "int64")])
        return _summed_product(ctx, hp, zh, (units, width), output)
    dz4 = ctx.emit("Reshape", [dz_h, ctx.const([0, 0, width // units, units], "int64")])
    dz_gates = ctx.emit("Reshape", [ctx.emit("Transpose", [dz4], perm=[2, 0, 1, 3]),
                                    ctx.const([0, -1, units], "int64")])
    # h_prev [T, N, u] times each gate's mask, gate-major: [G, T*N, u]
    per_step = ctx.emit("Mul", [ctx.emit("Unsqueeze", [h_prev, ctx.const([2], "int64")]),
                                ctx.emit("Unsqueeze", [drop, ctx.const([0], "int64")])])
    masked = ctx.emit("Reshape", [ctx.emit("Transpose", [per_step], perm=[2, 0, 1, 3]),
                                  ctx.const([0, -1, units], "int64")])
    per_gate = ctx.emit("MatMul", [ctx.emit("Transpose", [masked], perm=[0, 2, 1]), dz_gates])  # [G, u, u]
    by_row = ctx.emit("Transpose", [per_gate], perm=[1, 0, 2])
    return ctx.emit("Reshape", [by_row, ctx.const([units, width], "int64")], [output])


def _summed_product(ctx, a, b, widths, output=None):
    """a^T b for ``a`` [K, m] and ``b`` [K, n] (a weight's gradient summed over every step and
    sample), ``widths`` (m, n): as (b^T a)^T where a is the narrower, so that the product's second
    operand, which onnxruntime packs on every run, is the narrower one (the sentiment LSTM's
    kernel gradient, [6400, 128] by [6400, 256], 2.51 against 2.83 ms; its recurrent kernel's
    1.51 against 1.67)."""
    if widths[0] >= widths[1]:
        return ctx.emit("MatMul", [ctx.emit("Transpose", [a], perm=[1, 0]), b], [output] if output else None)
    swapped = ctx.emit("MatMul", [ctx.emit("Transpose", [b], perm=[1, 0]), a])
    return ctx.emit("Transpose", [swapped], [output] if output else None, perm=[1, 0])


def _grad_op(ctx, op, node, ins, bias, drop, mask, seq_grad, initial=None, **more):
    """Emit a recurrent op's gradient op; returns the gradients of the op's inputs (None for the
    dropout and step masks). ``more``: further attributes of the gradient op."""
    initial = initial or []
    extra = ([bias] if bias is not None else []) + initial + [v for v in (drop, mask) if v is not None]
    attrs = dict(more, **({"initial": len(initial)} if initial else {}))
    dx, dk, dr, db, *d_initial = ctx.op(op, *ins, *extra, units=node.attrs["units"], has_bias=bias is not None,
                                        rdrop=drop is not None, masked=mask is not None, seq_grad=seq_grad, **attrs)
    return [dx, dk, dr] + [db] * (bias is not None) + d_initial + [None for v in (drop, mask) if v is not None]


def _step_mask(ctx, mask):
    """The Scan input of a masked recurrence: the mask [N, T] as [N, T, 1] (1 where a step
    counts, 0 where the state carries over); none for an unmasked one."""
    return [] if mask is None else [ctx.emit("Unsqueeze", [mask, ctx.const([2], "int64")])]


def _output_grads(ctx, outputs, dys):
    """The gradients of a recurrent op's last states, zeros for those the loss does not use, after
    the sequence's where the loss uses it (the ``seq_grad`` attribute of the gradient op says so)."""
    zero = ctx.const(0.0, ctx.type(outputs[0]).dtype)
    states = [d if d is not None else ctx.op("ExpandLike", zero, o) for o, d in zip(outputs[1:], dys[1:])]
    return ([dys[0]] if dys[0] is not None else []) + states


def _zeros_like_state(ctx, x, units, batch_axis=0, dtype=None):
    """[N, u] zeros of ``dtype`` (by default x's) for x whose axis ``batch_axis`` is the batch
    (known at run time only): [N, T, I] batch-major, [T, N, u] time-major with batch_axis 1."""
    axis = [ctx.const([batch_axis], "int64"), ctx.const([batch_axis + 1], "int64")]
    n = ctx.emit("Slice", [ctx.emit("Shape", [x])] + axis)
    return ctx.zeros(ctx.emit("Concat", [n, ctx.const([units], "int64")], axis=0), dtype or ctx.dtype(x))


def _shift_right(ctx, seq, units, initial=None, time_major=False, dtype=None):
    """[N, T, u] -> [N, T, u] (or [T, N, u] -> [T, N, u]) with step t holding step t-1 (at t = 0
    ``initial`` [N, u], or zeros of ``dtype``, by default the sequence's): the previous states."""
    axis = 0 if time_major else 1
    start = initial if initial is not None else _zeros_like_state(ctx, seq, units, 1 - axis, dtype)
    first = ctx.emit("Unsqueeze", [start, ctx.const([axis], "int64")])
    head = ctx.emit("Slice", [seq, ctx.const([0], "int64"), ctx.const([-1], "int64"), ctx.const([axis], "int64")])
    return ctx.emit("Concat", [first, head], axis=axis)


@register
class LSTMGrad(Op):
    """inputs: x, kernel, recurrent_kernel, sequence (time-major where saved), cells[, i, f, g, o,
    act(c)][, d_sequence], d_last_h, d_last_c[, bias][, initial_h, initial_c][, drop][, mask];
    outputs: dx, d_kernel, d_recurrent_kernel, d_bias[, d_initial_h, d_initial_c]. attrs: units,
    seq_grad (the loss reads the sequence), has_bias,
    initial, rdrop, masked, saved (the forward pass's gates are inputs; else they are recomputed),
    activation and recurrent_activation (the LSTM's)."""
    name = "LSTMGrad"

    def infer(self, ins, attrs):
        return [ins[0], ins[1], ins[2], TensorType(ins[0].dtype, (4 * attrs["units"],))] + \
            _initial_grad_types(ins, attrs)

    def lower(self, ctx, inputs, outputs, attrs):
        x, kernel, recurrent, seq, cells = inputs[:5]
        first = 10 if attrs.get("saved") else 5
        d_seq, (d_h, d_c), bias, drop, mask, initial = _grad_inputs(inputs, attrs, first, 2)
        u, dtype = attrs["units"], ctx.dtype(x)
        h0, c0 = initial or (None, None)
        saved = bool(attrs.get("saved"))  # (then the sequence, cells and gates come time-major: LSTM.lower_scan,
        # and the reverse Scan emits its dz [T, N, 4u] in place, where a batch-major one costs it a
        # transpose of dz, four times the sequence's size)
        h_prev = _shift_right(ctx, seq, u, h0, time_major=saved, dtype=dtype)
        c_prev = _shift_right(ctx, cells, u, c0, time_major=saved)
        act, gate_act = _activations(attrs)
        if saved:  # the forward Scan's gates, and its own new cells' act(c)
            i, f, g, o, tanh_c = inputs[5:10]
        else:  # recompute the gates of every step at once from the stored states (no dropout: _grad_inputs)
            z = ctx.emit("Add", [ctx.emit("MatMul", [x, kernel]), ctx.emit("MatMul", [h_prev, recurrent])])
            if bias is not None:
                z = ctx.emit("Add", [z, bias])
            zi, zf, zg, zo = _gates(ctx, z, u, 4)
            i, f, o = (ctx.emit(gate_act, [v]) for v in (zi, zf, zo))
            g = ctx.emit(act, [zg])
            # The step's own new cell (before a mask keeps the old one).
            tanh_c = ctx.emit(act, [ctx.emit("Add", [ctx.emit("Mul", [f, c_prev]), ctx.emit("Mul", [i, g])])])
        # What a step's gradient does not owe to the next step's, for every step at once: with dh
        # and dc reaching the step's new h and c, dc gains dh o act'(c), and the gates'
        # pre-activations get dz = [dc, dc, dc, dh] * [g i', c_prev f', i g', act(c) o'] (by default
        # act = tanh and the gates' sigmoids, s' = s (1 - s)), each derivative from its output.
        _, mul = _elementwise(ctx, dtype)
        dgate = {v: _derivative(ctx, gate_act, v, dtype) for v in (i, f, o)}
        dc_dh = mul(o, _derivative(ctx, act, tanh_c, dtype))
        dz_scale = ctx.emit("Concat", [mul(g, dgate[i]), mul(c_prev, dgate[f]), mul(i, _derivative(ctx, act, g, dtype)),
                                       mul(tanh_c, dgate[o])], axis=-1)
        # Reverse scan: carry (dh, dc) from step t+1 to step t, starting from the gradients of the
        # returned last h and c; emit dz_t, the gradient of the gate pre-activations.
        rt, rgt = _recurrent_transposed(ctx, recurrent, drop, u)
        body = _Body(dtype, masked=mask is not None)
        dh_all, d_seq_input = _step_grads(body, d_seq)
        dh = body.counted(dh_all)  # into the step's own new h; a masked step passes it to h_prev
        dc = body("Add", body.counted("dc_next"), body("Mul", dh, "dcdh_t"))
        dz = body("Mul", body("Concat", dc, dc, dc, dh, axis=-1), "dzs_t")
        dh_prev = body.passed(_step_product_grad(body, dz, rt, _gate_major(ctx, drop), rgt, u), dh_all)
        dc_prev = body.passed(body("Mul", dc, "f_t"), "dc_next")
        body.nodes += [helper.make_node("Identity", [dh_prev], ["dh_prev"]),
                       helper.make_node("Identity", [dc_prev], ["dc_prev"]),
                       helper.make_node("Identity", [dz], ["dz_out"])]
        graph = body.graph("lstm_step_grad", ["dh_next", "dc_next"] + ["dh_t"] * bool(d_seq_input) +
                           ["dcdh_t", "dzs_t", "f_t"], ["dh_prev", "dc_prev", "dz_out"])
        sequences = d_seq_input + [dc_dh, dz_scale, f] + _step_mask(ctx, mask)
        dh0, dc0, dz_seq = _scan_backward(ctx, graph, [d_h, d_c] + sequences, 2, ["dh0", "dc0", "dz"],
                                          time_major=[len(d_seq_input) <= k < len(d_seq_input) + 3 and saved
                                                      for k in range(len(sequences))], outputs_time_major=saved)
        _initial_grads(ctx, [dh0, dc0], outputs[4:])
        dz2, _ = _weight_grads(ctx, x, h_prev, dz_seq, dz_seq, kernel, recurrent, drop, u, outputs, time_major=saved)
        ctx.emit("ReduceSum", [dz2, ctx.const([0], "int64")], [outputs[3]], keepdims=0)


def _initial_grad_types(ins, attrs):
    """A gradient op's outputs for the initial states: one [N, u] per state."""
    x = ins[0]
    return [TensorType(x.dtype, (x.shape[0], attrs["units"]))] * attrs.get("initial", 0)


def _initial_grads(ctx, carried, outputs):
    """The initial states' gradients: what the reverse Scan carries back past the first step."""
    for d, output in zip(carried, outputs):
        ctx.emit("Identity", [d], [output])


def _recurrent_transposed(ctx, recurrent, drop, units):
    """R^T, and with recurrent dropout the per-gate R_g^T [G, u, u], for the backward steps."""
    rt = ctx.emit("Transpose", [recurrent], perm=[1, 0])
    return rt, (_gate_kernels(ctx, recurrent, units, transposed=True) if drop is not None else None)


def _scan_forward(ctx, body, inputs, outputs, state_count, time_major=0, input_time_major=False):
    """Emit a Scan over time: ``inputs`` the initial states, then the sequences [N, T, ...] (the
    first [T, N, ...] where ``input_time_major``); its sequence outputs are [N, T, ...] but for
    the last ``time_major`` ones, [T, N, ...]."""
    scans, emitted = len(inputs) - state_count, len(outputs) - state_count
    ctx.emit("Scan", inputs, outputs, body=body, num_scan_inputs=scans,
             scan_input_axes=[0 if input_time_major else 1] + [1] * (scans - 1),
             scan_output_axes=[1] * (emitted - time_major) + [0] * time_major)


def _scan_backward(ctx, body, inputs, state_count, outputs, time_major=(), outputs_time_major=False):
    """Emit a Scan over time from the last step to the first, its sequences [N, T, ...] (those
    that ``time_major``, one flag per sequence input, marks: [T, N, ...]); returns its outputs
    (the states' gradients at the first step, then the sequences it emits in step order,
    [N, T, ...], or [T, N, ...] where ``outputs_time_major``)."""
    scans = len(inputs) - state_count
    axes = [0 if k < len(time_major) and time_major[k] else 1 for k in range(scans)]
    emitted = len(outputs) - state_count
    return ctx.emit("Scan", inputs, [ctx.fresh(name) for name in outputs], body=body, num_scan_inputs=scans,
                    scan_input_axes=axes, scan_input_directions=[1] * scans,
                    scan_output_axes=[0 if outputs_time_major else 1] * emitted,
                    scan_output_directions=[1] * emitted)


def _weight_grads(ctx, x, h_prev, dz_x, dz_h, kernel, recurrent, drop, units, outputs, time_major=False):
    """dx = dz_x W^T, dW = X^T dz_x, dR = H_prev^T dz_h over all steps at once; returns the
    flattened dz_x and dz_h for the bias gradients. ``time_major``: h_prev, dz_x and dz_h are
    [T, N, ...] (x and dx [N, T, ...] still)."""
    zx = _input_grads(ctx, x, dz_x, kernel, outputs, time_major)
    zh = ctx.emit("Reshape", [dz_h, ctx.const([-1, ctx.shape(kernel)[1]], "int64")])
    _recurrent_kernel_grad(ctx, h_prev, dz_h, drop, recurrent, units, outputs[2])
    return zx, zh


def _input_grads(ctx, x, dz_x, kernel, outputs, time_major=False):
    """dx = dz_x W^T and dW = X^T dz_x over all steps at once (outputs[0] and [1]); returns dz_x
    flattened, for the bias gradient. ``time_major``: dz_x is [T, N, ...] (x and dx [N, T, ...])."""
    dx, dk = outputs[:2]
    width = ctx.shape(kernel)[1]
    if time_major:
        x = ctx.emit("Transpose", [x], perm=[1, 0, 2])
        dx_t = ctx.emit("MatMul", [dz_x, ctx.emit("Transpose", [kernel], perm=[1, 0])])
        ctx.emit("Transpose", [dx_t], [dx], perm=[1, 0, 2])
    else:
        ctx.emit("MatMul", [dz_x, ctx.emit("Transpose", [kernel], perm=[1, 0])], [dx])
    zx = ctx.emit("Reshape", [dz_x, ctx.const([-1, width], "int64")])
    features = ctx.emit("Reshape", [x, ctx.const([-1, ctx.shape(kernel)[0]], "int64")])
    _summed_product(ctx, features, zx, (ctx.shape(kernel)[0], width), dk)
    return zx


class _OneStateRecurrence(Op):
    """A recurrence whose state is h alone (SimpleRNN, GRU): outputs sequence [N, T, u] and
    last h [N, u], and in training (attr ``saved``) ``saved(attrs)`` more sequences [N, T, u], the
    steps' gates, which its gradient op ``<name>Grad`` reads instead of recomputing them."""
    gates = 1

    def saved(self, attrs) -> int:
        """How many sequences the training form gives its gradient op (the last of them h, where
        ``keeps_h``)."""
        return 0

    def keeps_h(self, attrs) -> bool:
        """Whether the training form's last sequence for the gradient op is h, time-major: the
        op's batch-major sequence is then made only where something else reads it."""
        return False

    def infer(self, ins, attrs):
        x, k, r, b, drop, mask = _split_inputs(ins, attrs)
        self.check_float([x, k, r])
        u = attrs["units"]
        _check(x, k, r, b, self.gates, u, drop, _initial_states(ins, attrs) or ())
        seq = TensorType(x.dtype, (x.shape[0], x.shape[1], u))
        return [seq, TensorType(x.dtype, (x.shape[0], u))] + [seq] * (self.saved(attrs) * bool(attrs.get("saved")))

    def lower(self, ctx, inputs, outputs, attrs):  # (onnxruntime's fused op for a few rows, a Scan beyond)
        _fused_or_scan(ctx, self, inputs, outputs, attrs)

    def macs(self, ins, outs, attrs):
        return _recurrence_macs(ins)

    def sequential_steps(self, ins, attrs):
        return _time_steps(ins)

    def training_form(self, ctx, node):
        return _recurrent_dropout_form(ctx, node, **({"saved": True} if self.saved(node.attrs) else {}))

    def grad(self, ctx, node, dys):
        x, k, r, b, drop, mask = _split_inputs(node.inputs, node.attrs)
        seq, last, *saved = node.outputs
        grads = _output_grads(ctx, [seq, last], dys[:2])
        kept = {"saved": True} if saved else {}
        if saved and self.keeps_h(node.attrs):  # (the time-major h, as the sequence)
            seq, saved = saved[-1], saved[:-1]
        ins = [x, k, r, seq] + saved + grads
        return _grad_op(ctx, f"{self.name}Grad", node, ins, b, drop, mask, dys[0] is not None,
                        _initial_states(node.inputs, node.attrs), **self.grad_attrs(node.attrs), **kept)

    def grad_attrs(self, attrs):
        """Attributes the gradient op shares with the op."""
        return {}


FUSED_ROWS = "fused_max_rows"  # (each fused-or-Scan recurrence's threshold constant is named so)


def fused_at_any_batch(model_bytes: bytes, rows: int) -> bytes:
    """``model_bytes`` with its fused-or-Scan recurrences (_fused_or_scan) run as the fused op at any
    batch, or the same bytes where no recurrence's threshold is below ``rows`` (runs of that many
    rows would not change form). Which form is faster depends on the machine: a GRU(64) at 32 rows
    was 1.23x slower fused on one, a masked GRU(32) at 1,024 rows 1.2x faster fused on another;
    predict's parts time both (runtime/model.py, Model._parts_predictors)."""
    if FUSED_ROWS.encode() not in model_bytes:  # (no recurrence: the graph is not parsed)
        return model_bytes
    import onnx
    model = onnx.load_from_string(model_bytes)
    raised = False
    for tensor in model.graph.initializer:
        if tensor.name.startswith(FUSED_ROWS) and numpy_helper.to_array(tensor) < rows:
            tensor.CopyFrom(helper.make_tensor(tensor.name, TensorProto.INT64, [], [2 ** 62]))
            raised = True
    return model.SerializeToString() if raised else model_bytes


def _fused_or_scan(ctx, op, inputs, outputs, attrs):
    """Lower a SimpleRNN or GRU: as ONNX's fused op (RNN, GRU) for a batch of at most
    ``op.FUSED_MAX_BATCH`` rows, else as a Scan, chosen at run time by an ``If``. onnxruntime's
    fused ops take a few microseconds a step for one row, where a Scan's step costs some
    3 us plus 1 us an op, but they grow with the batch much faster (a GRU of 64 units over 100
    steps: one row 0.19 ms fused against 1.1 ms for the whole predict as a Scan; 32 rows 5.4
    against 2.4 ms). Masked steps run the fused op over each row's counted steps
    (_masked_by_lengths; inference only: over 100 steps, half of the second half masked, one
    row of a GRU(32) 3.1 -> 0.26 ms, of a SimpleRNN(32) 1.8 -> 0.27). Recurrent dropout, the
    masked training form and float64 (which onnxruntime's fused ops do not compute) keep the
    Scan."""
    x, _, _, _, drop, mask = _split_inputs(inputs, attrs)
    # (the training form's gates: emitted where the gradient reads them, not for a frozen layer;
    # the fused op's branch computes them from its sequence, for every step at once)
    outputs = outputs if any(ctx.used(o) for o in outputs[2:]) else outputs[:2]
    if len(outputs) > 2 and op.keeps_h(attrs) and not ctx.used(outputs[0]):
        outputs = [None] + outputs[1:]  # (the gradient reads h time-major: no batch-major sequence)
    if (mask is not None and len(outputs) > 2) or drop is not None or ctx.dtype(x) != "float32":
        return op.lower_scan(ctx, inputs, outputs, attrs)
    if mask is not None and not ctx.used(outputs[0]):
        outputs = [None] + outputs[1:]  # (the masked sequence's repeats are gathered only where read)
    batch = ctx.emit("Squeeze", [ctx.emit("Slice", [ctx.emit("Shape", [x]), ctx.const([0], "int64"),
                                                     ctx.const([1], "int64")])])
    small = ctx.emit("LessOrEqual", [batch, ctx.own_const(FUSED_ROWS, op.FUSED_MAX_BATCH, "int64")])
    dtype = ctx.dtype(x)

    def branch(lower):
        def build():
            fresh = [o and ctx.fresh(f"{o}_branch") for o in outputs]
            lower(ctx, inputs, fresh, attrs)
            return [f for f in fresh if f]
        return build

    def counted_steps(lower):
        def masked(ctx, inputs, outputs, attrs):
            _masked_by_lengths(ctx, x, mask, outputs, _initial_states(inputs, attrs), lambda x_steps, lengths, states:
                               lower(ctx, inputs, [None] + states, attrs, steps=(x_steps, lengths)))
        return lower if mask is None else masked
    name = op.name.lower()
    ctx.emit("If", [small], [o for o in outputs if o],
             then_branch=ctx.subgraph(f"{name}_fused", branch(counted_steps(op.lower_fused)), dtype),
             else_branch=ctx.subgraph(f"{name}_scan", branch(counted_steps(op.lower_scan)), dtype))


@register
class SimpleRNN(_OneStateRecurrence):
    """inputs: x [N, T, I], kernel [I, u], recurrent_kernel [u, u], bias [u] (optional), mask [N, T]
    (with attr masked). outputs: sequence [N, T, u], last h [N, u]. h_t = act(x_t W + h_{t-1} R + b),
    act the attr activation (ONNX's name: Tanh, the default, Sigmoid or Relu)."""
    name = "SimpleRNN"

    def grad_attrs(self, attrs):
        return {"activation": attrs["activation"]} if "activation" in attrs else {}
    FUSED_MAX_BATCH = 4  # (measured: 4 rows 0.29 ms fused against 0.32 for a Scan's predict; 8 rows 0.74 against 0.47)

    def saved(self, attrs):
        """h, time-major (keeps_h): the gradient's derivative and previous states come from it."""
        return 1

    def keeps_h(self, attrs):
        return True

    def infer(self, ins, attrs):
        types = super().infer(ins, attrs)
        if len(types) > 2:  # (the training form's h: time-major, see lower_scan)
            n, t, u = types[0].shape
            types[2] = types[0].with_shape((t, n, u))
        return types

    def lower_fused(self, ctx, inputs, outputs, attrs, steps=None):
        """``steps``: (x time-major, lengths) in place of x (_masked_by_lengths). Returns the
        sequence, time-major."""
        x, kernel, recurrent, bias, _, _ = _split_inputs(inputs, attrs)
        x_steps, lengths = steps or (x, None)
        biases = None if bias is None else (bias, ctx.const([0.0] * attrs["units"], ctx.dtype(x)))
        h_steps = _onnx_recurrence(ctx, "RNN", x_steps, kernel, recurrent, biases, outputs[:2], attrs["units"],
                                   initial=_initial_states(inputs, attrs), lengths=lengths, time_major=bool(steps),
                                   activations=[attrs.get("activation", "Tanh")])
        if len(outputs) > 2:  # (ONNX's sequence is time-major already)
            ctx.emit("Identity", [h_steps], [outputs[2]])
        return h_steps

    def lower_scan(self, ctx, inputs, outputs, attrs, steps=None):
        """A Scan over time. In the training form h, which the gradient op reads, is time-major,
        [T, N, u], and the batch-major sequence is its Transpose, made only where something else
        reads it (_batch_major), as the LSTM's and GRU's. ``steps``: (x time-major, lengths) in
        place of x and its mask (_scan_over_counted_steps)."""
        x, kernel, recurrent, bias, drop, mask = _split_inputs(inputs, attrs)
        dtype = ctx.dtype(x)
        if steps:
            x, mask = steps[0], None
        u = attrs["units"]
        saved = len(outputs) > 2
        time_major = saved and ctx.shape(x)[2] < u  # (the narrower of the input and its projection transposed)
        xw = ctx.emit("MatMul", [ctx.emit("Transpose", [x], perm=[1, 0, 2]) if time_major else x, kernel])
        if bias is not None:
            xw = ctx.emit("Add", [xw, bias])
        gate_kernels = _gate_kernels(ctx, recurrent, u) if drop is not None else None
        body = _Body(dtype, masked=mask is not None)
        z = _step_product(body, "h_prev", recurrent, _gate_major(ctx, drop), gate_kernels, plus="xw_t")
        h = body.blend(body(attrs.get("activation", "Tanh"), z), "h_prev")
        emitted = "h_steps_out" if saved else "h_out"
        body.nodes += [helper.make_node("Identity", [h], [name]) for name in ("h_next", emitted)]
        graph = body.graph("rnn_step", ["h_prev", "xw_t"], ["h_next", emitted])
        h0 = (_initial_states(inputs, attrs) or [_zeros_like_state(ctx, x, u, int(bool(steps)), dtype)])[0]
        if steps:
            return _scan_over_counted_steps(ctx, graph, h0, xw, steps[1], outputs[1])
        _scan_forward(ctx, graph, [h0, xw] + _step_mask(ctx, mask), [outputs[1], outputs[2 if saved else 0]], 1,
                      time_major=int(saved), input_time_major=time_major)
        if saved:
            _batch_major(ctx, outputs[2], outputs[0])


def _grad_inputs(inputs, attrs, first, states):
    """A gradient op's inputs after its ``first`` fixed ones: (the sequence's gradient or None,
    the ``states`` last states' gradients, bias, recurrent-dropout masks, step mask, initial states),
    absent ones None."""
    extra = list(inputs[first:])
    d_seq = extra.pop(0) if attrs.get("seq_grad", True) else None
    d_states = [extra.pop(0) for _ in range(states)]
    bias = extra.pop(0) if attrs.get("has_bias") else None
    initial = [extra.pop(0) for _ in range(attrs.get("initial", 0))] or None
    drop = extra.pop(0) if attrs.get("rdrop") else None
    mask = extra.pop(0) if attrs.get("masked") else None
    if drop is not None and not attrs.get("saved"):  # (the ops' gate recomputation has no masks)
        raise ValueError("recurrent dropout's gradient reads the gates its training form saved (attr saved)")
    return d_seq, d_states, bias, drop, mask, initial


def _step_grads(body, d_seq):
    """In a backward step: the gradient reaching the step's h from the next step ("dh_next") plus,
    where the loss reads the whole sequence, from the sequence ("dh_t"): (that sum, the Scan's
    sequence inputs for it)."""
    if d_seq is None:
        return "dh_next", []
    return body("Add", "dh_t", "dh_next"), [d_seq]


@register
class SimpleRNNGrad(Op):
    """inputs: x, kernel, recurrent_kernel, sequence (time-major where saved)[, d_sequence], d_last_h
    [, bias][, drop][, mask]; outputs: dx, dW, dR, db[, d_initial_h]. attrs: units, seq_grad,
    has_bias, initial, rdrop, masked, activation (SimpleRNN's), saved (the training form's)."""
    name = "SimpleRNNGrad"

    def infer(self, ins, attrs):
        return [ins[0], ins[1], ins[2], TensorType(ins[0].dtype, (attrs["units"],))] + _initial_grad_types(ins, attrs)

    def lower(self, ctx, inputs, outputs, attrs):
        x, kernel, recurrent, seq = inputs[:4]
        d_seq, (d_h,), bias, drop, mask, initial = _grad_inputs(inputs, attrs, 4, 1)
        u, dtype = attrs["units"], ctx.dtype(x)
        saved = bool(attrs.get("saved"))  # (the sequence time-major: the reverse Scan reads and emits so)
        h_prev = _shift_right(ctx, seq, u, initial and initial[0], time_major=saved, dtype=dtype)
        # The factor by which a step's gradient reaches its pre-activation z, from the step's new h
        # (the sequence): 1 - h^2 (tanh), h (1 - h) (sigmoid), or 1 where h = relu(z) > 0 (0 at 0, as
        # Keras's). A masked step's h is the state it kept, but its factor multiplies no gradient.
        dact = _derivative(ctx, attrs.get("activation", "Tanh"), seq, dtype)
        rt, rgt = _recurrent_transposed(ctx, recurrent, drop, u)
        body = _Body(dtype, masked=mask is not None)
        dh_all, d_seq_input = _step_grads(body, d_seq)
        dz = body("Mul", body.counted(dh_all), "dact_t")
        dh_prev = body.passed(_step_product_grad(body, dz, rt, _gate_major(ctx, drop), rgt, u), dh_all)
        body.nodes += [helper.make_node("Identity", [dh_prev], ["dh_prev"]),
                       helper.make_node("Identity", [dz], ["dz_out"])]
        graph = body.graph("rnn_step_grad", ["dh_next"] + ["dh_t"] * bool(d_seq_input) + ["dact_t"],
                           ["dh_prev", "dz_out"])
        dh0, dz = _scan_backward(ctx, graph, [d_h] + d_seq_input + [dact] + _step_mask(ctx, mask), 1, ["dh0", "dz"],
                                 time_major=[False] * len(d_seq_input) + [saved], outputs_time_major=saved)
        _initial_grads(ctx, [dh0], outputs[4:])
        zx, _ = _weight_grads(ctx, x, h_prev, dz, dz, kernel, recurrent, drop, u, outputs, time_major=saved)
        ctx.emit("ReduceSum", [zx, ctx.const([0], "int64")], [outputs[3]], keepdims=0)


@register
class GRU(_OneStateRecurrence):
    """Keras's GRU. inputs: x [N, T, I], kernel [I, 3u], recurrent_kernel [u, 3u], bias (optional;
    with reset_after [2, 3u], the input and recurrent biases, without it [3u]), mask [N, T] (with
    attr masked). Gates z, r, h (Keras order). outputs: sequence [N, T, u], last h [N, u].
    attrs: units, reset_after (absent: true, Keras 3's default, hh = tanh(x W_h + b_h + r * (h R_h
    + b'_h)); false: the reset gate scales h before its product, hh = tanh(x W_h + b_h + (r * h) R_h),
    ONNX's linear_before_reset=0), masked, initial, rdrop."""
    name = "GRU"
    gates = 3
    FUSED_MAX_BATCH = 16  # (measured: 16 rows 1.4 ms fused against 4.8 for a Scan's predict; 32 rows 5.4 against 4.4)

    def infer(self, ins, attrs):
        b = _split_inputs(ins, attrs)[3]
        u = attrs["units"]
        reset_after = attrs.get("reset_after", True)
        want = (2, 3 * u) if reset_after else (3 * u,)
        if b is not None and b.shape != want:
            raise ShapeError(f"GRU bias must be {format_shape(want)} (reset_after={str(reset_after).lower()}), "
                             f"got {format_shape(b.shape)}")
        types = super().infer(ins, attrs)
        if len(types) > 2:  # (the training form's gates and h: time-major, see lower_scan)
            seq = types[0]
            types[2:] = [seq.with_shape((seq.shape[1], seq.shape[0], u))] * (len(types) - 2)
        return types

    def grad_attrs(self, attrs):
        return dict({k: attrs[k] for k in ("activation", "recurrent_activation") if k in attrs},
                    **({} if attrs.get("reset_after", True) else {"reset_after": False}))

    def saved(self, attrs):
        """z, r and hh, with reset_after the recurrent product's h part hh_ (h R_h + b'_h), and h
        (keeps_h)."""
        return 5 if attrs.get("reset_after", True) else 4

    def keeps_h(self, attrs):
        return True

    @staticmethod
    def biases(ctx, bias, reset_after=True):
        """(input bias [3u], recurrent bias [3u]) of the bias input; without reset_after the one
        bias is the input bias and there is no recurrent one (None)."""
        if bias is None:
            return None, None
        if not reset_after:
            return bias, None
        b_in, b_rec = ctx.emit("Split", [bias, ctx.const([1, 1], "int64")],
                               [ctx.fresh("bias"), ctx.fresh("bias")], axis=0)
        squeeze = ctx.const([0], "int64")
        return ctx.emit("Squeeze", [b_in, squeeze]), ctx.emit("Squeeze", [b_rec, squeeze])

    def lower_fused(self, ctx, inputs, outputs, attrs, steps=None):
        """``steps``: (x time-major, lengths) in place of x (_masked_by_lengths; not in the
        training form). Returns the sequence, time-major."""
        x, kernel, recurrent, bias, _, _ = _split_inputs(inputs, attrs)
        x_steps, lengths = steps or (x, None)
        u, reset_after = attrs["units"], attrs.get("reset_after", True)
        if bias is None:
            biases = None
        elif reset_after:
            biases = self.biases(ctx, bias)
        else:  # (ONNX's recurrent bias R_bh is added after the reset gate: zero here)
            biases = (bias, ctx.const([0.0] * (3 * u), ctx.dtype(x)))
        # (Keras's gates z, r, h are ONNX's; reset_after is its linear_before_reset)
        initial = _initial_states(inputs, attrs)
        h_steps = _onnx_recurrence(ctx, "GRU", x_steps, kernel, recurrent, biases, outputs[:2], u,
                                   linear_before_reset=int(reset_after), initial=initial, lengths=lengths,
                                   time_major=bool(steps), activations=list(_activations(attrs))[::-1])
        if len(outputs) > 2:  # the training form's gates and h, time-major (see lower_scan), from its states
            h_prev = _shift_right(ctx, h_steps, u, initial[0] if initial else None, time_major=True,
                                  dtype=ctx.dtype(x))
            x = ctx.emit("Transpose", [x], perm=[1, 0, 2])
            ctx.emit("Identity", [h_steps], [outputs[-1]])
            for gate, output in zip(_gru_gates(ctx, x, kernel, recurrent, bias, h_prev, u, reset_after,
                                               _activations(attrs)), outputs[2:]):
                ctx.emit("Identity", [gate], [output])
        return h_steps

    def lower_scan(self, ctx, inputs, outputs, attrs, steps=None):
        """A Scan over time. In the training form, the gates and h the gradient op reads are
        time-major, [T, N, u], as the LSTM's (LSTM.lower_scan: no transposes of them
        by either Scan), and the batch-major sequence is h's Transpose, made only where something
        else reads it (_batch_major); an input of fewer features than 3u is transposed for the
        Scan instead of its projection. ``steps``: (x time-major, lengths) in place of x and its
        mask (_scan_over_counted_steps)."""
        x, kernel, recurrent, bias, drop, mask = _split_inputs(inputs, attrs)
        dtype = ctx.dtype(x)
        if steps:
            x, mask = steps[0], None
        u, reset_after = attrs["units"], attrs.get("reset_after", True)
        b_in, b_rec = self.biases(ctx, bias, reset_after)
        time_major = not steps and ctx.shape(x)[2] < 3 * u
        xw = ctx.emit("MatMul", [ctx.emit("Transpose", [x], perm=[1, 0, 2]) if time_major else x, kernel])
        if b_in is not None:
            xw = ctx.emit("Add", [xw, b_in])
        body = _Body(dtype, masked=mask is not None)
        act, gate_act = _activations(attrs)
        xz, xr, xh = "xz", "xr", "xh"
        body.nodes.append(helper.make_node("Split", ["xw_t", body.ints([u] * 3, "sizes")], [xz, xr, xh], axis=-1))
        if reset_after:
            gate_kernels = _gate_kernels(ctx, recurrent, u) if drop is not None else None
            hr = _step_product(body, "h_prev", recurrent, _gate_major(ctx, drop), gate_kernels, plus=b_rec)
            body.nodes.append(helper.make_node("Split", [hr, "sizes"], ["hz", "hr_", "hh_"], axis=-1))
            z = body(gate_act, body("Add", xz, "hz"))
            r = body(gate_act, body("Add", xr, "hr_"))
            pre_h = body("Add", xh, body("Mul", r, "hh_"))
            hh_ = [("hh_", "hh__out")]
        else:  # z and r from h R_zr; hh from (r * h) R_h (with recurrent dropout, h times each gate's mask)
            r_zr, r_h, drop_zr, drop_h, kernels_zr = _reset_before_parts(ctx, recurrent, drop, u)
            hzr = _step_product(body, "h_prev", r_zr, _gate_major(ctx, drop_zr), kernels_zr)
            body.nodes.append(helper.make_node("Split", [hzr, body.ints([u] * 2, "sizes_zr")], ["hz", "hr_"],
                                               axis=-1))
            z = body(gate_act, body("Add", xz, "hz"))
            r = body(gate_act, body("Add", xr, "hr_"))
            q = body("Mul", r, "h_prev")
            if drop_h is not None:
                q = body("Mul", q, drop_h)
            pre_h = body("Gemm", q, r_h, xh)
            hh_ = []
        hh = body(act, pre_h)
        h = body("Add", hh, body("Mul", z, body("Sub", "h_prev", hh)))  # (z h + (1 - z) hh, an op less)
        h = body.blend(h, "h_prev")
        saved = ([(z, "z_out"), (r, "r_out"), (hh, "hh_out")] + hh_ + [(h, "h_steps_out")])[:len(outputs) - 2]
        keeps_h = bool(saved)  # (then h time-major, the batch-major sequence from it)
        emitted = saved if keeps_h else [(h, "h_out")] + saved
        body.nodes += [helper.make_node("Identity", [v], [name]) for v, name in [(h, "h_next")] + emitted]
        graph = body.graph("gru_step", ["h_prev", "xw_t"], ["h_next"] + [name for _, name in emitted])
        h0 = (_initial_states(inputs, attrs) or [_zeros_like_state(ctx, x, u, int(bool(steps)), dtype)])[0]
        if steps:
            return _scan_over_counted_steps(ctx, graph, h0, xw, steps[1], outputs[1])
        _scan_forward(ctx, graph, [h0, xw] + _step_mask(ctx, mask), [outputs[1]] + [outputs[0]] * (not keeps_h) +
                      outputs[2:], 1, time_major=len(outputs) - 2, input_time_major=time_major)
        if keeps_h:
            _batch_major(ctx, outputs[-1], outputs[0])


def _reset_before_parts(ctx, recurrent, drop, units, transposed=False):
    """A reset_after=false GRU's recurrent kernel apart: (R_zr [u, 2u], R_h [u, u] (each transposed
    if asked), and with recurrent dropout the z and r gates' masks [N, 2, u], the h gate's [N, u] and
    the z and r gates' kernels [2, u, u] (transposed if asked); else None for those three)."""
    def part(value, start, end, axis):
        return ctx.emit("Slice", [value, ctx.const([start], "int64"), ctx.const([end], "int64"),
                                  ctx.const([axis], "int64")])
    r_zr, r_h = part(recurrent, 0, 2 * units, 1), part(recurrent, 2 * units, 3 * units, 1)
    if transposed:
        r_zr, r_h = (ctx.emit("Transpose", [v], perm=[1, 0]) for v in (r_zr, r_h))
    if drop is None:
        return r_zr, r_h, None, None, None
    drop_h = ctx.emit("Squeeze", [part(drop, 2, 3, 1), ctx.const([1], "int64")])
    kernels = part(_gate_kernels(ctx, recurrent, units, transposed=transposed), 0, 2, 0)
    return r_zr, r_h, part(drop, 0, 2, 1), drop_h, kernels


def _gru_gates(ctx, x, kernel, recurrent, bias, h_prev, units, reset_after, activations):
    """A GRU's gates for every step at once, from its inputs and previous states h_prev [N, T, u]
    (or both [T, N, ...]): z, r, hh and (reset_after) the recurrent product's h part
    hh_ = h R_h + b'_h, each [N, T, u]. No recurrent dropout: its training form saves the gates.
    ``activations``: (activation, recurrent_activation)."""
    u, (act, gate_act) = units, activations
    b_in, b_rec = GRU.biases(ctx, bias, reset_after)
    xw = ctx.emit("MatMul", [x, kernel])
    xw = ctx.emit("Add", [xw, b_in]) if b_in is not None else xw
    xz, xr, xh = _gates(ctx, xw, u, 3)
    if reset_after:
        hr = ctx.emit("MatMul", [h_prev, recurrent])
        hr = ctx.emit("Add", [hr, b_rec]) if b_rec is not None else hr
        hz, hr_, hh_ = _gates(ctx, hr, u, 3)
    else:
        r_zr, r_h = _reset_before_parts(ctx, recurrent, None, u)[:2]
        hz, hr_ = _gates(ctx, ctx.emit("MatMul", [h_prev, r_zr]), u, 2)
    z = ctx.emit(gate_act, [ctx.emit("Add", [xz, hz])])
    r = ctx.emit(gate_act, [ctx.emit("Add", [xr, hr_])])
    if reset_after:
        return z, r, ctx.emit(act, [ctx.emit("Add", [xh, ctx.emit("Mul", [r, hh_])])]), hh_
    q = ctx.emit("Mul", [r, h_prev])
    return z, r, ctx.emit(act, [ctx.emit("Add", [xh, ctx.emit("MatMul", [q, r_h])])])


@register
class GRUGrad(Op):
    """inputs: x, kernel, recurrent_kernel, sequence (time-major with reset_after's gates)[, z, r, hh
    [, hh_]][, d_sequence], d_last_h[, bias][, drop][, mask]; outputs: dx, dW, dR, d_bias ([2, 3u], or [3u] without reset_after)[, d_initial_h].
    attrs: units, reset_after (as GRU's), seq_grad, has_bias, initial, rdrop, masked, saved (the
    forward pass's gates, hh_ with reset_after only, are inputs; else they are recomputed)."""
    name = "GRUGrad"

    def infer(self, ins, attrs):
        u = attrs["units"]
        bias = (2, 3 * u) if attrs.get("reset_after", True) else (3 * u,)
        return [ins[0], ins[1], ins[2], TensorType(ins[0].dtype, bias)] + _initial_grad_types(ins, attrs)

    def lower(self, ctx, inputs, outputs, attrs):
        if not attrs.get("reset_after", True):
            return self.lower_reset_before(ctx, inputs, outputs, attrs)
        x, kernel, recurrent, seq = inputs[:4]
        d_seq, (d_h,), bias, drop, mask, initial = _grad_inputs(inputs, attrs, 8 if attrs.get("saved") else 4, 1)
        u, dtype = attrs["units"], ctx.dtype(x)
        saved = bool(attrs.get("saved"))  # (then the sequence and gates come time-major: GRU.lower_scan)
        h_prev = _shift_right(ctx, seq, u, initial and initial[0], time_major=saved, dtype=dtype)
        # the forward pass's gates, or recomputed for every step at once from the stored states
        z, r, hh, hh_ = inputs[4:8] if saved else _gru_gates(ctx, x, kernel, recurrent, bias, h_prev, u,
                                                             True, _activations(attrs))
        # With dh reaching a step's new h = z h_prev + (1 - z) hh, the gradients of its gates'
        # input and recurrent pre-activations are dh times, for every step at once:
        # z' (h_prev - hh), with a = (1 - z) act'(hh): r' hh_ a, and a (r a on the recurrent side)
        # (by default act = tanh, act' = 1 - hh^2, and the gates' sigmoids; each derivative from its output).
        one, mul = _elementwise(ctx, dtype)
        act, gate_act = _activations(attrs)
        a = mul(ctx.emit("Sub", [one, z]), _derivative(ctx, act, hh, dtype))
        dz_z = mul(_derivative(ctx, gate_act, z, dtype), ctx.emit("Sub", [h_prev, hh]))
        dz_r = mul(mul(_derivative(ctx, gate_act, r, dtype), hh_), a)
        dzx_scale = ctx.emit("Concat", [dz_z, dz_r, a], axis=-1)
        dzh_scale = ctx.emit("Concat", [dz_z, dz_r, mul(a, r)], axis=-1)
        rt, rgt = _recurrent_transposed(ctx, recurrent, drop, u)
        body = _Body(dtype, masked=mask is not None)
        dh_all, d_seq_input = _step_grads(body, d_seq)
        dh = body.counted(dh_all)  # into the step's own new h; a masked step passes it to h_prev
        dzh = body("Mul", body("Concat", dh, dh, dh, axis=-1), "dzhs_t")
        through_gates = _step_product_grad(body, dzh, rt, _gate_major(ctx, drop), rgt, u)
        dh_prev = body.passed(body("Add", body("Mul", dh, "z_t"), through_gates), dh_all)
        body.nodes += [helper.make_node("Identity", [dh_prev], ["dh_prev"]),
                       helper.make_node("Identity", [dh], ["dh_out"])]
        graph = body.graph("gru_step_grad", ["dh_next"] + ["dh_t"] * bool(d_seq_input) + ["dzhs_t", "z_t"],
                           ["dh_prev", "dh_out"])
        sequences = d_seq_input + [dzh_scale, z] + _step_mask(ctx, mask)
        dh0, dh_seq = _scan_backward(ctx, graph, [d_h] + sequences, 1, ["dh0", "dh"],
                                     time_major=[len(d_seq_input) <= k < len(d_seq_input) + 2 and saved
                                                 for k in range(len(sequences))], outputs_time_major=saved)
        _initial_grads(ctx, [dh0], outputs[4:])
        dh3 = ctx.emit("Concat", [dh_seq, dh_seq, dh_seq], axis=-1)
        zx, zh = _weight_grads(ctx, x, h_prev, mul(dh3, dzx_scale), mul(dh3, dzh_scale), kernel, recurrent, drop, u,
                               outputs, time_major=saved)
        axis0 = ctx.const([0], "int64")
        sums = [ctx.emit("ReduceSum", [v, axis0], keepdims=1) for v in (zx, zh)]
        ctx.emit("Concat", sums, [outputs[3]], axis=0)

    def lower_reset_before(self, ctx, inputs, outputs, attrs):
        """reset_after=false: hh = tanh(x W_h + b_h + q R_h) with q = r * h_prev (* the h gate's
        dropout mask m_h). With dh reaching a step's new h = z h_prev + (1 - z) hh, the gate
        pre-activations get dz_z = dh z' (h_prev - hh), dz_h = dh a with a = (1 - z)(1 - hh^2),
        and dz_r = dq r' h_prev m_h with dq = dz_h R_h^T; h_prev gets dh z + [dz_z, dz_r] R_zr^T
        + dq r m_h. dq goes through R_h^T, so dz_r is computed in the reverse Scan's steps."""
        x, kernel, recurrent, seq = inputs[:4]
        d_seq, (d_h,), bias, drop, mask, initial = _grad_inputs(inputs, attrs, 7 if attrs.get("saved") else 4, 1)
        u, dtype = attrs["units"], ctx.dtype(x)
        saved = bool(attrs.get("saved"))  # (then the sequence and gates come time-major: GRU.lower_scan)
        h_prev = _shift_right(ctx, seq, u, initial and initial[0], time_major=saved, dtype=dtype)
        r_zr_t, r_h_t, drop_zr, drop_h, kernels_zr_t = _reset_before_parts(ctx, recurrent, drop, u, transposed=True)
        one, mul = _elementwise(ctx, dtype)
        m_h = None if drop_h is None else ctx.emit("Unsqueeze", [drop_h, ctx.const([0], "int64")])
        h_kept = h_prev if m_h is None else mul(h_prev, m_h)  # (m_h [1, N, u]: with dropout h_prev is time-major)
        # the forward pass's gates, or recomputed for every step at once from the stored states
        z, r, hh = inputs[4:7] if saved else _gru_gates(ctx, x, kernel, recurrent, bias, h_prev, u, False,
                                                        _activations(attrs))
        q = mul(r, h_kept)
        act, gate_act = _activations(attrs)
        a = mul(ctx.emit("Sub", [one, z]), _derivative(ctx, act, hh, dtype))
        dz_z = mul(_derivative(ctx, gate_act, z, dtype), ctx.emit("Sub", [h_prev, hh]))
        dr_dq = mul(_derivative(ctx, gate_act, r, dtype), h_kept)
        dh_dq = r if m_h is None else mul(r, m_h)
        body = _Body(dtype, masked=mask is not None)
        dh_all, d_seq_input = _step_grads(body, d_seq)
        dh = body.counted(dh_all)  # into the step's own new h; a masked step passes it to h_prev
        dzz, dzh = body("Mul", dh, "dzz_t"), body("Mul", dh, "a_t")
        dq = body("MatMul", dzh, r_h_t)
        dzr = body("Concat", dzz, body("Mul", dq, "drdq_t"), axis=-1)
        through_gates = _step_product_grad(body, dzr, r_zr_t, _gate_major(ctx, drop_zr), kernels_zr_t, u)
        dh_prev = body("Add", body("Add", body("Mul", dh, "z_t"), through_gates), body("Mul", dq, "dhdq_t"))
        dh_prev = body.passed(dh_prev, dh_all)
        body.nodes += [helper.make_node("Identity", [dh_prev], ["dh_prev"]),
                       helper.make_node("Identity", [body("Concat", dzr, dzh, axis=-1)], ["dz_out"])]
        graph = body.graph("gru_reset_before_step_grad", ["dh_next"] + ["dh_t"] * bool(d_seq_input) +
                           ["dzz_t", "a_t", "drdq_t", "dhdq_t", "z_t"], ["dh_prev", "dz_out"])
        sequences = d_seq_input + [dz_z, a, dr_dq, dh_dq, z] + _step_mask(ctx, mask)
        dh0, dz_seq = _scan_backward(ctx, graph, [d_h] + sequences, 1, ["dh0", "dz"],
                                     time_major=[len(d_seq_input) <= k < len(d_seq_input) + 5 and saved
                                                 for k in range(len(sequences))], outputs_time_major=saved)
        _initial_grads(ctx, [dh0], outputs[4:])
        dr, db = outputs[2:4]
        dz2 = _input_grads(ctx, x, dz_seq, kernel, outputs, time_major=saved)
        dz_zr, dz_h = ctx.emit("Split", [dz_seq, ctx.const([2 * u, u], "int64")], [ctx.fresh("dz_zr"),
                                                                                    ctx.fresh("dz_h")], axis=-1)
        d_r_zr = _recurrent_kernel_grad(ctx, h_prev, dz_zr, drop_zr, None, u, ctx.fresh("d_r_zr"), width=2 * u)
        flat = ctx.const([-1, u], "int64")
        d_r_h = _summed_product(ctx, ctx.emit("Reshape", [q, flat]), ctx.emit("Reshape", [dz_h, flat]), (u, u))
        ctx.emit("Concat", [d_r_zr, d_r_h], [dr], axis=1)
        ctx.emit("ReduceSum", [dz2, ctx.const([0], "int64")], [db], keepdims=0)
