"""A compiled model's layers as Keras shows them (``model.layers``, ``model.get_layer``): names,
classes, output shapes and weights, read and written through the model that owns them."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatch, did_you_mean


class Layer:
    """One layer of a compiled model. ``get_weights``/``set_weights`` read and write its weights
    in Keras's order and layouts; ``trainable = False`` freezes it (``Model.set_trainable``)."""

    def __init__(self, model, entry: dict):
        self._model = model
        self.name = entry["name"]
        self.class_name = entry["kind"]
        self.weight_names = list(entry["params"])
        shapes = [tuple(None if isinstance(d, str) else d for d in s) for s in entry["output_shapes"]]
        self.output_shape = shapes[0] if len(shapes) == 1 else shapes or None  # (None: a layer never called)

    def __repr__(self):
        return f"<kcompile layer {self.name} ({self.class_name}), {len(self.weight_names)} weights>"

    def _shapes(self) -> list[tuple]:
        """Its weights' shapes, from the manifest (no copy of any weight)."""
        shapes = {p["name"]: tuple(p["shape"]) for p in self._model.manifest["parameters"]}
        return [shapes[n] for n in self.weight_names]

    def get_weights(self) -> list[np.ndarray]:
        with self._model._lock:  # (the model's calls take turns: runtime/training.py, one_call_at_a_time)
            self._model._sync_state()
            return [self._model._weights[n].copy() for n in self.weight_names]

    def set_weights(self, weights) -> None:
        """Its weights replaced (the model's set_weights checks the shapes; the others stay)."""
        weights = list(weights)
        if len(weights) != len(self.weight_names):
            raise ValueError(f"set_weights: layer {self.name} has {len(self.weight_names)} weights, got {len(weights)}")
        with self._model._lock:  # (the other layers' weights read and written back in one turn)
            self._model._sync_state()
            mine = dict(zip(self.weight_names, weights))
            self._model.set_weights([mine.get(n, self._model._weights[n]) for n in self._model.weight_names])

    def adapt(self, data) -> None:
        """A Normalization layer's mean and variance from ``data`` shaped like its input (each
        feature's population mean and variance, as Keras's adapt)."""
        if self.class_name != "Normalization" or len(self.weight_names) != 2:
            raise ValueError(f"adapt: layer {self.name} ({self.class_name}) has nothing to adapt; a Normalization "
                             f"layer without mean= and variance= has")
        features = self._shapes()[0][0]
        data = np.asarray(data, dtype=np.float64)
        if data.ndim < 1 or data.shape[-1] != features:
            raise ShapeMismatch(f"adapt: layer {self.name} normalizes {features} features, got data of shape "
                                f"{tuple(data.shape)}")
        if data.size == 0:
            raise ValueError(f"adapt: no data (shape {tuple(data.shape)}): a mean and variance need at least one sample")
        flat = data.reshape(-1, features)
        self.set_weights([flat.mean(axis=0), flat.var(axis=0)])

    @property
    def states(self) -> list[np.ndarray]:
        """A stateful recurrent layer's current states, [batch_size, units] each (h, then c for an
        LSTM; a Bidirectional's forward ones, then its backward's), as Keras's ``layer.states``."""
        states = self._model._states
        names = [n for n in states.values if n.startswith(self.name + "/")] if states is not None else []
        if not names:
            raise AttributeError(f"layer {self.name} ({self.class_name}) is not stateful")
        return [states.values[n].copy() for n in names]

    def reset_states(self) -> None:
        """Zero this stateful recurrent layer's states (those of a Bidirectional's two directions,
        or of the stateful layers inside a block or called model), as Keras's reset_states."""
        states = self._model._states
        if states is None or not states.reset(self.name + "/"):
            raise AttributeError(f"reset_states: layer {self.name} ({self.class_name}) is not stateful; "
                                 f"SimpleRNN, LSTM and GRU with stateful=true are")

    def count_params(self) -> int:
        return int(sum(np.prod(shape, dtype=np.int64) for shape in self._shapes()))

    def get_layer(self, name: str) -> "Layer":
        """A layer inside this block or called model, by its name there (as Keras's nested models)."""
        return self._model.get_layer(f"{self.name}/{name}")

    @property
    def weights(self) -> list[np.ndarray]:
        return self.get_weights()

    @property
    def trainable(self) -> bool:
        flags = {p["name"]: p["trainable"] for p in self._model.manifest["parameters"]}
        return any(flags[n] for n in self.weight_names) if self.weight_names else True

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if self.weight_names:  # (a layer without weights has nothing to freeze, as in Keras)
            self._model.set_trainable(self.name, bool(value))


class LayersMixin:
    @property
    def weights(self) -> list[np.ndarray]:
        """Copies of all weights (Keras's model.weights, as arrays; get_weights' order)."""
        return self.get_weights()

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        trainable = [p["trainable"] for p in self.manifest["parameters"]]
        return [w for w, t in zip(self.get_weights(), trainable) if t]

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        trainable = [p["trainable"] for p in self.manifest["parameters"]]
        return [w for w, t in zip(self.get_weights(), trainable) if not t]

    @property
    def layers(self) -> list[Layer]:
        """The model's layers in Keras's order: a Sequential stack's in source order, a functional
        model's by depth as Keras lists them (inputs not counted, unlike Keras's InputLayer)."""
        return [Layer(self, entry) for entry in self.manifest["layers"]]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by name, or by position in ``layers`` (as Keras)."""
        layers = self.layers
        if index is not None and (isinstance(index, bool) or not isinstance(index, (int, np.integer))):
            raise ValueError(f"get_layer: index must be an integer, got {index!r}")
        if name is None and index is None:
            raise ValueError("get_layer: give a layer's name or its index")
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index {index} is out of range for {len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        for entry in self.manifest.get("inner_layers", []):  # ("block/name": inside a block or called model)
            if entry["name"] == name:
                return Layer(self, entry)
        names = [layer.name for layer in layers]
        hint = did_you_mean(name, names) if isinstance(name, str) else None
        raise ValueError(f"get_layer: no layer named {name!r}" + (f" ({hint})" if hint else "")
                         + f"; layers: {', '.join(names)}")
