"""Finite-difference checking of generated gradients, on float64 graphs."""
import numpy as np
import onnxruntime as ort

from kcompile.autodiff import gradients
from kcompile.backend import to_onnx
from kcompile.driver import compile_source
from kcompile.ops import emit


class _Reference:
    """onnx's reference evaluator, for float64 ops onnxruntime's CPU provider lacks (Conv)."""

    def __init__(self, model):
        import math

        from onnx.reference import ReferenceEvaluator
        from onnx.reference.op_run import OpRun

        class Erf(OpRun):  # onnx's own computes erf in float32
            op_domain = ""

            def _run(self, x):
                return (np.vectorize(math.erf, otypes=[x.dtype])(x),)

        class MaxUnpool(OpRun):  # onnx's own mishandles sizes the windows do not divide
            op_domain = ""

            def _run(self, x, indices, output_shape=None, kernel_shape=None, pads=None, strides=None):
                if output_shape is None:  # (ONNX's default: windows that tile the output)
                    output_shape = x.shape[:2] + tuple((n - 1) * s + k
                                                       for n, s, k in zip(x.shape[2:], strides, kernel_shape))
                out = np.zeros(int(np.prod(output_shape)), dtype=x.dtype)
                out[indices.ravel()] = x.ravel()
                return (out.reshape(tuple(output_shape)),)

        self.evaluator = ReferenceEvaluator(model, new_ops=[Erf, MaxUnpool])

    def run(self, outputs, feeds):
        return self.evaluator.run(outputs, feeds)


def _session(g):
    model = to_onnx(g, params_as_inputs=True)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # No graph rewrites: compare exactly what kcompile generated.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # no float64 kernel
        if "NOT_IMPLEMENTED" not in str(e):
            raise
        return _Reference(model)


def check_gradients(src, feeds, model=None, seed=0, samples=12, h=1e-6, rtol=1e-6, atol=1e-9,
                    wrt_inputs=True, weight_scale=0.5, training=False, passes=()):
    """Compile ``src`` (float64 inputs), take loss = sum(outputs * random), and compare the
    generated gradient of every weight and float input with central differences.
    ``training``: check the training form (dropout masks drawn from fixed uniform noise inputs);
    ``passes``: graph rewrites (IR -> IR) applied first, as the training pipeline does."""
    rng = np.random.default_rng(seed)
    g = compile_source(src, "grad.kdl", model=model, opt_level=0).graph
    for rewrite in passes:
        g = rewrite(g)
    noise = []
    if training:
        from kcompile.training.graphs import training_form
        batch = len(next(iter(feeds.values())))
        noise = [name for name, _ in training_form(g)[0]]
        feeds = {**feeds, **{n: rng.random((batch,) + g.types[n].shape[1:]).astype(g.types[n].dtype)
                             for n in noise}}
    terms = []
    for _, value in g.outputs:
        t = g.types[value]
        r = g.add_const(rng.normal(size=t.shape[1:]).astype(t.dtype))  # broadcast over the batch
        terms.append(emit(g, "ReduceSum", [emit(g, "Mul", [value, r])[0]], {"keepdims": 0})[0])
    loss = terms[0]
    for t in terms[1:]:
        loss = emit(g, "Add", [loss, t])[0]
    weights = {}
    for name, p in g.params.items():
        w = rng.normal(0, weight_scale, p.type.shape)
        if "variance" in name:
            w = np.abs(w) + 0.5
        weights[name] = w.astype(p.type.dtype)
    float_inputs = [n for n in g.inputs if g.types[n].is_float and n not in noise] if wrt_inputs else []
    wrt = [n for n, p in g.params.items() if p.trainable] + float_inputs
    grads = gradients(g, loss, wrt)
    forward_outputs = list(g.outputs)
    g.outputs = [("loss", loss)] + [(f"d/{w}", grads[w]) for w in wrt if grads[w] is not None]
    session = _session(g)
    all_feeds = {**feeds, **weights}
    results = dict(zip([o for o, _ in g.outputs], session.run(None, all_feeds)))
    g.outputs = [("loss", loss)]
    loss_session = _session(g)

    def loss_at(name, flat_index, delta):
        f = {k: v.copy() for k, v in all_feeds.items()}
        f[name].reshape(-1)[flat_index] += delta
        return loss_session.run(None, f)[0]

    checked = 0
    for w in wrt:
        if grads[w] is None:
            raise AssertionError(f"no gradient for {w}")
        analytic = results[f"d/{w}"]
        assert analytic.shape == all_feeds[w].shape, (w, analytic.shape, all_feeds[w].shape)
        size = all_feeds[w].size
        for i in rng.choice(size, min(samples, size), replace=False):
            numeric = (loss_at(w, i, h) - loss_at(w, i, -h)) / (2 * h)
            got = analytic.reshape(-1)[i]
            assert abs(numeric - got) <= atol + rtol * max(abs(numeric), abs(got)), \
                f"d loss / d {w}[{i}]: generated {got:.12g}, finite differences {numeric:.12g}"
            checked += 1
    return checked, forward_outputs


def expected_checks(src, feeds, samples=12):
    """How many entries check_gradients compares for ``src``: up to ``samples`` of every weight
    and float input (tests assert it, so that no weight or input is left unchecked)."""
    import kcompile
    sizes = [w.size for w in kcompile.compile_string(src).get_weights()] + \
        [v.size for v in feeds.values() if np.asarray(v).dtype.kind == "f"]
    return sum(min(samples, n) for n in sizes)
