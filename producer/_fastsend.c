/*
 * flarestream.producer._fastsend: AnalyticsSender's hot path in C.
 *
 * Handles exactly the calls that the Python fast path of validate_call() passes
 * through unchanged: tag an exact str, data type AnalyticsDataType.SCALAR or
 * .METRIC (by identity), value an exact float or an exact int within int64,
 * global_step None or an exact int in [0, 2**63-1], no kwargs. FastPath.add()
 * returns False for anything else, having changed nothing, and the caller takes
 * the Python path; that path is the reference and this module only repeats it:
 *
 * - The bytes are those of SenderEncoder.encode(): the per-writer prefix
 *   (framing header + schema_version, site, job_id, sender_id, writer), then
 *   seq, record_id, timestamp_ms, tag, data_type, step, path (null), value and
 *   an empty kwargs map, hand-encoded as Avro (zig-zag varints, UTF-8 strings,
 *   doubles through PyFloat_Pack8 as struct.pack("<d") does).
 * - One sequence counter: FastPath.seq is the sender's _seq (a property), read
 *   and written by either path only while holding the sender's threading.Lock
 *   (acquired here through its acquire() method). The two paths serialise on
 *   that one lock, so numbers are shared without gaps or reordering whatever
 *   the GIL does: confluent-kafka's produce() keeps the GIL, but poll() and a
 *   full queue (_produce_blocking) release it while the lock is held, as in
 *   Python. Once the sender is closed or failed fatally it clears `open`, and
 *   every call takes the Python path, which raises.
 * - A BufferError from produce() hands the same payload to the sender's
 *   _produce_blocking(); every 1024th record serves delivery reports (poll(0)).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#define POLL_EVERY 1024
#define MAX_WRITERS 8
#define VARINT_MAX 10

#if PY_VERSION_HEX >= 0x030B0000
#define PACK8(x, p) PyFloat_Pack8((x), (char *)(p), 1)
#else
#define PACK8(x, p) _PyFloat_Pack8((x), (unsigned char *)(p), 1)
#endif

static PyObject *s_produce_blocking, *py_zero, *time_ns;

/* Avro long: zig-zag, then base-128 little-endian groups. */
static inline int
put_long(unsigned char *out, int64_t n)
{
    uint64_t z = n < 0 ? ~((uint64_t)n << 1) : ((uint64_t)n << 1);
    int i = 0;
    while (z > 0x7F) {
        out[i++] = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    out[i++] = (unsigned char)z;
    return i;
}

/* str(n) in ASCII; out holds >= 20 bytes. */
static inline int
put_decimal(char *out, int64_t n)
{
    char tmp[20];
    uint64_t m = n < 0 ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    int len = 0, i = 0;
    do {
        tmp[len++] = (char)('0' + (int)(m % 10));
        m /= 10;
    } while (m);
    if (n < 0)
        out[i++] = '-';
    while (len)
        out[i++] = tmp[--len];
    return i;
}

/* An int within int64: 1 and *out set; 0 for anything else (no error left set). */
static inline int
exact_long(PyObject *o, int64_t *out)
{
    int overflow = 0;
    long long v;
    if (!PyLong_CheckExact(o))
        return 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = (int64_t)v;
    return 1;
}

/* The variable part of one call, checked and converted before taking the lock. */
typedef struct {
    const char *tag;
    Py_ssize_t tag_len;
    unsigned char value[1 + VARINT_MAX];
    int value_len;
    unsigned char step[1 + VARINT_MAX];
    int step_len;
} Call;

/* 1: the call is in the fast domain and *c is filled; 0: it is not (no error set). */
static int
parse_call(PyObject *tag, PyObject *value, PyObject *step, int step_may_be_negative, Call *c)
{
    int64_t n;
    if (!PyUnicode_CheckExact(tag))
        return 0;
    c->tag = PyUnicode_AsUTF8AndSize(tag, &c->tag_len);
    if (c->tag == NULL) { /* lone surrogates: the Python path raises EncodeError */
        PyErr_Clear();
        return 0;
    }
    if (PyFloat_CheckExact(value)) {
        c->value[0] = 0x06; /* union branch 3: double */
        if (PACK8(PyFloat_AS_DOUBLE(value), c->value + 1) < 0) {
            PyErr_Clear();
            return 0;
        }
        c->value_len = 9;
    }
    else if (exact_long(value, &n)) {
        c->value[0] = 0x04; /* union branch 2: long */
        c->value_len = 1 + put_long(c->value + 1, n);
    }
    else
        return 0;
    if (step == Py_None) {
        c->step[0] = 0x00;
        c->step_len = 1;
    }
    else if (exact_long(step, &n) && (n >= 0 || step_may_be_negative)) {
        c->step[0] = 0x02;
        c->step_len = 1 + put_long(c->step + 1, n);
    }
    else
        return 0;
    return 1;
}

/* The whole message; buffers are borrowed from objects the caller holds. */
static PyObject *
build(const char *prefix, Py_ssize_t prefix_len, const char *rid, Py_ssize_t rid_len,
      const char *dt, Py_ssize_t dt_len, int64_t seq, const unsigned char *ts, int ts_len,
      const Call *c)
{
    unsigned char seq_v[VARINT_MAX], rid_v[VARINT_MAX], tag_v[VARINT_MAX];
    char digits[21];
    int seq_n = put_long(seq_v, seq);
    int ndigits = put_decimal(digits, seq);
    int rid_n = put_long(rid_v, (int64_t)(rid_len + ndigits));
    int tag_n = put_long(tag_v, (int64_t)c->tag_len);
    Py_ssize_t total = prefix_len + seq_n + rid_n + rid_len + ndigits + ts_len + tag_n +
                       c->tag_len + dt_len + c->step_len + 1 + c->value_len + 1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    char *p;
    if (out == NULL)
        return NULL;
    p = PyBytes_AS_STRING(out);
#define PUT(src, len)                  \
    do {                               \
        memcpy(p, (src), (size_t)(len)); \
        p += (len);                    \
    } while (0)
    PUT(prefix, prefix_len);
    PUT(seq_v, seq_n);
    PUT(rid_v, rid_n);
    PUT(rid, rid_len);
    PUT(digits, ndigits);
    PUT(ts, ts_len);
    PUT(tag_v, tag_n);
    PUT(c->tag, c->tag_len);
    PUT(dt, dt_len);
    PUT(c->step, c->step_len);
    *p++ = 0x00; /* path: null */
    PUT(c->value, c->value_len);
    *p++ = 0x00; /* kwargs: empty map */
#undef PUT
    return out;
}

/* time.time_ns() // 1_000_000 */
static int
now_ms(int64_t *out)
{
#if defined(CLOCK_REALTIME) && !defined(_WIN32)
    /* the clock time.time_ns() reads on POSIX */
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *out = (int64_t)ts.tv_sec * 1000 + (int64_t)(ts.tv_nsec / 1000000);
    return 0;
#else
    PyObject *ns = PyObject_CallNoArgs(time_ns);
    long long v;
    if (ns == NULL)
        return -1;
    v = PyLong_AsLongLong(ns);
    Py_DECREF(ns);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)(v >= 0 ? v / 1000000 : -((-v + 999999) / 1000000));
    return 0;
#endif
}

