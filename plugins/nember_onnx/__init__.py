"""The ONNX model family: models trained elsewhere, served through ONNX Runtime.

Nember never trains these: a trader converts a model (skl2onnx, onnxmltools, torch.onnx...)
and imports the file with ``nember models import``. The file is stored as it came and checked
each time it is loaded: nothing in it may read a file of the server (tensors with external
data) or need code beyond ONNX Runtime's standard operators (custom-domain ops and functions,
which would need a library loaded). Each session runs on one thread: one core per server
process, as every family.

The model's one input is a float tensor of rows of W x F values (the W data points oldest
first, each point's features in order); a ``class`` model outputs class probabilities (a
float tensor, one column per class index, or one column: the positive class's) or class
indices (an integer tensor); a ``reg`` model one float per row.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import attrs
import numpy as np

from nember_core.plugin_api import (
    InvalidData,
    ModelFileRejected,
    Param,
    Predictor,
    class_probabilities,
    hookimpl,
)

# The operator sets ONNX Runtime implements itself; anything else needs a library loaded.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
ZIPMAP_HINT = ("convert it with the ZipMap disabled (skl2onnx: options={'zipmap': False}) so "
               "that the probabilities are a float tensor")


@attrs.frozen
class OnnxModel:
    """A checked ONNX file, its session and what the predictors need to know of it."""

    data: bytes = attrs.field(repr=False)  # the file as imported: what ``dumps`` stores
    session: Any = attrs.field(repr=False)
    input_name: str
    width: int | None  # values per row, when the file fixes it
    batch: int | None  # rows per call, when the file fixes it (1: one row at a time)
    scores: str | None  # the float output: class probabilities, or a reg model's value
    indices: str | None  # an integer output: class indices


@attrs.frozen
class OnnxFamily:
    name: str = "ONNX"
    parameters: dict[str, Param] = attrs.field(factory=dict, repr=False)  # nothing to tune
    library_version: str = attrs.field(factory=lambda: f"onnxruntime {version('onnxruntime')}")
    trainable: bool = False  # imported with `nember models import`, never fitted here

    def fit(self, X: np.ndarray, y: np.ndarray, model_type: str, params: dict[str, Any]):
        raise InvalidData("ONNX models are imported with `nember models import`, not trained")

    def dumps(self, model: OnnxModel) -> bytes:
        return model.data

    def loads(self, data: bytes, model_type: str) -> OnnxModel:
        proto = _parse(data)
        _refuse_unsafe(proto)
        name = _check(proto)
        return _describe(data, _session(data), model_type, name)

    def predictor(self, model: OnnxModel, model_type: str) -> Predictor:
        if model_type == "reg":
            return _reg_predictor(model)
        return _class_predictor(model)

    def predict(self, model: OnnxModel, model_type: str, X: np.ndarray):
        if model.width is not None and X.shape[1] != model.width:
            raise ValueError(f"the model expects {model.width} inputs per row, not "
                             f"{X.shape[1]}")
        return self.predictor(model, model_type).many(X)

    def warm_up(self) -> None:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401


def _parse(data: bytes):
    import onnx
    from google.protobuf.message import DecodeError

    if data[:1] == b"\x80":  # a pickle's protocol header (joblib writes them too)
        raise ModelFileRejected("a Python pickle, not an ONNX model: pickle files can run code "
                                "when loaded; export the model to ONNX instead")
    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ModelFileRejected("not an ONNX model: the bytes don't read as one") from None
    if not proto.HasField("graph"):  # protobuf reads many byte strings as an empty message
        raise ModelFileRejected("not an ONNX model: it has no graph")
    return proto


def _refuse_unsafe(proto) -> None:
    """Nothing that reads a file of the server or needs a library beyond ONNX Runtime."""
    for function in proto.functions:
        if function.domain not in STANDARD_DOMAINS:
            raise ModelFileRejected(f"the model defines the function {function.name!r} in the "
                                    f"custom domain {function.domain!r}: only standard "
                                    "operators are served")
        for node in function.node:
            _check_node(node)
    for tensor in _tensors(proto.graph):
        if _external(tensor):
            raise ModelFileRejected(f"the tensor {tensor.name!r} keeps its data in an external "
                                    "file: save the model with all its data in the one file")
    for node in _nodes(proto.graph):
        _check_node(node)


def _check_node(node) -> None:
    if node.domain not in STANDARD_DOMAINS:
        raise ModelFileRejected(f"the node {node.name or node.op_type!r} uses the operator "
                                f"{node.op_type!r} of the custom domain {node.domain!r}: only "
                                "standard ONNX operators are served (custom ones would need a "
                                "library loaded)")
    for attribute in node.attribute:  # a tensor attribute with external data, anywhere
        for tensor in _attribute_tensors(attribute):
            if _external(tensor):
                raise ModelFileRejected(f"a tensor of the node {node.name or node.op_type!r} "
                                        "keeps its data in an external file")


def _graphs(graph):
    """The graph and every subgraph in its nodes' attributes (If, Loop...), at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in _subgraphs(attribute):
                yield from _graphs(sub)


def _subgraphs(attribute):
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs


def _nodes(graph):
    for each in _graphs(graph):
        yield from each.node


def _tensors(graph):
    """The initializers (dense and sparse) of the graph and its subgraphs."""
    for each in _graphs(graph):
        yield from each.initializer
        for sparse in each.sparse_initializer:
            yield sparse.values
            yield sparse.indices


def _attribute_tensors(attribute):
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("sparse_tensor"):
        yield attribute.sparse_tensor.values
        yield attribute.sparse_tensor.indices
    for sparse in attribute.sparse_tensors:
        yield sparse.values
        yield sparse.indices


