/* A request's DataPoints, read straight into compiled trees: their per-output sums in one call.
 *
 * The hot path's FeatureExtractor.values() and NativeTrees.sums() do this in Python: walk the
 * points, check each value, pack them with struct, zero the output, call TL2cgen's predict()
 * through ctypes and read the sums back. Here ``Reader(...).sums(points)`` does it all in C,
 * for the common case only: whatever isn't plainly right (a wrong count of points or
 * features, a missing name, a value that isn't a float or an int, an int beyond a double, a
 * value beyond float32 where rows are rounded to it) answers None, and the caller takes the
 * Python path, whose checks word the error. So the two paths answer every request alike.
 *
 * Built by nember_core/trees/reader.py with the machine's gcc against this Python's headers,
 * and loaded as the extension module _nember_reader. Not thread-safe (its row and sums
 * buffers are its own): one event loop calls it, as with NativeTrees.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <string.h>

/* TL2cgen's predict(union Entry *data, int pred_margin, double *result); an Entry is 8 bytes,
 * a double's, so the row is an array of doubles. */
typedef void (*predict_fn)(void *data, int pred_margin, double *result);

typedef struct {
    PyObject_HEAD
    predict_fn predict;
    PyObject *features;  /* tuple of str: one point's names in the trained order */
    PyObject *library;   /* the loaded library predict() lives in: kept loaded */
    Py_ssize_t width, window, outputs;
    int float32;         /* round each value to float32 first, as the library reads it */
    double *row, *sums;
} Reader;

static int
reader_init(Reader *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"predict", "features", "window", "outputs", "float32", "library",
                            NULL};
    unsigned long long address;
    PyObject *features, *library;
    Py_ssize_t window, outputs;
    int float32;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KO!nnpO", names, &address, &PyTuple_Type,
                                     &features, &window, &outputs, &float32, &library))
        return -1;
    Py_ssize_t width = PyTuple_GET_SIZE(features);
    if (address == 0 || width < 1 || window < 1 || outputs < 1 || width > PY_SSIZE_T_MAX / window) {
        PyErr_SetString(PyExc_ValueError, "Reader: a null predict or an empty shape");
        return -1;
    }
    for (Py_ssize_t j = 0; j < width; j++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(features, j))) {
            PyErr_SetString(PyExc_TypeError, "Reader: feature names must be str");
            return -1;
        }
    }
    double *row = PyMem_Calloc((size_t)(width * window), sizeof(double));
    double *sums = PyMem_Calloc((size_t)outputs, sizeof(double));
    if (row == NULL || sums == NULL) {
        PyMem_Free(row);
        PyMem_Free(sums);
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->row);
    PyMem_Free(self->sums);
    Py_INCREF(features);
    Py_INCREF(library);
    Py_XSETREF(self->features, features);
    Py_XSETREF(self->library, library);
    self->predict = (predict_fn)(uintptr_t)address;
    self->width = width;
    self->window = window;
    self->outputs = outputs;
    self->float32 = float32;
    self->row = row;
    self->sums = sums;
    return 0;
}

static void
reader_dealloc(Reader *self)
{
    Py_XDECREF(self->features);
    Py_XDECREF(self->library);
    PyMem_Free(self->row);
    PyMem_Free(self->sums);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One value as the library reads it; 0 when it isn't plainly a number in range. */
static int
read_value(PyObject *value, int float32, double *out)
{
    double x;
    if (PyFloat_CheckExact(value)) {
        x = PyFloat_AS_DOUBLE(value);
    } else if (PyLong_CheckExact(value)) {  /* exact: a bool is not a number here */
        x = PyLong_AsDouble(value);
        if (x == -1.0 && PyErr_Occurred()) {  /* beyond a double */
            PyErr_Clear();
            return 0;
        }
    } else {
        return 0;
    }
    if (float32) {
        if (x > FLT_MAX || x < -FLT_MAX)  /* no float32 holds it: the Python path decides */
            return 0;
        x = (double)(float)x;
    }
    *out = x;
    return 1;
}

static PyObject *
reader_sums(Reader *self, PyObject *points)
{
    if (!PyList_CheckExact(points) || PyList_GET_SIZE(points) != self->window)
        Py_RETURN_NONE;
    double *out = self->row;
    for (Py_ssize_t i = 0; i < self->window; i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        if (!PyDict_CheckExact(point) || PyDict_GET_SIZE(point) != self->width)
            Py_RETURN_NONE;
        for (Py_ssize_t j = 0; j < self->width; j++) {
            PyObject *value = PyDict_GetItemWithError(point, PyTuple_GET_ITEM(self->features, j));
            if (value == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                Py_RETURN_NONE;
            }
            if (!read_value(value, self->float32, out++))
                Py_RETURN_NONE;
        }
    }
    memset(self->sums, 0, (size_t)self->outputs * sizeof(double));
    self->predict(self->row, 1, self->sums);  /* 1: the raw sums, no post-processing */
    PyObject *sums = PyList_New(self->outputs);
    if (sums == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < self->outputs; k++) {
        PyObject *sum = PyFloat_FromDouble(self->sums[k]);
        if (sum == NULL) {
            Py_DECREF(sums);
            return NULL;
        }
        PyList_SET_ITEM(sums, k, sum);
    }
    return sums;
}

static PyMethodDef reader_methods[] = {
    {"sums", (PyCFunction)reader_sums, METH_O,
     "sums(points) -> list of the per-output sums, or None: take the Python path."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_nember_reader.Reader",
    .tp_doc = "Reader(predict, features, window, outputs, float32, library)",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
};

static struct PyModuleDef reader_module = {
    PyModuleDef_HEAD_INIT, "_nember_reader", "DataPoints read into compiled trees.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__nember_reader(void)
{
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&reader_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(module, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
