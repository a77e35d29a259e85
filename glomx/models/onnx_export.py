"""Write a bag's inference export (:mod:`glomx.models.exported`): its Keras fold networks
converted by tf2onnx and joined into one ONNX graph whose output is their mean.

Joining, not one graph per fold: folds with the same input (size, channels, stain) share one
graph input, and weights equal across folds are stored once and read by every fold that has
them, and an operation repeated on the same values is kept once, so a frozen backbone the
folds share (the probe's) is computed once instead of once per fold.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import TensorProto, helper, numpy_helper

from glomx.models import load_classifier
from glomx.models.base import Predictor
from glomx.models.exported import EXPORT_FILE, OUTPUT, ExportSpec, InputSpec
from glomx.models.keras_common import KerasClassifier
from glomx.processes import die_with_parent

OPSET = 17
log = logging.getLogger(__name__)


def network(clf: KerasClassifier) -> onnx.ModelProto:
    """One fitted Keras network as ONNX: one input, ``(N, size, size, channels)`` float32
    images as :meth:`~KerasClassifier.model_input` gives them, one ``(N, 1)`` output."""
    size, channels = clf.meta.size, clf.meta.channels
    spec = tf.TensorSpec((None, size, size, channels), tf.float32, name="image")
    model = clf.keras_model
    fn = tf.function(lambda images: model(images, training=False))
    graph = fn.get_concrete_function(spec).graph
    # constants a layer captured (Normalization's mean and variance) are not variables, and
    # tf2onnx makes them graph inputs: give them back their values, as initializers
    captured = {
        inner.name: np.asarray(outer.numpy())
        for outer, inner in graph.captures
        if outer.dtype != tf.resource
    }
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=OPSET)
    for value in list(proto.graph.input):
        if value.name in captured:
            weight = numpy_helper.from_array(captured[value.name], value.name)
            proto.graph.initializer.append(weight)
            proto.graph.input.remove(value)
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ValueError(f"{clf.family}: tf2onnx gave {len(proto.graph.input)} inputs")
    _sequential_means(proto)
    return proto


def _shapes(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every value's shape as far as ONNX's inference knows it (None: a dimension it cannot
    tell, such as the batch)."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in [*inferred.input, *inferred.value_info]}
    return {
        name: [d.dim_value if d.HasField("dim_value") else None for d in shape]
        for name, shape in dims.items()
    }


def _sequential_means(proto: onnx.ModelProto) -> None:
    """Average over an image's pixels the way TensorFlow does: one float32 sum, pixel after
    pixel, then one division. ONNX Runtime's ``ReduceMean`` adds in another order, and the
    CNN's per-image standard deviation (a mean of 16,384 squares up to 65,025) then differs
    in its fifth digit, enough to move a fold's probability by 3e-4; a ``CumSum`` (sequential
    in ONNX Runtime) keeps it within float32 rounding of Keras's."""
    shapes, graph, nodes = _shapes(proto), proto.graph, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0], []) if node.op_type == "ReduceMean" else []
        if len(shape) != 4 or None in shape[1:] or list(attrs.get("axes", [])) != [1, 2]:
            nodes.append(node)
            continue
        height, width, channels = (int(d or 0) for d in shape[1:])
        pixels, out = height * width, node.output[0]
        keep = [0, 1, 1, channels] if attrs.get("keepdims", 1) else [0, channels]
        constants: dict[str, np.ndarray] = {
            "flat": np.array([0, pixels, channels], np.int64),
            "axis": np.array(1, np.int64),  # CumSum's (a scalar)
            "axes": np.array([1], np.int64),  # Slice's (a list)
            "last": np.array([pixels - 1], np.int64),
            "end": np.array([pixels], np.int64),
            "pixels": np.array(pixels, np.float32),
            "shape": np.array(keep, np.int64),
        }
        c = {k: f"{out}__{k}" for k in constants}
        graph.initializer.extend(numpy_helper.from_array(v, c[k]) for k, v in constants.items())
        nodes += [
            helper.make_node("Reshape", [node.input[0], c["flat"]], [f"{out}__pixels_x"]),
            helper.make_node("CumSum", [f"{out}__pixels_x", c["axis"]], [f"{out}__sums"]),
            helper.make_node(
                "Slice", [f"{out}__sums", c["last"], c["end"], c["axes"]], [f"{out}__sum"]
            ),
            helper.make_node("Div", [f"{out}__sum", c["pixels"]], [f"{out}__mean"]),
            helper.make_node("Reshape", [f"{out}__mean", c["shape"]], [out]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)


def _redirect(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Point every node input named a key of ``renames`` at its value."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)


def _shared_weights(graph: onnx.GraphProto) -> int:
    """Keep one of each set of equal initializers and point their readers at it; returns the
    bytes saved."""
    first: dict[bytes, str] = {}
    renames: dict[str, str] = {}
    kept, saved = [], 0
    for init in graph.initializer:
        value = numpy_helper.to_array(init)
        key = hashlib.sha256(f"{init.data_type}{value.shape}".encode() + value.tobytes()).digest()
        if key in first:
            renames[init.name] = first[key]
            saved += value.nbytes
        else:
            first[key] = init.name
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _redirect(graph, renames)
    return saved


def _merged_equal_nodes(graph: onnx.GraphProto) -> int:
    """Drop every node that repeats an earlier one (same operation, same inputs, same
    attributes) and point its readers at the earlier one's outputs: with weights stored once,
    this computes a backbone that folds share once. Returns the nodes dropped."""
    seen: dict[str, list[str]] = {}
    renames: dict[str, str] = {}
    kept = []
    for node in graph.node:  # in topological order, as tf2onnx writes them
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        attributes = sorted((a.name, a.SerializeToString()) for a in node.attribute)
        key = repr((node.domain, node.op_type, list(node.input), attributes))
        if key in seen:
            renames.update(zip(node.output, seen[key], strict=True))
        else:
            seen[key] = list(node.output)
            kept.append(node)
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    return dropped


def mean_graph(
    networks: Mapping[str, tuple[onnx.ModelProto, InputSpec]],
) -> tuple[onnx.ModelProto, list[InputSpec]]:
    """The networks (member name → its graph and its input) as one graph with one input per
    distinct input and output :data:`OUTPUT`, the mean of theirs."""
    inputs: dict[str, InputSpec] = {}
    nodes, weights, outputs = [], [], []
    opsets: dict[str, int] = {}
    for i, (member, (proto, spec)) in enumerate(networks.items()):
        prefixed = onnx.compose.add_prefix(proto, f"n{i}_")
        graph = prefixed.graph
        name = inputs.setdefault(spec.key(), replace(spec, name=f"input_{len(inputs)}"))
        _redirect(graph, {graph.input[0].name: name.name})
        nodes += list(graph.node)
        weights += list(graph.initializer)
        outputs.append(graph.output[0].name)
        for opset in prefixed.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        log.debug("export: %s → input %s", member, name.name)
    nodes.append(helper.make_node("Mean", outputs, [OUTPUT], name="mean_of_networks"))
    graph_inputs = [
        helper.make_tensor_value_info(s.name, TensorProto.FLOAT, ["N", s.size, s.size, s.channels])
        for s in inputs.values()
    ]
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])
    joined = helper.make_graph(nodes, "glomx_mean", graph_inputs, [output], weights)
    saved = _shared_weights(joined)
    dropped = _merged_equal_nodes(joined)
    log.info(
        "export: %d networks, %d inputs; %.0f MiB of weights and %d operations they share "
        "are stored and computed once", len(networks), len(inputs), saved / 2**20, dropped,
    )  # fmt: skip
    model = helper.make_model(
        joined, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())]
    )
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    onnx.checker.check_model(model)
    return model, list(inputs.values())