typedef struct {
    PyObject *writer;     /* LogWriterName member, compared by identity */
    PyObject *prefix;     /* bytes */
    PyObject *rid_prefix; /* bytes: "<sender_id>-" */
    PyObject *scalar_code, *metric_code; /* bytes: Avro enum index */
} Layout;

typedef struct {
    PyObject_HEAD
    PyObject *sender, *acquire, *release, *produce, *poll, *topic, *key, *scalar, *metric;
    int64_t seq; /* the sender's next sequence number, for both paths */
    char open;   /* 0 once the sender is closed or failed fatally */
    int nlayouts;
    Layout layouts[MAX_WRITERS];
    int64_t last_ms; /* the timestamp bytes are reused within one millisecond */
    unsigned char ms_bytes[VARINT_MAX];
    int ms_len;
} FastPath;

static int
FastPath_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sender);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->produce);
    Py_VISIT(self->poll);
    Py_VISIT(self->scalar);
    Py_VISIT(self->metric);
    for (int i = 0; i < self->nlayouts; i++)
        Py_VISIT(self->layouts[i].writer);
    return 0;
}

static int
FastPath_clear(FastPath *self)
{
    Py_CLEAR(self->sender);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->produce);
    Py_CLEAR(self->poll);
    Py_CLEAR(self->topic);
    Py_CLEAR(self->key);
    Py_CLEAR(self->scalar);
    Py_CLEAR(self->metric);
    for (int i = 0; i < self->nlayouts; i++) {
        Layout *l = &self->layouts[i];
        Py_CLEAR(l->writer);
        Py_CLEAR(l->prefix);
        Py_CLEAR(l->rid_prefix);
        Py_CLEAR(l->scalar_code);
        Py_CLEAR(l->metric_code);
    }
    self->nlayouts = 0;
    return 0;
}

