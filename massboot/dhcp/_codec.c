/*
 * massboot.dhcp._codec: the compiled BOOTP/DHCP codec (README "Performance", issue #14).
 *
 * Optional, like massboot.tftp._fastpath: setup.py builds it when a C compiler and the Python
 * headers are there. massboot.dhcp.packet binds it at import (bind(): the BootpPacket class,
 * its slot offsets, the pure-Python decode and encode) and then uses its decode() and encode()
 * in their place.
 *
 * One rule keeps the two codecs one codec: this module serves only the messages it can serve
 * exactly as the Python code would (a well-formed datagram; a reply made of exact ints, bytes,
 * dotted-quad strs and a tuple of (int, bytes) options) and hands everything else, unchanged,
 * to the Python function: a malformed datagram (its PacketError, reason and text come from
 * Python), a bytearray, a field out of range, an odd type. So there is no second copy of any
 * error: tests/unit/test_dhcp_codec.py checks that both give the same packet, the same bytes or
 * the same error on the same fuzzed input.
 *
 * decode: RFC 2131 §2 header; options after the RFC 2132 §2 magic cookie; PAD skipped and END
 * stops (RFC 2132 §3.1, §3.2); repeated options concatenated at the place of the first
 * (RFC 3396 §7); option 52 (RFC 2132 §9.3) read in the order options, 'file', 'sname'
 * (RFC 2131 §4.1) and not listed. encode: header, cookie, options in the given order (a value
 * over 255 bytes split as RFC 3396 §6 says; 0, 52 and 255 entries dropped), END, zero padding
 * to min_size (RFC 1542 §2.1).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#define API 1               /* massboot/dhcp/packet.py's CODEC_API: both change together */
#define HEADER_SIZE 236     /* RFC 2131 §2: fixed fields up to and including 'file' */
#define SNAME_OFF 44     /* RFC 2131 §2: after the 28 bytes of fixed fields and the 16 of chaddr */
#define SNAME_SIZE 64
#define FILE_OFF 108
#define FILE_SIZE 128
#define MAX_HLEN 16
#define MAX_OPTION_LEN 255  /* RFC 2132 §2: one length octet */
#define PAD 0
#define END 255
#define OVERLOAD 52
#define MAX_SEGMENTS 1024   /* TLVs decoded here; a datagram with more goes to Python */
#define LOCAL_SEGMENTS 64   /* held on the stack: a datagram with more allocates MAX_SEGMENTS */

static const unsigned char cookie[4] = {0x63, 0x82, 0x53, 0x63};   /* RFC 2132 §2 */

/* BootpPacket's fields, in the order of dataclasses.fields() */
enum {F_OP, F_XID, F_HTYPE, F_HLEN, F_HOPS, F_SECS, F_FLAGS, F_CIADDR, F_YIADDR, F_SIADDR,
      F_GIADDR, F_CHADDR, F_SNAME, F_FILE, F_OPTIONS, F_VENDOR, F_INDEX, NFIELDS};
static const char *field_names[NFIELDS] = {
    "op", "xid", "htype", "hlen", "hops", "secs", "flags", "ciaddr", "yiaddr", "siaddr",
    "giaddr", "chaddr", "sname", "file", "options", "vendor", "_index"};

static Py_ssize_t offsets[NFIELDS];
static PyTypeObject *packet_type;      /* BootpPacket, once bound */
static PyObject *decode_py;            /* packet.py's pure-Python decode and encode */
static PyObject *encode_py;
static PyObject *no_address;           /* "0.0.0.0", shared as packet.py shares it */
static PyObject *empty_tuple;
static PyObject *min_size_name;        /* "min_size", encode's keyword */

#define SLOT(obj, f) (*(PyObject **)((char *)(obj) + offsets[f]))

