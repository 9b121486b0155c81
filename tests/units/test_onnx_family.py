"""The ONNX family: converted scikit-learn models answer as scikit-learn does, through every
path a server uses; files that could read the server's files or need code beyond ONNX Runtime
are refused with one clear reason."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

# The onnx extra is optional (tox -e minimal runs without it).
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nember_onnx import OnnxFamily
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from nember_core.errors import InvalidData, ModelFileRejected
from nember_core.plugins import installed_families
from nember_core.testing import FamilyContract

FAMILY = OnnxFamily()
# Opset 17's IR version: older ONNX Runtimes (Python 3.10's) refuse the newest.
IR_VERSION = 8
LABELS = np.array(["down", "flat", "up"])


def _data(seed: int = 3, rows: int = 300, width: int = 6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, width))
    signal = X @ np.linspace(1.0, -0.5, width) + rng.normal(0, 0.3, rows)
    return X, signal


def _converted(estimator, width: int) -> bytes:
    """As a trader converts a model: float32 rows, the ZipMap off for classifiers."""
    sample = np.zeros((1, width), dtype=np.float32)
    options = {"zipmap": False} if hasattr(estimator, "classes_") else None
    return to_onnx(estimator, sample, options=options).SerializeToString()


def _one_by_one(path, X):
    return np.array([path(X[i : i + 1]) for i in range(len(X))])


CLASSIFIERS = {
    "tree": lambda: DecisionTreeClassifier(max_depth=5, random_state=0),
    "logistic": lambda: LogisticRegression(max_iter=1000),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_converted_classifier_answers_as_scikit_learn(name):
    X, signal = _data()
    y = LABELS[np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3]))]  # labels, not indices
    estimator = CLASSIFIERS[name]().fit(X, y)
    model = FAMILY.loads(_converted(estimator, X.shape[1]), "class")
    predictor = FAMILY.predictor(model, "class")
    test = _data(seed=4, rows=200)[0]

    expected = estimator.predict(test)  # labels: the class index maps through classes_
    assert list(estimator.classes_[_one_by_one(predictor.one, test)]) == list(expected)
    assert list(estimator.classes_[predictor.many(test)]) == list(expected)
    assert list(estimator.classes_[FAMILY.predict(model, "class", test)]) == list(expected)
    probabilities = _one_by_one(predictor.proba, test)
    np.testing.assert_allclose(probabilities, estimator.predict_proba(test), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert type(predictor.one(test[:1])) is int  # an index, as meta.classes expects


@pytest.mark.parametrize("estimator", [LinearRegression(),
                                       DecisionTreeRegressor(max_depth=6, random_state=0)],
                         ids=["linear", "tree"])
def test_a_converted_regressor_answers_as_scikit_learn(estimator):
    X, signal = _data()
    estimator.fit(X, signal)
    model = FAMILY.loads(_converted(estimator, X.shape[1]), "reg")
    predictor = FAMILY.predictor(model, "reg")
    test = _data(seed=4, rows=200)[0]
    expected = estimator.predict(test)
    np.testing.assert_allclose(_one_by_one(predictor.one, test), expected, atol=1e-4)
    np.testing.assert_allclose(predictor.many(test), expected, atol=1e-4)
    np.testing.assert_allclose(FAMILY.predict(model, "reg", test), expected, atol=1e-4)
    assert predictor.proba is None
    assert type(predictor.one(test[:1])) is float


def test_the_file_is_stored_as_it_came():
    X, signal = _data()
    data = _converted(LinearRegression().fit(X, signal), X.shape[1])
    assert FAMILY.dumps(FAMILY.loads(data, "reg")) == data


def test_a_rows_width_the_file_fixes_is_checked_by_predict():
    X, signal = _data()
    model = FAMILY.loads(_converted(LinearRegression().fit(X, signal), 6), "reg")
    with pytest.raises(ValueError, match="^the model expects 6 inputs per row, not 5$"):
        FAMILY.predict(model, "reg", np.zeros((1, 5)))


# --- graphs written by hand: outputs other converters make --------------------------------

def _graph(nodes, outputs, inputs=None, initializers=(), opsets=None, functions=()):
    inputs = inputs or [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, functions=list(functions), ir_version=IR_VERSION,
                              opset_imports=opsets or [helper.make_opsetid("", 17)])
    return model.SerializeToString()


WEIGHTS = helper.make_tensor("W", TensorProto.FLOAT, [2, 1], [2.0, -1.0])


def _sigmoid_model() -> bytes:
    """A binary classifier ending with a sigmoid: one column, the positive class's chance."""
    return _graph([helper.make_node("MatMul", ["X", "W"], ["z"]),
                   helper.make_node("Sigmoid", ["z"], ["p"])],
                  [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 1])],
                  initializers=[WEIGHTS])