static void
FastPath_dealloc(FastPath *self)
{
    PyObject_GC_UnTrack(self);
    FastPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
FastPath_init(FastPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sender", "lock", "producer", "topic", "key", "scalar", "metric",
                             NULL};
    PyObject *sender, *lock, *producer, *topic, *key, *scalar, *metric;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOUSOO:FastPath", kwlist, &sender, &lock,
                                     &producer, &topic, &key, &scalar, &metric))
        return -1;
    if (self->sender != NULL) { /* add() may hold pointers into the layouts */
        PyErr_SetString(PyExc_RuntimeError, "FastPath is already initialised");
        return -1;
    }
    FastPath_clear(self);
    self->acquire = PyObject_GetAttrString(lock, "acquire");
    self->release = PyObject_GetAttrString(lock, "release");
    self->produce = PyObject_GetAttrString(producer, "produce");
    self->poll = PyObject_GetAttrString(producer, "poll");
    if (!self->acquire || !self->release || !self->produce || !self->poll)
        return -1;
    Py_INCREF(sender);
    self->sender = sender;
    Py_INCREF(topic);
    self->topic = topic;
    Py_INCREF(key);
    self->key = key;
    Py_INCREF(scalar);
    self->scalar = scalar;
    Py_INCREF(metric);
    self->metric = metric;
    self->seq = 0;
    self->open = 1;
    self->last_ms = -1;
    self->ms_len = put_long(self->ms_bytes, -1);
    return 0;
}

/* A layout, once added, is never changed nor freed before the FastPath: add()
 * keeps pointers into it while it waits for the lock with the GIL released. */
static PyObject *
FastPath_register(FastPath *self, PyObject *args)
{
    PyObject *writer, *prefix, *rid, *sc, *mc;
    Layout *l;
    if (!PyArg_ParseTuple(args, "OSSSS:register", &writer, &prefix, &rid, &sc, &mc))
        return NULL;
    for (int i = 0; i < self->nlayouts; i++)
        if (self->layouts[i].writer == writer)
            Py_RETURN_FALSE; /* the same sender and writer: the same bytes */
    if (self->nlayouts == MAX_WRITERS)
        Py_RETURN_FALSE; /* such a writer's records just take the Python path */
    l = &self->layouts[self->nlayouts];
    l->writer = Py_NewRef(writer);
    l->prefix = Py_NewRef(prefix);
    l->rid_prefix = Py_NewRef(rid);
    l->scalar_code = Py_NewRef(sc);
    l->metric_code = Py_NewRef(mc);
    self->nlayouts++;
    Py_RETURN_TRUE;
}

/* Everything done under the sender's lock: a new reference to True (sent),
 * False (a state the Python path reports: closed, fatal) or NULL (raised). */
static PyObject *
locked_send(FastPath *self, const Layout *l, PyObject *dt_code, PyObject *tag, const Call *c)
{
    PyObject *payload, *r, *argv[3];
    int64_t seq = self->seq, ms;

    if (!self->open || seq == INT64_MAX)
        return Py_NewRef(Py_False);
    if (now_ms(&ms) < 0)
        return NULL;
    if (ms != self->last_ms) {
        self->last_ms = ms;
        self->ms_len = put_long(self->ms_bytes, ms);
    }
    payload = build(PyBytes_AS_STRING(l->prefix), PyBytes_GET_SIZE(l->prefix),
                    PyBytes_AS_STRING(l->rid_prefix), PyBytes_GET_SIZE(l->rid_prefix),
                    PyBytes_AS_STRING(dt_code), PyBytes_GET_SIZE(dt_code), seq, self->ms_bytes,
                    self->ms_len, c);
    if (payload == NULL)
        return NULL;
    argv[0] = self->topic;
    argv[1] = payload;
    argv[2] = self->key;
    r = PyObject_Vectorcall(self->produce, argv, 3, NULL);
    if (r == NULL && PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear(); /* queue full: serve delivery reports until it takes the record */
        r = PyObject_CallMethodObjArgs(self->sender, s_produce_blocking, tag, payload, NULL);
    }
    Py_DECREF(payload);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    self->seq = seq + 1;
    if (seq % POLL_EVERY == 0) {
        r = PyObject_Vectorcall(self->poll, &py_zero, 1, NULL);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    return Py_NewRef(Py_True);
}

static PyObject *
FastPath_add(FastPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *dt, *writer, *dt_code, *result, *r;
    const Layout *l = NULL;
    Call c;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "add(tag, value, data_type, global_step, writer) takes 5 arguments");
        return NULL;
    }
    if (self->sender == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FastPath is not initialised");
        return NULL;
    }
    dt = args[2];
    writer = args[4];
    for (int i = 0; i < self->nlayouts; i++)
        if (self->layouts[i].writer == writer)
            l = &self->layouts[i];
    if (l == NULL)
        Py_RETURN_FALSE;
    if (dt == self->scalar)
        dt_code = l->scalar_code;
    else if (dt == self->metric)
        dt_code = l->metric_code;
    else
        Py_RETURN_FALSE;
    if (!parse_call(args[0], args[1], args[3], 0, &c))
        Py_RETURN_FALSE;

    /* blocking acquire() waits with the GIL released, like `with self._lock` */
    if ((r = PyObject_CallNoArgs(self->acquire)) == NULL)
        return NULL;
    Py_DECREF(r);
    result = locked_send(self, l, dt_code, args[0], &c);
    if (result == NULL) { /* release, keeping the exception being raised */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        r = PyObject_CallNoArgs(self->release);
        Py_XDECREF(r);
        if (r == NULL) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return NULL;
        }
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if ((r = PyObject_CallNoArgs(self->release)) == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    Py_DECREF(r);
    return result;
}