static PyObject *codec_bind(PyObject *module, PyObject *args)
{
    PyObject *cls, *dec, *enc, *zero;
    if (!PyArg_ParseTuple(args, "O!OOU:bind", &PyType_Type, &cls, &dec, &enc, &zero))
        return NULL;
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    Py_ssize_t found[NFIELDS];     /* kept only when every field is a slot */
    for (int i = 0; i < NFIELDS; i++) {
        PyObject *descr = PyDict_GetItemString(dict, field_names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member",
                         ((PyTypeObject *)cls)->tp_name, field_names[i]);
            return NULL;
        }
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type != T_OBJECT_EX || (def->flags & READONLY)) {
            PyErr_Format(PyExc_TypeError, "%s.%s: not a writable object slot",
                         ((PyTypeObject *)cls)->tp_name, field_names[i]);
            return NULL;
        }
        found[i] = def->offset;
    }
    if (!PyCallable_Check(dec) || !PyCallable_Check(enc)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes the Python decode and encode");
        return NULL;
    }
    memcpy(offsets, found, sizeof offsets);
    Py_INCREF(cls);
    Py_XSETREF(packet_type, (PyTypeObject *)cls);
    Py_INCREF(dec);
    Py_XSETREF(decode_py, dec);
    Py_INCREF(enc);
    Py_XSETREF(encode_py, enc);
    Py_INCREF(zero);
    Py_XSETREF(no_address, zero);
    Py_RETURN_NONE;
}

/* -- decode ----------------------------------------------------------------------------------- */

typedef struct { const unsigned char *p; int len; unsigned char code; } Segment;

typedef struct {
    Segment *seg;           /* local, or MAX_SEGMENTS allocated once local is full */
    int nseg;
    int cap;
    Segment local[LOCAL_SEGMENTS];
} Walk;

static void walk_init(Walk *w)
{
    w->seg = w->local;
    w->nseg = 0;
    w->cap = LOCAL_SEGMENTS;
}

static void walk_free(Walk *w)
{
    if (w->seg != w->local)
        PyMem_Free(w->seg);
    w->seg = w->local;
}

/* Room for one more segment: 0, or -1 (MAX_SEGMENTS reached, or no memory: Python answers) */
static int walk_room(Walk *w)
{
    if (w->nseg < w->cap)
        return 0;
    if (w->seg != w->local)
        return -1;
    Segment *big = PyMem_Malloc(MAX_SEGMENTS * sizeof(Segment));
    if (big == NULL)
        return -1;
    memcpy(big, w->local, sizeof w->local);
    w->seg = big;
    w->cap = MAX_SEGMENTS;
    return 0;
}

/* The TLVs of p[0:n] appended to w (RFC 2132 §3.1, §3.2: PAD skipped, END stops; running out
 * of data on a TLV boundary is a missing END). 0, or -1 when Python must answer (truncated,
 * too many). */
static int walk(Walk *w, const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char code = p[i];
        if (code == PAD) {
            i++;
            continue;
        }
        if (code == END)
            return 0;
        if (i + 1 >= n)
            return -1;
        Py_ssize_t end = i + 2 + p[i + 1];
        if (end > n || walk_room(w) < 0)
            return -1;
        w->seg[w->nseg].p = p + i + 2;
        w->seg[w->nseg].len = p[i + 1];
        w->seg[w->nseg].code = code;
        w->nseg++;
        i = end;
    }
    return 0;
}

/* "a.b.c.d" of four network-order bytes, as socket.inet_ntoa gives it */
static PyObject *ntoa(const unsigned char *a)
{
    if (a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0) {
        Py_INCREF(no_address);
        return no_address;
    }
    char text[16];
    int n = 0;
    for (int k = 0; k < 4; k++) {
        unsigned v = a[k];
        if (k)
            text[n++] = '.';
        if (v >= 100)
            text[n++] = (char)('0' + v / 100);
        if (v >= 10)
            text[n++] = (char)('0' + v / 10 % 10);
        text[n++] = (char)('0' + v % 10);
    }
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_1BYTE_DATA(s), text, (size_t)n);
    return s;
}