def test_one_probability_column_is_the_positive_class():
    model = FAMILY.loads(_sigmoid_model(), "class")
    predictor = FAMILY.predictor(model, "class")
    rows = np.array([[1.0, 0.0], [-1.0, 0.0], [0.25, 3.0]])
    chance = 1 / (1 + np.exp(-(rows @ [2.0, -1.0])))
    assert list(_one_by_one(predictor.one, rows)) == [1, 0, 0]
    assert list(predictor.many(rows)) == [1, 0, 0]
    np.testing.assert_allclose(_one_by_one(predictor.proba, rows),
                               np.column_stack([1 - chance, chance]), atol=1e-6)


def test_class_indices_alone_answer_without_probabilities():
    data = _graph([helper.make_node("ArgMax", ["X"], ["index"], axis=1, keepdims=0)],
                  [helper.make_tensor_value_info("index", TensorProto.INT64, [None])])
    model = FAMILY.loads(data, "class")
    predictor = FAMILY.predictor(model, "class")
    rows = np.array([[0.0, 1.0], [5.0, 1.0]])
    assert [predictor.one(rows[:1]), predictor.one(rows[1:])] == [1, 0]
    assert list(FAMILY.predict(model, "class", rows)) == [1, 0]
    assert predictor.proba is None


def test_a_file_fixing_a_batch_of_one_row_answers_batches_row_by_row():
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])]
    data = _graph([helper.make_node("MatMul", ["X", "W"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                  inputs=inputs, initializers=[WEIGHTS])
    model = FAMILY.loads(data, "reg")
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(FAMILY.predict(model, "reg", rows), [2.0, -1.0, 2.0])


def test_a_reg_model_giving_several_values_a_row_is_refused_by_predict():
    weights = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    data = _graph([helper.make_node("MatMul", ["X", "W"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                  initializers=[weights])
    model = FAMILY.loads(data, "reg")
    with pytest.raises(ValueError, match="gives 4 values for 2 rows, not one a row"):
        FAMILY.predict(model, "reg", np.zeros((2, 2)))


# --- what is refused ----------------------------------------------------------------------

def _external_weights() -> bytes:
    weights = helper.make_tensor("W", TensorProto.FLOAT, [2, 1], [2.0, -1.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value="../../etc/passwd")
    return _graph([helper.make_node("MatMul", ["X", "W"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                  initializers=[weights])


def _external_constant() -> bytes:
    """External data hidden in a Constant node's attribute, not in the initializers."""
    value = helper.make_tensor("c", TensorProto.FLOAT, [2, 1], [1.0, 1.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="secrets.bin")
    return _graph([helper.make_node("Constant", [], ["W"], value=value),
                   helper.make_node("MatMul", ["X", "W"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])


def _custom_op() -> bytes:
    return _graph([helper.make_node("RunShell", ["X"], ["y"], domain="com.example.evil")],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                  opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.evil", 1)])


def _custom_function() -> bytes:
    body = helper.make_function("com.example", "Double", ["a"], ["b"],
                                [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_opsetid("", 17)])
    return _graph([helper.make_node("Double", ["X"], ["y"], domain="com.example")],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                  opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
                  functions=[body])


def _custom_op_in_a_branch() -> bytes:
    """A custom op inside an If's branch: subgraphs are searched too."""
    def branch(name, node):
        return helper.make_graph([node], name, [], [
            helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [None, 2])])

    then = branch("then", helper.make_node("RunShell", ["X"], ["then_out"], domain="evil"))
    other = branch("else", helper.make_node("Identity", ["X"], ["else_out"]))
    condition = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return _graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                  initializers=[condition],
                  opsets=[helper.make_opsetid("", 17), helper.make_opsetid("evil", 1)])


def _two_inputs() -> bytes:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 2])
              for name in ("prices", "volumes")]
    return _graph([helper.make_node("Add", ["prices", "volumes"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                  inputs=inputs)


def _double_input() -> bytes:
    inputs = [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 2])]
    return _graph([helper.make_node("Identity", ["X"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 2])],
                  inputs=inputs)


def _zipmap() -> bytes:
    X, signal = _data()
    estimator = LogisticRegression().fit(X, signal > 0)
    sample = np.zeros((1, X.shape[1]), dtype=np.float32)
    return to_onnx(estimator, sample).SerializeToString()  # skl2onnx's default: a ZipMap


def _dangling() -> bytes:
    """A node reading a value nothing defines: the ONNX checker's to refuse."""
    return _graph([helper.make_node("Add", ["X", "nowhere"], ["y"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])


def _strings_only() -> bytes:
    labels = helper.make_tensor_value_info("label", TensorProto.STRING, [None])
    node = helper.make_node("LinearClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
                            coefficients=[1.0, -1.0, -1.0, 1.0], intercepts=[0.0, 0.0],
                            classlabels_strings=["a", "b"])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [None, 2])], [labels, scores])
    model = helper.make_model(graph, ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("ai.onnx.ml", 1)])
    del model.graph.output[1]  # only the string labels left
    return model.SerializeToString()


REFUSED = {
    "external data": (_external_weights, "class",
                      "the tensor 'W' keeps its data in an external file"),
    "external data in a node": (_external_constant, "reg",
                                "keeps its data in an external file"),
    "a custom op": (_custom_op, "reg", "uses the operator 'RunShell' of the custom domain "
                                       "'com.example.evil': only standard ONNX operators"),
    "a custom function": (_custom_function, "reg",
                          "defines the function 'Double' in the custom domain 'com.example'"),
    "a custom op in a branch": (_custom_op_in_a_branch, "reg",
                                "the operator 'RunShell' of the custom domain 'evil'"),
    "two inputs": (_two_inputs, "reg",
                   "the model has 2 inputs ('prices', 'volumes'): it must have one"),
    "a double input": (_double_input, "reg",
                       "the model's input 'X' must be a float (float32) tensor, not double"),
    "a ZipMap": (_zipmap, "class", "is a list of maps (a ZipMap): convert it with the ZipMap "
                                   "disabled (skl2onnx: options={'zipmap': False})"),
    "a dangling input": (_dangling, "reg", "not a valid ONNX model: "),
    "string labels only": (_strings_only, "class",
                           "a class model must output class probabilities (a float tensor) "
                           "or class indices (an integer tensor)"),
    "junk": (lambda: b"this is not a model, just some words", "class",
             "not an ONNX model"),
    "nothing": (lambda: b"", "class", "not an ONNX model: it has no graph"),
    "a pickle": (lambda: pickle.dumps({"model": [1, 2, 3]}), "class",
                 "a Python pickle, not an ONNX model: pickle files can run code when loaded"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsafe_or_unservable_files_are_refused_with_the_reason(name):
    make, model_type, reason = REFUSED[name]
    with pytest.raises(ModelFileRejected) as refused:
        FAMILY.loads(make(), model_type)
    message = str(refused.value)
    assert reason in message
    assert "\n" not in message


def test_external_data_is_refused_before_anything_reads_it(tmp_path, monkeypatch):
    """The checker and ONNX Runtime resolve external data against a folder; the family
    refuses the file before either is asked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secrets.bin").write_bytes(np.ones(2, dtype=np.float32).tobytes())
    calls = []
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelFileRejected):
        FAMILY.loads(_external_constant(), "reg")
    assert calls == []


def test_the_family_is_installed_and_never_trained():
    family = installed_families()["ONNX"]
    assert family.trainable is False and dict(family.parameters) == {}
    assert family.library_version.startswith("onnxruntime ")
    with pytest.raises(InvalidData, match="imported with `nember models import`, not trained"):
        family.fit(np.zeros((4, 2)), np.zeros(4), "class", {})


class TestTheFamilyContract(FamilyContract):
    """The testing kit's contract, with models made as a trader makes them: scikit-learn
    models converted by skl2onnx, loaded from their bytes."""

    family = FAMILY

    def make_model(self, family, X, y, model_type):
        estimator = (LogisticRegression(max_iter=1000) if model_type == "class"
                     else LinearRegression()).fit(X, y)
        return family.loads(_converted(estimator, X.shape[1]), model_type)