def export_mean(members: Mapping[str, Predictor], tags: dict[str, str], directory: Path) -> bool:
    """Write ``directory``'s export for the mean of ``members``, its fold models, already saved
    in its subfolders of their names; False, and nothing written, when a member is no Keras
    network (a logistic-regression bag predicts natively, fast already).

    Each fold network is converted in a fresh process of its own, from its saved folder:
    tf2onnx takes about 60 times a network's weights while it converts (5.6 GiB for one
    ResNet-50) and hands little of it back, so three folds converted in one process peaked at
    8.3 GiB, and a test worker that converted several at 13.9 GiB."""
    keras = {name: m for name, m in members.items() if isinstance(m, KerasClassifier)}
    if len(keras) != len(members):
        return False
    networks = {
        name: (
            _converted_apart(directory / name),
            InputSpec("image", m.meta.size, m.meta.channels, m.record.stain),
        )
        for name, m in keras.items()
    }
    model, inputs = mean_graph(networks)
    onnx.save(model, str(directory / EXPORT_FILE))
    ExportSpec(inputs, list(members), tags).save(directory)
    return True


def _converted_apart(folder: Path) -> onnx.ModelProto:
    """:func:`network` of the Keras model saved in ``folder``, converted by a fresh Python
    process (``python -m glomx.models.onnx_export``: a command, so it works from any script,
    which a multiprocessing worker would re-import), that dies with this one."""
    with tempfile.TemporaryDirectory(prefix="glomx-onnx-") as tmp:
        out = Path(tmp) / EXPORT_FILE
        command = [sys.executable, "-m", __name__, str(folder), str(out), str(os.getpid())]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"converting the network in {folder} to ONNX failed (exit status "
                f"{done.returncode}): {done.stderr.strip()[-3000:]}"
            )
        return onnx.load(str(out))


def main(argv: list[str]) -> None:
    """``FOLDER OUT PARENT_PID``: write the Keras model saved in FOLDER as ONNX to OUT."""
    folder, out, parent = argv
    die_with_parent(int(parent))
    clf = load_classifier(Path(folder))
    if not isinstance(clf, KerasClassifier):
        raise SystemExit(f"{folder} holds no Keras network but a {type(clf).__name__}")
    onnx.save(network(clf), out)


if __name__ == "__main__":
    main(sys.argv[1:])