/* bytes of p[0:n] without its trailing NULs (bytes.rstrip(b"\0")) */
static PyObject *rstrip_nul(const unsigned char *p, Py_ssize_t n)
{
    while (n > 0 && p[n - 1] == 0)
        n--;
    return PyBytes_FromStringAndSize((const char *)p, n);
}

/* Options and their index from w (codes in the order they first appear, 52 left out, the
 * values of a repeated code concatenated in wire order); 0 or -1 with an exception set. */
static int collect(const Walk *w, PyObject **options_out, PyObject **index_out)
{
    int first[256];             /* code → its place among the listed codes, or -1 */
    Py_ssize_t total[256];
    unsigned char order[256];
    char *cursor[256];          /* where the code's next segment goes in its value */
    PyObject *values[256];
    int ncodes = 0;
    memset(first, -1, sizeof first);
    for (int s = 0; s < w->nseg; s++) {
        unsigned char c = w->seg[s].code;
        if (c == OVERLOAD)
            continue;
        if (first[c] < 0) {
            first[c] = ncodes;
            order[ncodes++] = c;
            total[c] = 0;
        }
        total[c] += w->seg[s].len;
    }
    PyObject *options = PyTuple_New(ncodes);
    PyObject *index = PyDict_New();
    int made = 0;
    if (options == NULL || index == NULL)
        goto fail;
    for (; made < ncodes; made++) {
        unsigned char c = order[made];
        values[made] = PyBytes_FromStringAndSize(NULL, total[c]);
        if (values[made] == NULL)
            goto fail;
        cursor[c] = PyBytes_AS_STRING(values[made]);
    }
    for (int s = 0; s < w->nseg; s++) {     /* one pass: a repeated code's values in wire order */
        unsigned char c = w->seg[s].code;
        if (c == OVERLOAD)
            continue;
        memcpy(cursor[c], w->seg[s].p, (size_t)w->seg[s].len);
        cursor[c] += w->seg[s].len;
    }
    for (int k = 0; k < ncodes; k++) {
        PyObject *code = PyLong_FromLong(order[k]);     /* 1..254: the cached small ints */
        PyObject *pair = code == NULL ? NULL : PyTuple_Pack(2, code, values[k]);
        int bad = pair == NULL || PyDict_SetItem(index, code, values[k]) < 0;
        Py_XDECREF(code);
        if (bad) {
            Py_XDECREF(pair);
            goto fail;
        }
        PyTuple_SET_ITEM(options, k, pair);
    }
    for (int k = 0; k < ncodes; k++)
        Py_DECREF(values[k]);
    *options_out = options;
    *index_out = index;
    return 0;
fail:
    for (int k = 0; k < made; k++)
        Py_DECREF(values[k]);
    Py_XDECREF(options);
    Py_XDECREF(index);
    return -1;
}