def _external(tensor) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _check(proto) -> str:
    """One float input of rows (its name is returned), and whatever the ONNX checker finds
    wrong."""
    import onnx

    constants = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise ModelFileRejected(f"the model has {len(inputs)} inputs "
                                f"({', '.join(repr(i.name) for i in inputs)}): it must have one, "
                                "a float tensor of rows")
    kind = inputs[0].type
    if (kind.WhichOneof("value") != "tensor_type"
            or kind.tensor_type.elem_type != onnx.TensorProto.FLOAT):
        found = (onnx.TensorProto.DataType.Name(kind.tensor_type.elem_type).lower()
                 if kind.WhichOneof("value") == "tensor_type" else kind.WhichOneof("value"))
        raise ModelFileRejected(f"the model's input {inputs[0].name!r} must be a float (float32) "
                                f"tensor, not {found}")
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelFileRejected(f"not a valid ONNX model: {_line(exc)}") from None
    return inputs[0].name


def _session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one core per server process
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach the user as ours
    try:
        return onnxruntime.InferenceSession(data, sess_options=options,
                                            providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own errors have no common public base class
        raise ModelFileRejected(f"ONNX Runtime cannot run the model: {_line(exc)}") from None


def _describe(data: bytes, session, model_type: str, name: str) -> OnnxModel:
    # Older files list their initializers as inputs too; the rows are the one that isn't.
    given = next(i for i in session.get_inputs() if i.name == name)
    shape = list(given.shape or [])
    if len(shape) != 2:
        raise ModelFileRejected(f"the model's input {given.name!r} has the shape {shape}: it "
                                "must be rows x values (2 dimensions)")
    outputs = session.get_outputs()
    maps = [o.name for o in outputs if not o.type.startswith("tensor(")]
    if maps:
        raise ModelFileRejected(f"the model's output {maps[0]!r} is a list of maps (a ZipMap): "
                                f"{ZIPMAP_HINT}")
    floats = [o.name for o in outputs if o.type in ("tensor(float)", "tensor(double)")]
    integers = [o.name for o in outputs if o.type.startswith("tensor(int")
                or o.type.startswith("tensor(uint")]
    scores = _pick_scores(floats)
    if model_type == "reg" and scores is None:
        raise ModelFileRejected("a reg model must output a float tensor (one value per row); "
                                f"this one outputs {_types(outputs)}")
    if model_type == "class" and scores is None and not integers:
        raise ModelFileRejected("a class model must output class probabilities (a float "
                                "tensor) or class indices (an integer tensor); this one "
                                f"outputs {_types(outputs)}")
    return OnnxModel(data=data, session=session, input_name=given.name,
                     width=_fixed(shape[1]), batch=_fixed(shape[0]), scores=scores,
                     indices=integers[0] if integers else None)


def _pick_scores(floats: list[str]) -> str | None:
    """The float output to read: the probabilities when a converter named them so (skl2onnx:
    ``probabilities``), else the last one."""
    if not floats:
        return None
    named = [name for name in floats if "prob" in name.lower()]
    return (named or floats)[-1]


def _fixed(dimension) -> int | None:
    return dimension if isinstance(dimension, int) and dimension > 0 else None


def _types(outputs) -> str:
    return ", ".join(f"{o.name!r} ({o.type})" for o in outputs) or "nothing"


def _runner(model: OnnxModel, output: str):
    """``rows -> the output for them``: float32 rows, as the model's input requires; one row
    at a time when the file fixes a batch of one."""
    run, name, outputs = model.session.run, model.input_name, [output]
    float32 = np.float32

    def one(row: np.ndarray) -> np.ndarray:
        return run(outputs, {name: row.astype(float32)})[0]

    if model.batch is None:
        return one, one

    def many(rows: np.ndarray) -> np.ndarray:
        step = model.batch
        return np.concatenate([one(rows[i:i + step]) for i in range(0, len(rows), step)])

    return one, many


def _reg_predictor(model: OnnxModel) -> Predictor:
    one, many = _runner(model, model.scores)
    return Predictor(lambda row: float(one(row).reshape(-1)[0]),
                     lambda rows: _one_each(many(rows), len(rows)).astype(np.float64))


def _class_predictor(model: OnnxModel) -> Predictor:
    if model.scores is None:  # class indices only: no probabilities to offer
        one, many = _runner(model, model.indices)
        return Predictor(lambda row: int(one(row).reshape(-1)[0]),
                         lambda rows: _one_each(many(rows), len(rows)).astype(np.intp))
    one, many = _runner(model, model.scores)

    def index(row: np.ndarray) -> int:
        scores = one(row).reshape(-1)
        if scores.size == 1:  # the positive class's probability
            return int(scores[0] > 0.5)
        return int(scores.argmax())

    def indices(rows: np.ndarray) -> np.ndarray:
        scores = many(rows).reshape(len(rows), -1)
        if scores.shape[1] == 1:
            return (scores[:, 0] > 0.5).astype(np.intp)
        return scores.argmax(axis=1)

    return Predictor(index, indices, proba=lambda row: class_probabilities(one(row)))


def _one_each(values: np.ndarray, rows: int) -> np.ndarray:
    """A reg value or a class index per row: an output with more per row is not one."""
    if values.size != rows:
        raise ValueError(f"the model gives {values.size} values for {rows} "
                         f"{'row' if rows == 1 else 'rows'}, not one a row")
    return values.reshape(rows)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@hookimpl
def nember_model_families():
    try:
        version("onnxruntime")
        version("onnx")
    except PackageNotFoundError:  # the optional extra is not installed
        return []
    return [OnnxFamily()]