static PyObject *
FastPath_get_seq(FastPath *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->seq);
}

static int
FastPath_set_seq(FastPath *self, PyObject *value, void *closure)
{
    int64_t seq;
    (void)closure;
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "seq must be an int");
        return -1;
    }
    seq = PyLong_AsLongLong(value);
    if (seq == -1 && PyErr_Occurred())
        return -1;
    if (seq < 0) {
        PyErr_SetString(PyExc_ValueError, "seq must be >= 0");
        return -1;
    }
    self->seq = seq;
    return 0;
}

static PyGetSetDef FastPath_getset[] = {
    {"seq", (getter)FastPath_get_seq, (setter)FastPath_set_seq,
     "The sender's next sequence number (records accepted so far), shared by both paths; "
     "read and written under the sender's lock.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FastPath_members[] = {
    {"open", T_BOOL, offsetof(FastPath, open), 0,
     "False once the sender is closed or failed fatally: every call then takes the "
     "Python path, which raises."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef FastPath_methods[] = {
    {"add", (PyCFunction)(void (*)(void))FastPath_add, METH_FASTCALL,
     "add(tag, value, data_type, global_step, writer) -> bool\n\n"
     "Send one plain scalar record; False (nothing done) when the call is not one."},
    {"register", (PyCFunction)FastPath_register, METH_VARARGS,
     "register(writer, prefix, rid_prefix, scalar_code, metric_code) -> bool\n\n"
     "The fixed bytes of one writer's records (from its SenderEncoder)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flarestream.producer._fastsend.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FastPath(sender, lock, producer, topic, key, scalar, metric): one "
              "AnalyticsSender's C path for plain scalar records.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_traverse = (traverseproc)FastPath_traverse,
    .tp_clear = (inquiry)FastPath_clear,
    .tp_methods = FastPath_methods,
    .tp_members = FastPath_members,
    .tp_getset = FastPath_getset,
};

/* encode_scalar(prefix, rid_prefix, dt_code, seq, timestamp_ms, tag, value, step):
 * the bytes FastPath would send, or None outside the fast domain (tests). */
static PyObject *
encode_scalar(PyObject *module, PyObject *args)
{
    PyObject *prefix, *rid, *dt, *seq_o, *ts_o, *tag, *value, *step;
    int64_t seq, ts;
    unsigned char ts_v[VARINT_MAX];
    Call c;
    (void)module;
    if (!PyArg_ParseTuple(args, "SSSOOOOO:encode_scalar", &prefix, &rid, &dt, &seq_o, &ts_o,
                          &tag, &value, &step))
        return NULL;
    if (!exact_long(seq_o, &seq) || !exact_long(ts_o, &ts) || !parse_call(tag, value, step, 1, &c))
        Py_RETURN_NONE;
    return build(PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix), PyBytes_AS_STRING(rid),
                 PyBytes_GET_SIZE(rid), PyBytes_AS_STRING(dt), PyBytes_GET_SIZE(dt), seq, ts_v,
                 put_long(ts_v, ts), &c);
}

static PyMethodDef module_methods[] = {
    {"encode_scalar", encode_scalar, METH_VARARGS,
     "encode_scalar(prefix, rid_prefix, dt_code, seq, timestamp_ms, tag, value, step)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastsend_module = {
    PyModuleDef_HEAD_INIT, "flarestream.producer._fastsend",
    "AnalyticsSender's hot path for plain scalar records, in C.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__fastsend(void)
{
    PyObject *m, *time_mod;
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    s_produce_blocking = PyUnicode_InternFromString("_produce_blocking");
    py_zero = PyLong_FromLong(0);
    if (!s_produce_blocking || !py_zero)
        return NULL;
    if ((time_mod = PyImport_ImportModule("time")) == NULL)
        return NULL;
    time_ns = PyObject_GetAttrString(time_mod, "time_ns");
    Py_DECREF(time_mod);
    if (time_ns == NULL)
        return NULL;
    if ((m = PyModule_Create(&fastsend_module)) == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "POLL_EVERY", POLL_EVERY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