static PyObject *codec_decode(PyObject *module, PyObject *data)
{
    if (packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "massboot.dhcp._codec is not bound (bind())");
        return NULL;
    }
    if (!PyBytes_CheckExact(data))
        return PyObject_CallOneArg(decode_py, data);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (n < HEADER_SIZE || (p[0] != 1 && p[0] != 2) || p[2] > MAX_HLEN)
        return PyObject_CallOneArg(decode_py, data);     /* its PacketError */

    int vendor = n >= HEADER_SIZE + 4 && memcmp(p + HEADER_SIZE, cookie, 4) == 0;
    int overload = 0;
    Walk walked, *w = &walked;     /* on the stack: no allocation for a common datagram */
    walk_init(w);
    PyObject *options = NULL, *index = NULL;
    if (vendor) {
        if (walk(w, p + HEADER_SIZE + 4, n - HEADER_SIZE - 4) < 0)
            goto python;
        int have52 = 0, len52 = 0, value52 = 0;
        for (int s = 0; s < w->nseg; s++) {
            if (w->seg[s].code == OVERLOAD) {
                have52 = 1;
                len52 += w->seg[s].len;
                if (w->seg[s].len)
                    value52 = w->seg[s].p[0];
            }
        }
        if (have52) {
            if (len52 != 1 || value52 < 1 || value52 > 3)
                goto python;                            /* its bad_overload PacketError */
            overload = value52;
            /* RFC 2131 §4.1: 'file' is read before 'sname' */
            if ((overload & 1) && walk(w, p + FILE_OFF, FILE_SIZE) < 0)
                goto python;
            if ((overload & 2) && walk(w, p + SNAME_OFF, SNAME_SIZE) < 0)
                goto python;
        }
        if (collect(w, &options, &index) < 0)
            goto error;
        walk_free(w);
    } else {
        options = empty_tuple;
        Py_INCREF(options);
        index = Py_None;
        Py_INCREF(index);
    }

    PyObject *v[NFIELDS];
    memset(v, 0, sizeof v);
    unsigned hlen = p[2];
    v[F_OP] = PyLong_FromLong(p[0]);
    v[F_HTYPE] = PyLong_FromLong(p[1]);
    v[F_HLEN] = PyLong_FromLong(hlen);
    v[F_HOPS] = PyLong_FromLong(p[3]);
    v[F_XID] = PyLong_FromUnsignedLong(((unsigned long)p[4] << 24) | ((unsigned long)p[5] << 16)
                                       | ((unsigned long)p[6] << 8) | p[7]);
    v[F_SECS] = PyLong_FromLong((p[8] << 8) | p[9]);
    v[F_FLAGS] = PyLong_FromLong((p[10] << 8) | p[11]);
    v[F_CIADDR] = ntoa(p + 12);
    v[F_YIADDR] = ntoa(p + 16);
    v[F_SIADDR] = ntoa(p + 20);
    v[F_GIADDR] = ntoa(p + 24);
    v[F_CHADDR] = PyBytes_FromStringAndSize((const char *)p + 28, hlen);
    v[F_SNAME] = (overload & 2) ? PyBytes_FromStringAndSize(NULL, 0) : rstrip_nul(p + SNAME_OFF, SNAME_SIZE);
    v[F_FILE] = (overload & 1) ? PyBytes_FromStringAndSize(NULL, 0) : rstrip_nul(p + FILE_OFF, FILE_SIZE);
    v[F_OPTIONS] = options;
    v[F_VENDOR] = PyBool_FromLong(vendor);
    v[F_INDEX] = index;
    options = index = NULL;
    PyObject *packet = NULL;
    for (int i = 0; i < NFIELDS; i++) {
        if (v[i] == NULL)
            goto done;
    }
    packet = packet_type->tp_alloc(packet_type, 0);     /* object.__new__(BootpPacket) */
    if (packet != NULL) {
        for (int i = 0; i < NFIELDS; i++) {
            SLOT(packet, i) = v[i];     /* the reference moves into the slot */
            v[i] = NULL;
        }
    }
done:
    for (int i = 0; i < NFIELDS; i++)
        Py_XDECREF(v[i]);
    return packet;

python:
    walk_free(w);
    return PyObject_CallOneArg(decode_py, data);
error:
    walk_free(w);
    Py_XDECREF(options);
    Py_XDECREF(index);
    return NULL;
}

/* -- encode ----------------------------------------------------------------------------------- */

/* An int field in 0..max, or -1 (Python must answer: not an int, out of range) */
static long small_uint(PyObject *o, long max)
{
    if (o == NULL || !PyLong_Check(o))
        return -1;
    int overflow;
    long v = PyLong_AsLongAndOverflow(o, &overflow);
    if (overflow || v < 0 || v > max) {
        PyErr_Clear();
        return -1;
    }
    return v;
}

/* A dotted-quad str into out[4], as socket.inet_pton(AF_INET, ...) reads it; -1 otherwise */
static int pton(PyObject *o, unsigned char *out)
{
    if (o == NULL || !PyUnicode_Check(o))
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == NULL) {
        PyErr_Clear();
        return -1;
    }
    if ((Py_ssize_t)strlen(s) != n || inet_pton(AF_INET, s, out) != 1)
        return -1;
    return 0;
}

/* packet.py's encode(packet) or encode(packet, min_size=...) */
static PyObject *encode_fallback(PyObject *packet, PyObject *min_size)
{
    if (min_size == NULL)
        return PyObject_CallOneArg(encode_py, packet);
    PyObject *args[2] = {packet, min_size};
    PyObject *kwnames = PyTuple_Pack(1, min_size_name);
    if (kwnames == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(encode_py, args, 1, kwnames);
    Py_DECREF(kwnames);
    return r;
}

static PyObject *codec_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    if (packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "massboot.dhcp._codec is not bound (bind())");
        return NULL;
    }
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs != 1 || nkw > 1
            || (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "min_size") != 0))
        /* the Python function raises the same TypeError as for a bad call of its own */
        return PyObject_Vectorcall(encode_py, args, (size_t)nargs, kwnames);
    PyObject *packet = args[0];
    PyObject *min_size_obj = nkw ? args[1] : NULL;
    Py_ssize_t min_size = 300;      /* BOOTP_MIN_SIZE, RFC 951 and RFC 1542 §2.1 */
    if (min_size_obj != NULL) {
        if (!PyLong_Check(min_size_obj))
            goto python;
        min_size = PyLong_AsSsize_t(min_size_obj);
        if (min_size == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto python;
        }
    }
    if (Py_TYPE(packet) != packet_type)
        goto python;
    PyObject *chaddr = SLOT(packet, F_CHADDR), *sname = SLOT(packet, F_SNAME);
    PyObject *file = SLOT(packet, F_FILE), *options = SLOT(packet, F_OPTIONS);
    PyObject *vendor_obj = SLOT(packet, F_VENDOR);
    if (chaddr == NULL || !PyBytes_Check(chaddr) || PyBytes_GET_SIZE(chaddr) > MAX_HLEN
            || sname == NULL || !PyBytes_Check(sname) || PyBytes_GET_SIZE(sname) > SNAME_SIZE
            || file == NULL || !PyBytes_Check(file) || PyBytes_GET_SIZE(file) > FILE_SIZE
            || options == NULL || !PyTuple_CheckExact(options) || vendor_obj == NULL)
        goto python;
    long op = small_uint(SLOT(packet, F_OP), 0xff), htype = small_uint(SLOT(packet, F_HTYPE), 0xff);
    long hlen = small_uint(SLOT(packet, F_HLEN), 0xff), hops = small_uint(SLOT(packet, F_HOPS), 0xff);
    long xid = small_uint(SLOT(packet, F_XID), 0xffffffffL);
    long secs = small_uint(SLOT(packet, F_SECS), 0xffff), flags = small_uint(SLOT(packet, F_FLAGS), 0xffff);
    if (op < 0 || htype < 0 || hlen < 0 || hops < 0 || xid < 0 || secs < 0 || flags < 0)
        goto python;
    unsigned char addr[4][4];
    if (pton(SLOT(packet, F_CIADDR), addr[0]) < 0 || pton(SLOT(packet, F_YIADDR), addr[1]) < 0
            || pton(SLOT(packet, F_SIADDR), addr[2]) < 0 || pton(SLOT(packet, F_GIADDR), addr[3]) < 0)
        goto python;
    int vendor = PyObject_IsTrue(vendor_obj);
    if (vendor < 0) {
        PyErr_Clear();
        goto python;
    }
    Py_ssize_t nopt = PyTuple_GET_SIZE(options);
    if (!vendor && nopt > 0)
        goto python;                                    /* its ValueError */

    /* size first: every option checked, nothing written */
    Py_ssize_t size = HEADER_SIZE;
    if (vendor) {
        size += 4 + 1;
        for (Py_ssize_t k = 0; k < nopt; k++) {
            PyObject *item = PyTuple_GET_ITEM(options, k);
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
                goto python;
            long code = small_uint(PyTuple_GET_ITEM(item, 0), 0xff);
            PyObject *value = PyTuple_GET_ITEM(item, 1);
            if (code < 0 || !PyBytes_Check(value))
                goto python;
            if (code == PAD || code == END || code == OVERLOAD)
                continue;
            Py_ssize_t n = PyBytes_GET_SIZE(value);
            Py_ssize_t pieces = n == 0 ? 1 : (n + MAX_OPTION_LEN - 1) / MAX_OPTION_LEN;
            size += 2 * pieces + n;
        }
    }
    Py_ssize_t total = size < min_size ? min_size : size;
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    memset(out, 0, (size_t)total);
    out[0] = (unsigned char)op;
    out[1] = (unsigned char)htype;
    out[2] = (unsigned char)hlen;
    out[3] = (unsigned char)hops;
    out[4] = (unsigned char)(xid >> 24);
    out[5] = (unsigned char)(xid >> 16);
    out[6] = (unsigned char)(xid >> 8);
    out[7] = (unsigned char)xid;
    out[8] = (unsigned char)(secs >> 8);
    out[9] = (unsigned char)secs;
    out[10] = (unsigned char)(flags >> 8);
    out[11] = (unsigned char)flags;
    for (int k = 0; k < 4; k++)
        memcpy(out + 12 + 4 * k, addr[k], 4);
    memcpy(out + 28, PyBytes_AS_STRING(chaddr), (size_t)PyBytes_GET_SIZE(chaddr));
    memcpy(out + SNAME_OFF, PyBytes_AS_STRING(sname), (size_t)PyBytes_GET_SIZE(sname));
    memcpy(out + FILE_OFF, PyBytes_AS_STRING(file), (size_t)PyBytes_GET_SIZE(file));
    if (vendor) {
        unsigned char *o = out + HEADER_SIZE;
        memcpy(o, cookie, 4);
        o += 4;
        for (Py_ssize_t k = 0; k < nopt; k++) {
            PyObject *item = PyTuple_GET_ITEM(options, k);
            long code = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
            if (code == PAD || code == END || code == OVERLOAD)
                continue;
            PyObject *value = PyTuple_GET_ITEM(item, 1);
            const unsigned char *src = (const unsigned char *)PyBytes_AS_STRING(value);
            Py_ssize_t n = PyBytes_GET_SIZE(value), i = 0;
            do {    /* RFC 3396 §6: a long value in consecutive instances of its option */
                Py_ssize_t piece = n - i > MAX_OPTION_LEN ? MAX_OPTION_LEN : n - i;
                *o++ = (unsigned char)code;
                *o++ = (unsigned char)piece;
                memcpy(o, src + i, (size_t)piece);
                o += piece;
                i += piece;
            } while (i < n);
        }
        *o = END;
    }
    return result;

python:
    return encode_fallback(packet, min_size_obj);
}

static PyMethodDef module_methods[] = {
    {"bind", codec_bind, METH_VARARGS,
     "bind(BootpPacket, decode, encode, '0.0.0.0'): the class whose slots decode fills, and the "
     "Python functions that answer what this module does not serve"},
    {"decode", codec_decode, METH_O, "decode(data) -> BootpPacket (see massboot.dhcp.packet.decode)"},
    {"encode", (PyCFunction)(void (*)(void))codec_encode, METH_FASTCALL | METH_KEYWORDS,
     "encode(packet, *, min_size=300) -> bytes (see massboot.dhcp.packet.encode)"},
    {NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "massboot.dhcp._codec",
    .m_doc = "The compiled BOOTP/DHCP codec (see massboot.dhcp.packet).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__codec(void)
{
    empty_tuple = PyTuple_New(0);
    min_size_name = PyUnicode_InternFromString("min_size");
    if (empty_tuple == NULL || min_size_name == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API", API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
