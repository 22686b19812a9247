/*
 * massboot.tftp._fastpath: the compiled TFTP data path (README "Performance", issue #14).
 *
 * Optional: setup.py builds it when a C compiler and the Python headers are there; without it
 * massboot.tftp.server runs the same exchange in Python. Two objects:
 *
 * Dispatcher: one epoll set for every running transfer's sockets, watched by one io watcher of
 *   the gevent loop (on_ready() is its callback). It asks the set which sockets are ready
 *   (level-triggered, at most READY_MAX per wake-up) and serves each one: a plain callable is
 *   called (the Python handlers: strangers on a transfer's port, transfers the lane does not
 *   take), a Lane is served here. One timerfd in the same set is the timer of all its lanes
 *   (armed for the earliest deadline; a lane whose deadline passed gets the pump's Python
 *   timer callback). Busy poll ([tftpd] busy_poll, README "TFTP busy poll"): while at least
 *   SPIN_MIN_SOCKETS sockets are in the set, a wake-up that served datagrams polls the set
 *   again for up to the spin window before it hands the thread back to the hub, the GIL
 *   released and the CPU yielded between polls; the window adapts (halved after a spin that
 *   found nothing, back up when the next wake-up came within the configured window).
 *   Storm scan (README "TFTP busy poll"): a wake-up that finds SCAN_MIN_READY or more lane
 *   sockets ready at once takes every lane socket out of the epoll set and serves them in
 *   passes of poll(fds, n, 0), as dnsmasq does, until no lane has had a datagram for the
 *   storm-scan window: a socket in an epoll set costs whoever writes to it (the clients' ACKs,
 *   on loopback the sender's CPU) two epoll callbacks per datagram through the hub's set; a
 *   socket nobody waits on costs nothing. Meanwhile an eventfd in the set stays readable, so
 *   the hub calls on_ready() again after its other work, never sleeping.
 *
 * Lane: one transfer (octet, windowsize up to MAX_WINDOW, a complete local file) in its
 *   common case: recv the client's datagram; when it is the ACK of everything sent, send the
 *   next full block from the lane's read-ahead chunk (CHUNK bytes, refilled with
 *   preadv2(RWF_NOWAIT) from the page cache, never waiting; header and chunk slice as two
 *   iovecs, no copy; the chunk shared with the lanes of the same file version, see "Shared
 *   read-ahead" below), or, for a window (RFC 7440), read the next window's blocks into their
 *   slots with one preadv2 and send them with one sendmmsg; update the transfer's state
 *   exactly as ReadTransfer.on_ack_all (and its _fill) does, and move its deadline in the
 *   dispatcher's timer: no Python object is touched per block. The running state lives in
 *   the lane (plain C values, loaded from the ReadTransfer's __slots__ by member offset at
 *   the first ACK it takes) and is written back into the ReadTransfer (lane_flush(), member
 *   for member what on_ack_all would have left, the block in its slot) before Python can
 *   look: a datagram handed to the pump, the timer's callback, remove() from the dispatcher
 *   (the end of the exchange, a stall, shutdown), sync() (the pump's request_again). Anything
 *   else (another datagram, an ACK that is not the ACK of everything sent, the first RTT
 *   sample, a resent block, the last or a short block, a read the page cache cannot answer at
 *   once) is handed to the Python pump unchanged, with the datagram already in its buffer:
 *   the Python code decides exactly as it would have without the lane, since the transfer it
 *   finds is the one on_ack_all would have left.
 *
 * No mmap: a file the operator truncates would SIGBUS the server; pread just returns less.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define READY_MAX 256     /* ready sockets served per wake-up (the rest on the next one) */
#define SENDING 1         /* ReadTransfer._SENDING */
#define OP_DATA 3         /* RFC 1350 section 5 */
#define OP_ACK 4
#define MAX_WINDOW 64     /* the largest window a lane serves (the [tftpd] windowsize default) */
#define CHUNK (16 << 10)  /* bytes a lane reads ahead: one preadv2 per ~11 blocks of 1428 */
#define K_VAR 4.0         /* RFC 6298 section 2, as in transfer.py */
#define GRANULARITY 0.001

/* -- ReadTransfer members, by offset ------------------------------------------------------ */

enum {
    F_STATE, F_WINDOW, F_NETASCII, F_EOF, F_NEXT, F_BASE, F_HIGH, F_LAST, F_OFFSET, F_BLKSIZE,
    F_RESENT, F_SENT_AT, F_SRTT, F_RTTVAR, F_RTO, F_TIMEOUT_MIN, F_TIMEOUT_MAX, F_TIMEOUTS,
    F_PROGRESS_AT, F_BYTES_ACKED, F_BYTES_SENT, F_STALLED, F_DEADLINE, F_SLOTS, F_LENGTHS,
    F_DATAGRAMS, NFIELDS
};

static const char *field_names[NFIELDS] = {
    "_state", "_window", "_netascii", "_eof", "_next", "_base", "_high", "_last", "_offset",
    "_blksize", "_resent", "_sent_at", "_srtt", "_rttvar", "_rto", "_timeout_min",
    "_timeout_max", "_timeouts", "_progress_at", "bytes_acked", "bytes_sent", "stalled",
    "_deadline", "_slots", "_lengths", "_datagrams",
};

static Py_ssize_t offsets[NFIELDS];
static PyTypeObject *transfer_type = NULL;
static unsigned long long total_blocks = 0;   /* blocks sent by lanes, all dispatchers */
static unsigned long long total_handoffs = 0; /* datagrams lanes handed to Python */
static unsigned long long total_would_block = 0; /* block reads the page cache could not answer */
static unsigned long long total_spin_hits = 0;    /* busy polls that found a datagram */
static unsigned long long total_spin_misses = 0;  /* busy polls that ran out their window */
static long long total_spin_time = 0;             /* ns spent busy polling, all dispatchers */
static unsigned long long total_scans = 0;        /* storm scans begun */
static unsigned long long total_scan_passes = 0;  /* poll() passes over the lane sockets */
static unsigned long long total_scan_ready = 0;   /* lane sockets those passes found readable */
static unsigned long long total_timer_arms = 0;  /* timerfd_settime calls, all dispatchers */
static unsigned long long total_timer_fires = 0; /* timer wake-ups */
static unsigned long long total_expired = 0;     /* lanes whose deadline passed: Python's timer */

#define MEMBER(obj, f) (*(PyObject **)((char *)(obj) + offsets[f]))

static inline void set_member(PyObject *obj, int f, PyObject *value) /* steals value */
{
    PyObject **slot = &MEMBER(obj, f);
    PyObject *old = *slot;
    *slot = value;
    Py_XDECREF(old);
}

/* An exact int member that fits a long long; -1 with *ok = 0 otherwise. */
static inline long long int_member(PyObject *obj, int f, int *ok)
{
    PyObject *v = MEMBER(obj, f);
    if (v == NULL || !PyLong_CheckExact(v)) {
        *ok = 0;
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
        return -1;
    }
    return x;
}

static inline double float_member(PyObject *obj, int f, int *ok)
{
    PyObject *v = MEMBER(obj, f);
    if (v == NULL || !PyFloat_CheckExact(v)) {
        *ok = 0;
        return 0.0;
    }
    return PyFloat_AS_DOUBLE(v);
}

static PyObject *fp_bind(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes the ReadTransfer class");
        return NULL;
    }
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < NFIELDS; i++) {
        PyObject *descr = PyDict_GetItemString(dict, field_names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ member", ((PyTypeObject *)cls)->tp_name,
                         field_names[i]);
            return NULL;
        }
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type != T_OBJECT_EX || (def->flags & READONLY)) {
            PyErr_Format(PyExc_TypeError, "%s.%s: not a writable object slot", ((PyTypeObject *)cls)->tp_name,
                         field_names[i]);
            return NULL;
        }
        offsets[i] = def->offset;
    }
    Py_INCREF(cls);
    Py_XSETREF(transfer_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static inline double monotonic(void)
{
    /* time.monotonic(): CLOCK_MONOTONIC as nanoseconds, then seconds as a double */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    return (double)ns / 1e9;
}

/* -- Dispatcher state (its methods below) ---------------------------------------------------- */

/* One timer for every lane of a dispatcher: a timerfd in its epoll set, armed for the earliest
 * lane deadline (deadlines[fd], the transfer's _deadline as the lane last saw it). A lane's ACK
 * moves its deadline in C, with no call out of C; the timerfd is re-armed only when a deadline
 * moves before the time it is armed for. When it fires, each lane whose deadline passed (read
 * again from its transfer: Python may have moved it) gets its Python timer callback, the same
 * _Pump._on_timer the Python path's libev timer calls. */
typedef struct Dispatcher {
    PyObject_HEAD
    int epfd;
    int tfd;            /* the timerfd (in the epoll set), -1 when closed */
    PyObject **table;   /* fd -> handler or Lane (strong references) */
    double *deadlines;  /* fd -> a lane's deadline (INFINITY: none, or not a lane) */
    double armed;       /* when the timerfd fires (INFINITY: disarmed) */
    int cap;
    int count;
    int64_t spin_max;   /* [tftpd] busy_poll in ns (0: never spin) */
    int64_t spin;       /* the spin window now (adapts between 0 and spin_max) */
    int64_t left_at;    /* when on_ready last handed the thread back to the hub */
    int evfd;           /* storm scan: an eventfd in the set, readable while scanning */
    int scanning;       /* storm scan on: the lane sockets are in pfds, not the epoll set */
    struct pollfd *pfds;  /* the lane sockets polled in a scan (npfds of cap) */
    int npfds;
    int *pidx;          /* fd -> its index in pfds, -1 */
    int *ready;         /* a scan pass's readable sockets (cap entries) */
    int64_t scan_idle;  /* the storm-scan window, ns (0: never scan) */
    int64_t idle_since; /* when a scan pass last found nothing after one that did (0: it did) */
} Dispatcher;

#define SPIN_MIN_SOCKETS 16          /* busy poll with this many sockets watched (8 transfers) */
#define SPIN_FLOOR_NS 2000           /* a window shrunk below this is 0 (no spin) */
#define SERVE_BUDGET_NS 1000000      /* serve at most ~1 ms per wake-up: the hub's other work */
#define BUSY_POLL_MAX_US 1000        /* config.py's [tftpd] busy_poll bound */
#define SCAN_MIN_READY 16            /* lane sockets ready in one wake-up that start a scan */

/* Fire the timer at *when* (CLOCK_MONOTONIC seconds, as monotonic() gives; INFINITY: never). */
static void dispatcher_arm(Dispatcher *self, double when)
{
    self->armed = when;
    if (self->tfd < 0)
        return;
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    if (isfinite(when)) {
        /* rounded up: once it fired, monotonic() >= when */
        double ns = ceil(when * 1e9);
        if (ns < 1.0)
            ns = 1.0;  /* 0 would disarm */
        spec.it_value.tv_sec = (time_t)(ns / 1e9);
        spec.it_value.tv_nsec = (long)(ns - (double)spec.it_value.tv_sec * 1e9);
        if (spec.it_value.tv_nsec < 0)
            spec.it_value.tv_nsec = 0;
        if (spec.it_value.tv_nsec >= 1000000000L) {
            spec.it_value.tv_sec++;
            spec.it_value.tv_nsec -= 1000000000L;
        }
        if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
            spec.it_value.tv_nsec = 1;
    }
    total_timer_arms++;
    (void)timerfd_settime(self->tfd, TFD_TIMER_ABSTIME, &spec, NULL);
}

/* -- Shared read-ahead ------------------------------------------------------------------- */

/* A rack boots the same few files at once: 500 lanes reading their own CHUNK of the same
 * bytes is 500 copies out of the page cache and 8 MiB of buffers the CPU's caches cannot
 * hold, so each block is sent from memory that is cold by then. Lanes of one file version
 * (device, inode, size, mtime, ctime as fstat gave them when the lane began) and one blksize
 * share chunks instead: SHARED_SLOTS chunks of whole blocks at fixed offsets, SHARED_WAYS
 * places per chunk, taken by a lane for as long as it sends from it (pinned: never reused
 * meanwhile) and given to another lane of the same version only within SHARED_TTL_NS of the
 * read (a chunk holds what the file held when it was read, as a lane's own chunk does). When
 * every place is pinned the lane reads into its own chunk, as before. */
#define SHARED_SLOTS 128             /* chunks shared by the process's lanes (2 MiB) */
#define SHARED_WAYS 4                /* places a chunk may take (the oldest unpinned is reused) */
#define SHARED_TTL_NS 1000000000LL   /* a shared chunk is given out for a second after its read */

typedef struct {
    unsigned long long dev, ino;
    long long size;
    int64_t mtime, ctime;
} FileVersion;

typedef struct {
    FileVersion version;
    long long blksize, start, len;   /* file bytes [start, start + len); len 0: empty */
    int64_t read_at;
    int pins;                        /* lanes sending from it */
    char *data;                      /* CHUNK bytes, allocated at first use */
} SharedChunk;

static SharedChunk shared[SHARED_SLOTS];
static unsigned long long total_shared_hits = 0;   /* chunks a lane found read by another */
static unsigned long long total_shared_reads = 0;  /* chunks read into the shared table */
static unsigned long long total_own_reads = 0;     /* chunks read into a lane's own buffer */

static int64_t now_ns(void);

/* -- Lane ---------------------------------------------------------------------------------- */

/* The fields an ACK touches come first, together (a storm touches each lane once per ACK,
 * and the cache miss on its struct is most of the C module's cost): with the object header,
 * the first four cache lines for a lock-step lane. */
typedef struct {
    PyObject_HEAD
    PyObject *transfer;   /* the ReadTransfer: the one owner of the state */
    struct Dispatcher *owner; /* the dispatcher serving it (borrowed: it holds the lane), or NULL */
    char *rbuf;           /* buf.buf and buf.len (the pump's buffer), with the hot fields */
    Py_ssize_t rlen;
    int sock;             /* the transfer socket, connected to the client */
    int file;             /* the file's descriptor (pread only) */
    int nowait;           /* RWF_NOWAIT works here; cleared when the kernel refuses it */
    /* The running state, while `cached`: the transfer's members as on_ack_all would have left
     * them (state _SENDING, eof False, last None, timeouts 0, stalled False, every resent
     * False: the lane's invariants), kept here as plain C values so that an ACK touches no
     * Python object. lane_flush() writes it back into the ReadTransfer before anything in
     * Python can look (a handoff, the timer, remove(), sync()); the next ACK loads it again. */
    int cached;
    int slot_stale;       /* window 1: the slot lacks the block sent (it went from the chunk) */
    char c_header[4];     /* window 1: the DATA header sent with the chunk slice */
    long long size;       /* the file's size: a block that would end beyond it is Python's */
    long long blksize;
    long long window;
    long long c_next, c_base, c_high, c_offset, c_acked, c_sent;
    double c_srtt, c_rttvar, c_rto, c_tmin, c_tmax, c_progress, c_deadline;
    char *view;           /* read-ahead: file bytes [chunk_start, chunk_start + chunk_len) */
    long long chunk_start;
    long long chunk_len;
    long long chunk_cap;
    unsigned long long blocks;
    double c_sent_at[MAX_WINDOW];
    char *c_data[MAX_WINDOW];   /* the slots' buffers, by slot (header + blksize) */
    /* cold (a refill, every ~11 blocks, and the lane's end) */
    SharedChunk *pin;     /* the shared chunk `view` is in, or NULL (`chunk`, the lane's own) */
    char *chunk;          /* the lane's own read-ahead buffer (chunk_cap bytes), or NULL */
    int shareable;        /* a regular file, blksize <= CHUNK: its chunks may be shared */
    FileVersion version;
    unsigned long long handoffs;
    PyObject *handoff;    /* handoff(size): the Python pump takes the datagram in its buffer */
    PyObject *timer;      /* timer(): the transfer's deadline passed (the pump's _on_timer) */
    Py_buffer buf;        /* the pump's receive buffer (held: it cannot be resized) */
} Lane;

static PyTypeObject LaneType;

static int lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"transfer", "sock", "buf", "file", "size", "handoff", "timer", NULL};
    PyObject *transfer, *buf, *handoff, *timer;
    int sock, file;
    long long size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiOiLOO", kwlist, &transfer, &sock, &buf, &file,
                                     &size, &handoff, &timer))
        return -1;
    if (transfer_type == NULL || !PyObject_TypeCheck(transfer, transfer_type)) {
        PyErr_SetString(PyExc_TypeError, "Lane needs a ReadTransfer of the class given to bind()");
        return -1;
    }
    if (!PyCallable_Check(handoff) || !PyCallable_Check(timer)) {
        PyErr_SetString(PyExc_TypeError, "handoff and timer must be callable");
        return -1;
    }
    int ok = 1;
    long long window = int_member(transfer, F_WINDOW, &ok);
    long long blksize = int_member(transfer, F_BLKSIZE, &ok);
    PyObject *netascii = MEMBER(transfer, F_NETASCII);
    if (!ok || window < 1 || window > MAX_WINDOW || netascii != Py_False || blksize < 8
            || blksize > 65464) {
        PyErr_SetString(PyExc_ValueError, "a lane serves octet transfers with windowsize up to 64");
        return -1;
    }
    if (self->buf.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(buf, &self->buf, PyBUF_WRITABLE) < 0)
        return -1;
    if (self->buf.len < 4) {
        PyBuffer_Release(&self->buf);
        PyErr_SetString(PyExc_ValueError, "buffer too small");
        return -1;
    }
    self->rbuf = (char *)self->buf.buf;
    self->rlen = self->buf.len;
    Py_INCREF(transfer);
    Py_INCREF(handoff);
    Py_INCREF(timer);
    self->transfer = transfer;
    self->handoff = handoff;
    self->timer = timer;
    self->owner = NULL;
    self->sock = sock;
    self->file = file;
    self->size = size;
    self->blksize = blksize;
    self->window = window;
    self->nowait = 1;
    self->chunk = NULL;
    self->view = NULL;
    self->pin = NULL;
    self->chunk_start = 0;
    self->chunk_len = 0;
    self->chunk_cap = blksize > CHUNK ? blksize : CHUNK;
    struct stat st;
    self->shareable = window == 1 && blksize <= CHUNK && fstat(file, &st) == 0 && S_ISREG(st.st_mode);
    if (self->shareable) {
        self->version.dev = (unsigned long long)st.st_dev;
        self->version.ino = (unsigned long long)st.st_ino;
        self->version.size = (long long)st.st_size;
        self->version.mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        self->version.ctime = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    }
    return 0;
}

static int lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transfer);
    Py_VISIT(self->handoff);
    Py_VISIT(self->timer);
    Py_VISIT(self->buf.obj);
    return 0;
}

static int lane_clear(Lane *self)
{
    Py_CLEAR(self->transfer);
    Py_CLEAR(self->handoff);
    Py_CLEAR(self->timer);
    if (self->buf.obj != NULL)
        PyBuffer_Release(&self->buf);
    self->rbuf = NULL;
    self->rlen = 0;
    return 0;
}

/* A block read the page cache did not answer at once (or short): counted, Python's. */
static void read_refused(Lane *self, ssize_t got)
{
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        total_would_block++;
    else if (got < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS))
        self->nowait = 0;  /* this kernel or file system cannot: the threadpool reads */
}

/* The lane no longer sends from its chunk (shared: unpinned). */
static void lane_drop_view(Lane *self)
{
    if (self->pin != NULL) {
        self->pin->pins--;
        self->pin = NULL;
    }
    self->view = NULL;
    self->chunk_len = 0;
}

static void lane_free_chunk(Lane *self)
{
    lane_drop_view(self);
    PyMem_Free(self->chunk);
    self->chunk = NULL;
}

static void lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    lane_free_chunk(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The transfer's deadline as its `deadline` property gives it (INFINITY once finished). */
static double lane_transfer_deadline(Lane *self)
{
    if (self->cached)
        return self->c_deadline;
    PyObject *t = self->transfer;
    if (t == NULL)
        return INFINITY;
    int ok = 1;
    long long state = int_member(t, F_STATE, &ok);
    double deadline = float_member(t, F_DEADLINE, &ok);
    if (ok && state > SENDING)
        return INFINITY;  /* _DONE, _FAILED */
    if (!ok)  /* not a float (never, in ReadTransfer): at once, Python's timer decides */
        return 0.0;
    return deadline;
}

/* The lane's deadline is now *deadline*: the dispatcher's timer fires by then. */
static inline void lane_schedule(Lane *self, double deadline)
{
    Dispatcher *d = self->owner;
    if (d == NULL || self->sock < 0 || self->sock >= d->cap)
        return;
    d->deadlines[self->sock] = deadline;
    if (deadline < d->armed)
        dispatcher_arm(d, deadline);
}

/* Window 1: put the block last sent (header + chunk slice) into the slot, as on_ack_all's
 * `buf[4:] = chunk` would have. The chunk still holds it: it is refilled only after this. */
static void lane_materialize(Lane *self)
{
    if (!self->slot_stale)
        return;
    long long at = self->c_offset - self->blksize - self->chunk_start;
    char *slot = self->c_data[0];
    memcpy(slot, self->c_header, 4);
    memcpy(slot + 4, self->view + at, (size_t)self->blksize);
    self->slot_stale = 0;
}

/*
 * Write the running state back into the ReadTransfer: member for member what on_ack_all
 * would have produced. 0: done (or nothing cached); -1: no memory (a Python error; the state
 * stays here and the lane goes on).
 */
static int lane_flush(Lane *self)
{
    if (!self->cached)
        return 0;
    PyObject *t = self->transfer;
    long long window = self->window;
    PyObject *sent_at = MEMBER(t, F_SENT_AT), *resent = MEMBER(t, F_RESENT);
    PyObject *o_at[MAX_WINDOW];
    int n_at = 0;
    PyObject *o_base = PyLong_FromLongLong(self->c_base);
    PyObject *o_high = PyLong_FromLongLong(self->c_high);
    PyObject *o_next = PyLong_FromLongLong(self->c_next);
    PyObject *o_offset = PyLong_FromLongLong(self->c_offset);
    PyObject *o_acked = PyLong_FromLongLong(self->c_acked);
    PyObject *o_sent = PyLong_FromLongLong(self->c_sent);
    PyObject *o_progress = PyFloat_FromDouble(self->c_progress);
    PyObject *o_srtt = PyFloat_FromDouble(self->c_srtt);
    PyObject *o_rttvar = PyFloat_FromDouble(self->c_rttvar);
    PyObject *o_rto = PyFloat_FromDouble(self->c_rto);
    PyObject *o_deadline = PyFloat_FromDouble(self->c_deadline);
    PyObject *o_zero = PyLong_FromLong(0);
    int failed = !o_base || !o_high || !o_next || !o_offset || !o_acked || !o_sent
        || !o_progress || !o_srtt || !o_rttvar || !o_rto || !o_deadline || !o_zero;
    for (long long i = 0; i < window && !failed; i++) {
        /* the same float object for equal instants, as _fill() shares `now` */
        if (self->c_sent_at[i] == self->c_progress) {
            Py_INCREF(o_progress);
            o_at[n_at++] = o_progress;
        } else {
            o_at[n_at] = PyFloat_FromDouble(self->c_sent_at[i]);
            failed = o_at[n_at++] == NULL;
        }
    }
    if (failed) {
        Py_XDECREF(o_base); Py_XDECREF(o_high); Py_XDECREF(o_next); Py_XDECREF(o_offset);
        Py_XDECREF(o_acked); Py_XDECREF(o_sent); Py_XDECREF(o_progress); Py_XDECREF(o_srtt);
        Py_XDECREF(o_rttvar); Py_XDECREF(o_rto); Py_XDECREF(o_deadline); Py_XDECREF(o_zero);
        for (int i = 0; i < n_at; i++)
            Py_XDECREF(o_at[i]);
        return -1;
    }
    lane_materialize(self);
    set_member(t, F_SRTT, o_srtt);
    set_member(t, F_RTTVAR, o_rttvar);
    set_member(t, F_RTO, o_rto);
    set_member(t, F_BASE, o_base);
    set_member(t, F_TIMEOUTS, o_zero);
    set_member(t, F_BYTES_ACKED, o_acked);
    Py_INCREF(Py_False);
    set_member(t, F_STALLED, Py_False);
    /* load checked both lists (PyList_CheckExact, length window); only the lane wrote since */
    for (long long i = 0; i < window; i++) {
        PyObject *old = PyList_GET_ITEM(resent, i);
        Py_INCREF(Py_False);
        PyList_SET_ITEM(resent, i, Py_False);
        Py_DECREF(old);
        old = PyList_GET_ITEM(sent_at, i);
        PyList_SET_ITEM(sent_at, i, o_at[i]);
        Py_DECREF(old);
    }
    set_member(t, F_HIGH, o_high);
    set_member(t, F_OFFSET, o_offset);
    set_member(t, F_BYTES_SENT, o_sent);
    set_member(t, F_NEXT, o_next);
    set_member(t, F_PROGRESS_AT, o_progress);
    set_member(t, F_DEADLINE, o_deadline);
    self->cached = 0;
    return 0;
}

/* lane_flush() for the Python side; errors reported, never raised (the callers never fail). */
static void lane_flush_or_report(Lane *self)
{
    if (lane_flush(self) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
}

static PyObject *lane_rearm(Lane *self, PyObject *unused)
{
    lane_schedule(self, lane_transfer_deadline(self));
    Py_RETURN_NONE;
}

static PyObject *lane_sync(Lane *self, PyObject *unused)
{
    if (lane_flush(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/*
 * Load the running state from the transfer, when the ACK of everything sent may be the lane's:
 * the checks on_ack_all's lock-step path (and _fill() for a window) imply. 1: loaded
 * (`cached`); 0: the Python pump must take it (nothing was changed).
 */
static int lane_load(Lane *self)
{
    PyObject *t = self->transfer;
    int ok = 1;
    long long state = int_member(t, F_STATE, &ok);
    long long number = int_member(t, F_NEXT, &ok);
    long long base = int_member(t, F_BASE, &ok);
    long long high = int_member(t, F_HIGH, &ok);
    long long offset = int_member(t, F_OFFSET, &ok);
    long long bytes_acked = int_member(t, F_BYTES_ACKED, &ok);
    long long bytes_sent = int_member(t, F_BYTES_SENT, &ok);
    double srtt = float_member(t, F_SRTT, &ok);   /* None before the first sample */
    double rttvar = float_member(t, F_RTTVAR, &ok);
    double rto = float_member(t, F_RTO, &ok);
    double tmin = float_member(t, F_TIMEOUT_MIN, &ok);
    double tmax = float_member(t, F_TIMEOUT_MAX, &ok);
    double progress = float_member(t, F_PROGRESS_AT, &ok);
    double deadline = float_member(t, F_DEADLINE, &ok);
    long long blksize = self->blksize;
    long long window = self->window;
    if (!ok || state != SENDING || number <= base || MEMBER(t, F_EOF) != Py_False
            || MEMBER(t, F_LAST) != Py_None || number <= high || offset < 0)
        return 0;  /* not sending new blocks: on_ack()'s and _fill()'s cases */
    PyObject *resent = MEMBER(t, F_RESENT), *sent_at = MEMBER(t, F_SENT_AT);
    PyObject *slots = MEMBER(t, F_SLOTS), *lengths = MEMBER(t, F_LENGTHS);
    PyObject *datagrams = MEMBER(t, F_DATAGRAMS);
    if (resent == NULL || sent_at == NULL || slots == NULL || lengths == NULL || datagrams == NULL
            || !PyList_CheckExact(resent) || PyList_GET_SIZE(resent) != window
            || !PyList_CheckExact(sent_at) || PyList_GET_SIZE(sent_at) != window
            || !PyList_CheckExact(slots) || PyList_GET_SIZE(slots) != window
            || !PyList_CheckExact(lengths) || PyList_GET_SIZE(lengths) != window
            || !PyList_CheckExact(datagrams) || PyList_GET_SIZE(datagrams) != window)
        return 0;
    Py_ssize_t acked_slot = (Py_ssize_t)((number - 1) % window);
    if (PyList_GET_ITEM(resent, acked_slot) != Py_False)
        return 0;  /* Karn's rule: no sample; rare, Python's */
    for (long long i = 0; i < window; i++) {
        PyObject *at = PyList_GET_ITEM(sent_at, i);
        if (!PyFloat_CheckExact(at))
            return 0;
        self->c_sent_at[i] = PyFloat_AS_DOUBLE(at);
    }
    /* every slot allocated and full-sized, its datagram view made (_store() would keep it) */
    for (long long i = 0; i < window; i++) {
        PyObject *slot = PyList_GET_ITEM(slots, i);
        PyObject *length = PyList_GET_ITEM(lengths, i);
        if (!PyByteArray_CheckExact(slot) || PyByteArray_GET_SIZE(slot) != 4 + blksize
                || !PyLong_CheckExact(length) || PyList_GET_ITEM(datagrams, i) == Py_None)
            return 0;
        int overflow = 0;
        if (PyLong_AsLongLongAndOverflow(length, &overflow) != 4 + blksize) {
            PyErr_Clear();
            return 0;  /* a short last block's datagram */
        }
        self->c_data[i] = PyByteArray_AS_STRING(slot);
    }
    self->c_next = number;
    self->c_base = base;
    self->c_high = high;
    self->c_offset = offset;
    self->c_acked = bytes_acked;
    self->c_sent = bytes_sent;
    self->c_srtt = srtt;
    self->c_rttvar = rttvar;
    self->c_rto = rto;
    self->c_tmin = tmin;
    self->c_tmax = tmax;
    self->c_progress = progress;
    self->c_deadline = deadline;
    self->slot_stale = 0;
    self->cached = 1;
    return 1;
}

static inline int same_version(const FileVersion *a, const FileVersion *b)
{
    return a->ino == b->ino && a->dev == b->dev && a->size == b->size && a->mtime == b->mtime
        && a->ctime == b->ctime;
}

/* The lane sends from shared chunk *c* now, which stays pinned until lane_drop_view(). */
static inline void lane_pin(Lane *self, SharedChunk *c)
{
    c->pins++;
    self->pin = c;
    self->view = c->data;
    self->chunk_start = c->start;
    self->chunk_len = c->len;
}

/* The block at *offset* from the shared chunks (see "Shared read-ahead"): 1, the lane sends
 * from a shared chunk now (pinned); 0, none to be had (all places pinned, or the offset off the
 * block grid): the lane's own chunk; -1, the page cache did not answer: Python's. */
static int lane_share(Lane *self, long long offset)
{
    long long blksize = self->blksize;
    long long per = CHUNK / blksize * blksize;   /* whole blocks: blksize <= CHUNK */
    if (offset % blksize != 0)
        return 0;
    long long start = offset - offset % per;
    uint64_t h = (self->version.ino * 0x9E3779B97F4A7C15ULL) ^ (self->version.dev * 0xC2B2AE3D27D4EB4FULL)
        ^ ((uint64_t)(start / per) * 0x165667B19E3779F9ULL) ^ (uint64_t)blksize;
    h ^= h >> 29;
    SharedChunk *set = &shared[(h % (SHARED_SLOTS / SHARED_WAYS)) * SHARED_WAYS], *victim = NULL;
    int64_t now = now_ns();
    for (int i = 0; i < SHARED_WAYS; i++) {
        SharedChunk *c = &set[i];
        if (c->len > 0 && c->start == start && c->blksize == blksize && now - c->read_at < SHARED_TTL_NS
                && offset + blksize <= start + c->len && same_version(&c->version, &self->version)) {
            total_shared_hits++;
            lane_pin(self, c);
            return 1;
        }
        if (c->pins == 0 && (victim == NULL || c->read_at < victim->read_at))
            victim = c;
    }
    if (victim == NULL)
        return 0;
    if (victim->data == NULL && (victim->data = PyMem_Malloc(CHUNK)) == NULL)
        return 0;
    long long want = per;
    if (want > self->size - start)
        want = self->size - start;
    victim->len = 0;
    struct iovec iov = {victim->data, (size_t)want};
    ssize_t got = preadv2(self->file, &iov, 1, (off_t)start, RWF_NOWAIT);
    total_shared_reads++;
    if (got < offset - start + blksize) {
        read_refused(self, got);
        return -1;
    }
    victim->version = self->version;
    victim->blksize = blksize;
    victim->start = start;
    victim->len = got;
    victim->read_at = now;
    lane_pin(self, victim);
    return 1;
}

/*
 * The ACK in the buffer, as ReadTransfer.on_ack_all's lock-step path would take it.
 * 1: done (the next block is sent); 0: the Python pump must take it (nothing was changed in
 * the running state: lane_flush() then gives the transfer as it was before this ACK).
 */
static int lane_ack(Lane *self, Py_ssize_t size)
{
    const unsigned char *buf = (const unsigned char *)self->rbuf;
    if (size != 4 || buf[0] != 0 || buf[1] != OP_ACK)
        return 0;
    long block = (long)buf[2] << 8 | buf[3];
    if (!self->cached) {
        /* cheap first: the ACK of everything sent (sent_all()) */
        int ok = 1;
        long long number = int_member(self->transfer, F_NEXT, &ok);
        if (!ok || ((block - number + 1) & 0xFFFF) != 0 || !lane_load(self))
            return 0;
    }
    long long number = self->c_next;
    long long blksize = self->blksize;
    long long window = self->window;
    long long span = window * blksize;  /* the next window: all new, all full blocks */
    long long offset = self->c_offset;
    if (((block - number + 1) & 0xFFFF) != 0 || offset + span > self->size || !self->nowait)
        return 0;  /* not the ACK of everything sent; the last block, or a short one: _fill() */

    if (window == 1) {
        /* The block from the read-ahead chunk, refilled from the page cache when it does not
         * hold it, or Python's (WouldBlock, the end, a truncated file): a chunk holds what the
         * file held when it was read, as massboot.files' buffer does. It is sent from the
         * chunk (header and slice, two iovecs): the slot gets it only when Python may need
         * it (lane_materialize()). */
        if (offset < self->chunk_start || offset + blksize > self->chunk_start + self->chunk_len) {
            lane_materialize(self);  /* the block sent last leaves the chunk now */
            lane_drop_view(self);
            int shared_ok = self->shareable ? lane_share(self, offset) : 0;
            if (shared_ok < 0)
                return 0;
            if (shared_ok == 0) {
                if (self->chunk == NULL) {
                    self->chunk = PyMem_Malloc((size_t)self->chunk_cap);
                    if (self->chunk == NULL)
                        return 0;
                }
                long long want = self->chunk_cap;
                if (want > self->size - offset)
                    want = self->size - offset;   /* >= blksize, checked above */
                struct iovec iov = {self->chunk, (size_t)want};
                ssize_t got = preadv2(self->file, &iov, 1, (off_t)offset, RWF_NOWAIT);
                total_own_reads++;
                if (got < blksize) {
                    read_refused(self, got);
                    return 0;
                }
                self->view = self->chunk;
                self->chunk_start = offset;
                self->chunk_len = got;
            }
        }
    } else {
        /* RFC 7440: the whole next window in one preadv2, each block straight into its slot
         * (they held blocks this ACK acknowledges); anything short is Python's */
        struct iovec iov[MAX_WINDOW];
        for (long long i = 0; i < window; i++) {
            iov[i].iov_base = self->c_data[(number + i) % window] + 4;
            iov[i].iov_len = (size_t)blksize;
        }
        ssize_t got = preadv2(self->file, iov, (int)window, (off_t)offset, RWF_NOWAIT);
        if (got != span) {
            read_refused(self, got);
            return 0;  /* the slots hold other bytes now: Python's _fill() reads them again */
        }
    }

    double now = monotonic();
    /* RFC 6298 section 2 (on_ack_all's inline _sample(), the same operations in order) */
    double rtt = now - self->c_sent_at[(number - 1) % window];
    if (rtt < 0.0)
        rtt = 0.0;
    double srtt = self->c_srtt, rttvar = self->c_rttvar;
    double err = srtt - rtt;
    rttvar = 0.75 * rttvar + 0.25 * (err >= 0.0 ? err : -err);
    srtt = 0.875 * srtt + 0.125 * rtt;
    double var = K_VAR * rttvar;
    double rto = srtt + (var > GRANULARITY ? var : GRANULARITY);
    rto = rto < self->c_tmin ? self->c_tmin : rto > self->c_tmax ? self->c_tmax : rto;

    /* the state, as on_ack_all (and _fill() for a window) leaves it */
    self->c_srtt = srtt;
    self->c_rttvar = rttvar;
    self->c_rto = rto;
    self->c_acked += (number - self->c_base) * blksize;
    self->c_base = number;
    self->c_high = number + window - 1;
    self->c_offset = offset + span;
    self->c_sent += span;
    self->c_next = number + window;
    self->c_progress = now;
    self->c_deadline = now + rto;
    for (long long i = 0; i < window; i++)
        self->c_sent_at[i] = now;  /* every slot: the whole window is new */

    /* DATA headers, RFC 1350 section 5: block numbers wrap after 65535; a failed send is a
     * loss: the timer resends (as _Pump does) */
    if (window == 1) {
        self->c_header[0] = 0;
        self->c_header[1] = OP_DATA;
        self->c_header[2] = (char)((number >> 8) & 0xFF);
        self->c_header[3] = (char)(number & 0xFF);
        struct iovec iov[2] = {
            {self->c_header, 4},
            {self->view + (offset - self->chunk_start), (size_t)blksize},
        };
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
        self->slot_stale = 1;
        (void)sendmsg(self->sock, &msg, MSG_DONTWAIT);
    } else {
        struct mmsghdr msgs[MAX_WINDOW];
        struct iovec iov[MAX_WINDOW];
        memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)window);
        for (long long i = 0; i < window; i++) {
            long long n = number + i;
            char *data = self->c_data[n % window];
            data[0] = 0;
            data[1] = OP_DATA;
            data[2] = (char)((n >> 8) & 0xFF);
            data[3] = (char)(n & 0xFF);
            iov[i].iov_base = data;
            iov[i].iov_len = (size_t)(4 + blksize);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        unsigned int done = 0;
        while (done < (unsigned int)window) {
            int n = sendmmsg(self->sock, msgs + done, (unsigned int)window - done, MSG_DONTWAIT);
            if (n <= 0)
                break;
            done += (unsigned int)n;
        }
    }
    self->blocks += (unsigned long long)window;
    total_blocks += (unsigned long long)window;

    /* progress: the deadline moved to now + RTO; no call out of C */
    lane_schedule(self, self->c_deadline);
    return 1;
}

/* The socket is readable: one datagram, as _Pump.on_readable takes one. -1: a Python error. */
static int lane_ready(Lane *self)
{
    if (self->transfer == NULL)
        return 0;
    /* recv, not recvmsg scattering the first bytes into the lane: recvmsg with two iovecs
     * costs ~120 ns more in the kernel (measured on loopback), more than the buffer's cache
     * line saves */
    ssize_t size = recv(self->sock, self->rbuf, (size_t)self->rlen, MSG_DONTWAIT);
    if (size < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;  /* a stale wake-up */
        size = -1;     /* an error reported late (ICMP): the pump's drain sees it again */
    } else if (lane_ack(self, size)) {
        return 0;
    }
    lane_flush_or_report(self);  /* the transfer as it was before this datagram */
    self->handoffs++;
    total_handoffs++;
    PyObject *arg = PyLong_FromSsize_t(size);
    if (arg == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(self->handoff, arg);
    Py_DECREF(arg);
    /* Python may have moved the deadline (without calling rearm()) */
    lane_schedule(self, lane_transfer_deadline(self));
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *lane_get_blocks(Lane *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->blocks);
}

static PyObject *lane_get_handoffs(Lane *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->handoffs);
}

static PyMethodDef lane_methods[] = {
    {"sync", (PyCFunction)lane_sync, METH_NOARGS,
     "sync(): write the running state back into the transfer (before Python reads it)"},
    {"rearm", (PyCFunction)lane_rearm, METH_NOARGS,
     "rearm(): the transfer's deadline moved (Python): the dispatcher's timer fires by it"},
    {NULL}
};

static PyGetSetDef lane_getset[] = {
    {"blocks", (getter)lane_get_blocks, NULL, "blocks this lane sent", NULL},
    {"handoffs", (getter)lane_get_handoffs, NULL, "datagrams handed to the Python pump", NULL},
    {NULL}
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "massboot.tftp._fastpath.Lane",
    .tp_doc = "Lane(transfer, sock, buf, file, size, handoff, timer): one lock-step transfer",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_getset = lane_getset,
};

/* -- Dispatcher ------------------------------------------------------------------------------ */


static int dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"busy_poll_us", "storm_scan_us", NULL};
    int busy_poll_us = 0, storm_scan_us = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ii", kwlist, &busy_poll_us, &storm_scan_us))
        return -1;
    if (busy_poll_us < 0 || busy_poll_us > BUSY_POLL_MAX_US) {
        PyErr_Format(PyExc_ValueError, "busy_poll_us %d outside 0..%d", busy_poll_us,
                     BUSY_POLL_MAX_US);
        return -1;
    }
    if (storm_scan_us < 0 || storm_scan_us > BUSY_POLL_MAX_US) {
        PyErr_Format(PyExc_ValueError, "storm_scan_us %d outside 0..%d", storm_scan_us,
                     BUSY_POLL_MAX_US);
        return -1;
    }
    self->spin_max = self->spin = (int64_t)busy_poll_us * 1000;
    self->scan_idle = (int64_t)storm_scan_us * 1000;
    if (self->epfd > 0 || self->table != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Dispatcher already initialised");
        return -1;
    }
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        self->epfd = -1;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    self->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = self->tfd};
    struct epoll_event ev2 = {.events = EPOLLIN, .data.fd = self->evfd};
    if (self->tfd < 0 || epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->tfd, &ev) < 0
            || self->evfd < 0 || epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->evfd, &ev2) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        if (self->tfd >= 0)
            close(self->tfd);
        if (self->evfd >= 0)
            close(self->evfd);
        close(self->epfd);
        self->tfd = self->evfd = self->epfd = -1;
        return -1;
    }
    self->armed = INFINITY;
    return 0;
}

static PyObject *dispatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Dispatcher *self = (Dispatcher *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->epfd = self->tfd = self->evfd = -1;
        self->armed = INFINITY;
    }
    return (PyObject *)self;
}

static void dispatcher_clear_table(Dispatcher *self)
{
    PyObject **table = self->table;
    int cap = self->cap;
    self->table = NULL;
    PyMem_Free(self->deadlines);
    self->deadlines = NULL;
    PyMem_Free(self->pfds);
    self->pfds = NULL;
    PyMem_Free(self->pidx);
    self->pidx = NULL;
    PyMem_Free(self->ready);
    self->ready = NULL;
    self->npfds = 0;
    if (self->scanning) {
        uint64_t v;
        (void)read(self->evfd, &v, sizeof(v));  /* the hub may sleep again */
        self->scanning = 0;
    }
    self->cap = 0;
    self->count = 0;
    if (self->armed != INFINITY)
        dispatcher_arm(self, INFINITY);
    if (table != NULL) {
        for (int i = 0; i < cap; i++) {
            if (table[i] != NULL && Py_IS_TYPE(table[i], &LaneType)
                    && ((Lane *)table[i])->owner == self) {
                ((Lane *)table[i])->owner = NULL;
                lane_flush_or_report((Lane *)table[i]);
            }
            Py_XDECREF(table[i]);
        }
        PyMem_Free(table);
    }
}

static int dispatcher_traverse(Dispatcher *self, visitproc visit, void *arg)
{
    for (int i = 0; i < self->cap; i++)
        Py_VISIT(self->table[i]);
    return 0;
}

static int dispatcher_tp_clear(Dispatcher *self)
{
    dispatcher_clear_table(self);
    return 0;
}

static void dispatcher_dealloc(Dispatcher *self)
{
    PyObject_GC_UnTrack(self);
    dispatcher_clear_table(self);
    if (self->tfd >= 0)
        close(self->tfd);
    if (self->evfd >= 0)
        close(self->evfd);
    if (self->epfd >= 0)
        close(self->epfd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- storm scan: the lane sockets polled in passes instead of watched by epoll ---------------- */

static void scan_add(Dispatcher *self, int fd)
{
    struct pollfd *p = &self->pfds[self->npfds];
    p->fd = fd;
    p->events = POLLIN;
    p->revents = 0;
    self->pidx[fd] = self->npfds++;
}

static void scan_drop(Dispatcher *self, int fd)
{
    int i = self->pidx[fd];
    self->pidx[fd] = -1;
    self->pfds[i] = self->pfds[--self->npfds];
    if (i < self->npfds)
        self->pidx[self->pfds[i].fd] = i;
}

/* Every lane socket leaves the epoll set for the scan's poll() passes; the eventfd, readable
 * from now on, has the hub call on_ready() again after its other work instead of sleeping. */
static void scan_enter(Dispatcher *self)
{
    for (int fd = 0; fd < self->cap; fd++) {
        PyObject *entry = self->table[fd];
        if (entry != NULL && Py_IS_TYPE(entry, &LaneType) && ((Lane *)entry)->sock == fd
                && self->pidx[fd] < 0) {
            (void)epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
            scan_add(self, fd);
        }
    }
    uint64_t one = 1;
    if (write(self->evfd, &one, sizeof(one)) != sizeof(one)) {
        /* cannot happen (a counter of 1 on a fresh eventfd); the hub would sleep: give back */
        for (int i = 0; i < self->npfds; i++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = self->pfds[i].fd};
            (void)epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->pfds[i].fd, &ev);
            self->pidx[self->pfds[i].fd] = -1;
        }
        self->npfds = 0;
        return;
    }
    self->scanning = 1;
    self->idle_since = 0;
    total_scans++;
}

/* The storm is over (no lane datagram for the window): the lane sockets go back to the epoll
 * set (a datagram that came meanwhile makes its socket ready there at once), the eventfd is
 * read empty, the hub may sleep again. */
static void scan_leave(Dispatcher *self)
{
    for (int i = 0; i < self->npfds; i++) {
        int fd = self->pfds[i].fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        (void)epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev);
        self->pidx[fd] = -1;
    }
    self->npfds = 0;
    uint64_t v;
    (void)read(self->evfd, &v, sizeof(v));
    self->scanning = 0;
}

static PyObject *dispatcher_add(Dispatcher *self, PyObject *args)
{
    int fd;
    PyObject *handler;
    if (!PyArg_ParseTuple(args, "iO", &fd, &handler))
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "Dispatcher closed");
        return NULL;
    }
    if (fd < 0 || (!PyCallable_Check(handler) && !Py_IS_TYPE(handler, &LaneType))) {
        PyErr_SetString(PyExc_ValueError, "add(fd, handler): a descriptor and a callable or Lane");
        return NULL;
    }
    if (fd < self->cap && self->table[fd] != NULL)
        return PyLong_FromLong(self->count);   /* already there, as _Dispatcher.add */
    if (fd >= self->cap) {
        int cap = self->cap ? self->cap : 1024;
        while (cap <= fd)
            cap *= 2;
        double *deadlines = PyMem_Realloc(self->deadlines, sizeof(double) * (size_t)cap);
        if (deadlines == NULL)
            return PyErr_NoMemory();
        self->deadlines = deadlines;
        struct pollfd *pfds = PyMem_Realloc(self->pfds, sizeof(struct pollfd) * (size_t)cap);
        if (pfds == NULL)
            return PyErr_NoMemory();
        self->pfds = pfds;
        int *pidx = PyMem_Realloc(self->pidx, sizeof(int) * (size_t)cap);
        if (pidx == NULL)
            return PyErr_NoMemory();
        self->pidx = pidx;
        int *ready = PyMem_Realloc(self->ready, sizeof(int) * (size_t)cap);
        if (ready == NULL)
            return PyErr_NoMemory();
        self->ready = ready;
        for (int i = self->cap; i < cap; i++)
            pidx[i] = -1;
        PyObject **table = PyMem_Realloc(self->table, sizeof(PyObject *) * (size_t)cap);
        if (table == NULL)
            return PyErr_NoMemory();
        for (int i = self->cap; i < cap; i++) {
            table[i] = NULL;
            deadlines[i] = INFINITY;
        }
        self->table = table;
        self->cap = cap;
    }
    if (Py_IS_TYPE(handler, &LaneType) && ((Lane *)handler)->owner != NULL) {
        PyErr_SetString(PyExc_ValueError, "add(): this Lane is served by a dispatcher already");
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (self->scanning && Py_IS_TYPE(handler, &LaneType) && ((Lane *)handler)->sock == fd) {
        scan_add(self, fd);   /* a transfer begun during a storm scan: polled with the others */
    } else if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        if (errno != EEXIST || epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_INCREF(handler);
    self->table[fd] = handler;
    self->count++;
    if (Py_IS_TYPE(handler, &LaneType) && ((Lane *)handler)->sock == fd) {
        Lane *lane = (Lane *)handler;
        lane->owner = self;   /* its deadline is this dispatcher's timer's business */
        lane_schedule(lane, lane_transfer_deadline(lane));
    }
    return PyLong_FromLong(self->count);
}

static PyObject *dispatcher_remove(Dispatcher *self, PyObject *arg)
{
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd >= self->cap || self->table[fd] == NULL)
        return PyLong_FromLong(self->count);
    PyObject *old = self->table[fd];
    self->table[fd] = NULL;
    self->deadlines[fd] = INFINITY;  /* the timer may fire early once: nothing is due */
    self->count--;
    if (Py_IS_TYPE(old, &LaneType) && ((Lane *)old)->owner == self) {
        Lane *lane = (Lane *)old;
        lane->owner = NULL;
        lane_flush_or_report(lane);  /* the transfer is Python's again */
        if (!lane->cached)
            lane_drop_view(lane);    /* its shared chunk free for others (the slot holds the block) */
    }
    if (self->pidx[fd] >= 0)
        scan_drop(self, fd);  /* polled in a storm scan, not in the epoll set */
    else if (self->epfd >= 0)
        (void)epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);  /* ENOENT/EBADF: already closed */
    if (self->scanning && self->npfds == 0)
        scan_leave(self);     /* the storm's last transfer ended */
    Py_DECREF(old);
    return PyLong_FromLong(self->count);
}

/* The timerfd fired: every lane whose deadline passed gets its Python timer callback (which
 * drains its socket first, then resends or gives up, as the Python path's timer); then the
 * timer is armed for the earliest deadline left. */
static void dispatcher_expire(Dispatcher *self)
{
    uint64_t expirations;
    if (self->tfd < 0)
        return;
    total_timer_fires++;
    (void)read(self->tfd, &expirations, sizeof(expirations));  /* EAGAIN: an early wake-up */
    self->armed = INFINITY;  /* fired (or about to be re-armed below) */
    double now = monotonic();
    for (int fd = 0; fd < self->cap; fd++) {
        /* a callback may end transfers, add others, grow or clear the table: re-read */
        if (self->deadlines == NULL || self->deadlines[fd] > now)
            continue;
        PyObject *entry = self->table[fd];
        if (entry == NULL || !Py_IS_TYPE(entry, &LaneType)) {
            self->deadlines[fd] = INFINITY;
            continue;
        }
        Lane *lane = (Lane *)entry;
        double deadline = lane_transfer_deadline(lane);  /* Python may have moved it */
        self->deadlines[fd] = deadline;
        if (deadline > now || lane->timer == NULL)
            continue;
        total_expired++;
        Py_INCREF(entry);
        lane_flush_or_report(lane);
        PyObject *r = PyObject_CallNoArgs(lane->timer);
        if (r == NULL)  /* _on_timer never raises; a bug is reported, the others served */
            PyErr_WriteUnraisable(entry);
        Py_XDECREF(r);
        if (lane->owner == self && self->table != NULL && fd < self->cap && self->table[fd] == entry)
            self->deadlines[fd] = lane_transfer_deadline(lane);
        Py_DECREF(entry);
    }
    double earliest = INFINITY;
    for (int fd = 0; fd < self->cap; fd++) {
        if (self->deadlines[fd] < earliest)
            earliest = self->deadlines[fd];
    }
    if (earliest != self->armed)
        dispatcher_arm(self, earliest);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Serve one readable descriptor; 1 when it was a lane's. A handler called before may have ended its transfer (a new
 * socket may reuse the number, the table may have grown, the dispatcher may be closed): it is
 * looked up anew; a stale wake-up finds nothing to read, harmlessly. */
static int dispatcher_serve_fd(Dispatcher *self, int fd)
{
    if (fd < 0 || fd >= self->cap || self->table == NULL)
        return 0;
    PyObject *entry = self->table[fd];
    if (entry == NULL)
        return 0;
    Py_INCREF(entry);
    int failed, lane = Py_IS_TYPE(entry, &LaneType);
    if (lane) {
        failed = lane_ready((Lane *)entry) < 0;
    } else {
        PyObject *r = PyObject_CallNoArgs(entry);
        failed = r == NULL;
        Py_XDECREF(r);
    }
    if (failed)  /* the handlers never raise; a bug is reported, the others served */
        PyErr_WriteUnraisable(entry);
    Py_DECREF(entry);
    return lane;
}

/* Serve the n ready descriptors of one epoll_wait; the number of them that were lanes. */
static int dispatcher_serve(Dispatcher *self, struct epoll_event *events, int n)
{
    int timer = 0, lanes = 0;
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        if (fd == self->tfd && fd >= 0) {
            timer = 1;  /* after the ACKs of this wake-up: an ACK served is not a timeout */
            continue;
        }
        if (fd == self->evfd && fd >= 0)
            continue;   /* the storm scan's: nothing to read */
        lanes += dispatcher_serve_fd(self, fd);
    }
    if (timer)
        dispatcher_expire(self);
    return lanes;
}

/* One on_ready() call in a storm scan: the epoll set first (the timer, the Python handlers),
 * then poll() passes over the lane sockets, each serving every socket found readable, until
 * the serving budget is spent (back to the hub, which calls again: the eventfd) or no lane had
 * a datagram for the storm-scan window (the scan ends). Between empty passes the CPU is
 * yielded with the GIL released, as in a busy poll, and that time counts as busy polling. */
static void dispatcher_scan(Dispatcher *self, struct epoll_event *events)
{
    int n = epoll_wait(self->epfd, events, READY_MAX, 0);
    if (n > 0)
        dispatcher_serve(self, events, n);
    int64_t began = now_ns();
    while (self->scanning && self->epfd >= 0) {
        int k = poll(self->pfds, (nfds_t)self->npfds, 0);
        total_scan_passes++;
        int m = 0;
        int *ready = self->ready;
        /* every readable socket of the pass first (serving may add, drop or move entries),
         * all served before the next pass: none waits behind sockets that are ready again */
        for (int i = 0; k > 0 && i < self->npfds;) {
            short re = self->pfds[i].revents;
            if (re & POLLNVAL) {   /* closed without remove(): epoll would have dropped it */
                scan_drop(self, self->pfds[i].fd);   /* entry i is now another of this pass */
                continue;
            }
            if (re)
                ready[m++] = self->pfds[i].fd;
            i++;
        }
        if (m > 0) {
            total_scan_ready += (unsigned long long)m;
            /* self->ready read anew: a handler's add() may have moved it (realloc keeps
             * the entries), a close() ends the scan */
            for (int i = 0; i < m && self->scanning && self->ready != NULL; i++)
                dispatcher_serve_fd(self, self->ready[i]);
            self->idle_since = 0;
        } else {
            int64_t t0 = now_ns();
            if (self->idle_since == 0)
                self->idle_since = t0;
            else if (t0 - self->idle_since >= self->scan_idle) {
                scan_leave(self);
                break;
            }
            Py_BEGIN_ALLOW_THREADS
            sched_yield();   /* another task runnable on this CPU (the clients, on a shared box) */
            Py_END_ALLOW_THREADS
            total_spin_time += now_ns() - t0;
        }
        if (now_ns() - began > SERVE_BUDGET_NS)
            break;   /* the hub's other work; the eventfd brings it back here */
    }
}

/* Busy poll: poll the set again, yielding the CPU in between, until something is ready or the
 * spin window passed; the GIL is released meanwhile (the lease and log threads may run). The
 * number ready (0: none, or an error: back to the hub, which polls the set again). */
static int dispatcher_spin(Dispatcher *self, struct epoll_event *events)
{
    int epfd = self->epfd, n = 0;
    int64_t window = self->spin, began, ended;
    Py_BEGIN_ALLOW_THREADS
    began = now_ns();
    for (;;) {
        n = epoll_wait(epfd, events, READY_MAX, 0);
        ended = now_ns();
        if (n != 0 || ended - began >= window)
            break;
        sched_yield();   /* another task runnable on this CPU (the clients, on a shared box) */
    }
    Py_END_ALLOW_THREADS
    total_spin_time += ended - began;
    if (n > 0) {
        total_spin_hits++;
        return n;
    }
    total_spin_misses++;
    self->spin /= 2;     /* nothing came: a shorter window next time (a trickle spins ~never) */
    if (self->spin < SPIN_FLOOR_NS)
        self->spin = 0;
    return 0;
}

static PyObject *dispatcher_on_ready(Dispatcher *self, PyObject *unused)
{
    struct epoll_event events[READY_MAX];
    if (self->epfd < 0)
        Py_RETURN_NONE;
    if (self->scanning) {
        dispatcher_scan(self, events);
        Py_RETURN_NONE;
    }
    int64_t began = 0;
    if (self->spin_max > 0) {
        began = now_ns();
        /* woken within the configured window after the last hand-back: spinning would have
         * caught it; the window grows back (doubling from the floor) */
        if (self->spin < self->spin_max && self->left_at > 0
                && began - self->left_at <= self->spin_max) {
            self->spin = self->spin < SPIN_FLOOR_NS ? SPIN_FLOOR_NS : self->spin * 2;
            if (self->spin > self->spin_max)
                self->spin = self->spin_max;
        }
    }
    int n = epoll_wait(self->epfd, events, READY_MAX, 0);
    if (n < 0) {
        if (errno == EINTR)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    while (n > 0) {
        int lanes = dispatcher_serve(self, events, n);
        if (lanes >= SCAN_MIN_READY && self->scan_idle > 0 && self->epfd >= 0) {
            scan_enter(self);   /* a storm: served in poll() passes from the next call */
            break;
        }
        /* a handler may have closed the set; spin only in a storm, within the budget */
        if (self->spin <= 0 || self->epfd < 0 || self->count < SPIN_MIN_SOCKETS
                || now_ns() - began > SERVE_BUDGET_NS)
            break;
        n = dispatcher_spin(self, events);
    }
    if (self->spin_max > 0)
        self->left_at = now_ns();
    Py_RETURN_NONE;
}

static PyObject *dispatcher_fileno(Dispatcher *self, PyObject *unused)
{
    return PyLong_FromLong(self->epfd);
}

static PyObject *dispatcher_close(Dispatcher *self, PyObject *unused)
{
    dispatcher_clear_table(self);
    if (self->tfd >= 0) {
        close(self->tfd);
        self->tfd = -1;
    }
    if (self->evfd >= 0) {
        close(self->evfd);
        self->evfd = -1;
    }
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *dispatcher_len(Dispatcher *self, void *closure)
{
    return PyLong_FromLong(self->count);
}

static PyMethodDef dispatcher_methods[] = {
    {"add", (PyCFunction)dispatcher_add, METH_VARARGS,
     "add(fd, handler): serve fd when readable (a callable or a Lane); the count watched"},
    {"remove", (PyCFunction)dispatcher_remove, METH_O,
     "remove(fd): stop watching fd (before it is closed); the count watched"},
    {"on_ready", (PyCFunction)dispatcher_on_ready, METH_NOARGS,
     "serve the ready descriptors (the io watcher's callback)"},
    {"fileno", (PyCFunction)dispatcher_fileno, METH_NOARGS, "the epoll descriptor"},
    {"close", (PyCFunction)dispatcher_close, METH_NOARGS, "forget every entry, close the set"},
    {NULL}
};

static PyObject *dispatcher_get_spin(Dispatcher *self, void *closure)
{
    return Py_BuildValue("(LL)", (long long)self->spin_max / 1000, (long long)self->spin / 1000);
}

static PyObject *dispatcher_get_scan(Dispatcher *self, void *closure)
{
    return Py_BuildValue("(Lii)", (long long)self->scan_idle / 1000, self->scanning, self->npfds);
}

static PyGetSetDef dispatcher_getset[] = {
    {"count", (getter)dispatcher_len, NULL, "descriptors watched", NULL},
    {"busy_poll", (getter)dispatcher_get_spin, NULL,
     "(configured µs, window now µs); the polls themselves: busy_poll_counters()", NULL},
    {"storm_scan", (getter)dispatcher_get_scan, NULL,
     "(window µs, scanning now, lane sockets polled); the scans: scan_counters()", NULL},
    {NULL}
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "massboot.tftp._fastpath.Dispatcher",
    .tp_doc = "Dispatcher(busy_poll_us=0, storm_scan_us=0): one epoll set for the transfer "
              "sockets, lanes served in C",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = dispatcher_new,
    .tp_init = (initproc)dispatcher_init,
    .tp_dealloc = (destructor)dispatcher_dealloc,
    .tp_traverse = (traverseproc)dispatcher_traverse,
    .tp_clear = (inquiry)dispatcher_tp_clear,
    .tp_methods = dispatcher_methods,
    .tp_getset = dispatcher_getset,
};

/* -- module -------------------------------------------------------------------------------- */

static PyObject *fp_counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KKK)", total_blocks, total_handoffs, total_would_block);
}

static PyObject *fp_timer_counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KKK)", total_timer_arms, total_timer_fires, total_expired);
}

static PyObject *fp_busy_poll_counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KKL)", total_spin_hits, total_spin_misses, total_spin_time);
}

static PyObject *fp_chunk_counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KKK)", total_shared_hits, total_shared_reads, total_own_reads);
}

static PyObject *fp_scan_counters(PyObject *module, PyObject *unused)
{
    return Py_BuildValue("(KKK)", total_scans, total_scan_passes, total_scan_ready);
}

static PyMethodDef module_methods[] = {
    {"chunk_counters", fp_chunk_counters, METH_NOARGS,
     "(chunks found shared, chunks read into the shared table, chunks read by a lane alone)"},
    {"scan_counters", fp_scan_counters, METH_NOARGS,
     "(storm scans begun, poll() passes, lane sockets found readable), process-wide"},
    {"busy_poll_counters", fp_busy_poll_counters, METH_NOARGS,
     "(busy polls that found a datagram, busy polls that did not, ns spent), process-wide"},
    {"timer_counters", fp_timer_counters, METH_NOARGS,
     "(timer arms, timer wake-ups, lane deadlines that passed), process-wide"},
    {"bind", fp_bind, METH_O, "bind(ReadTransfer): find the member offsets lanes use"},
    {"counters", fp_counters, METH_NOARGS,
     "(blocks sent by lanes, datagrams lanes handed to Python, block reads that would have "
     "waited), process-wide"},
    {NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "massboot.tftp._fastpath",
    .m_doc = "The compiled TFTP data path (see massboot.tftp.server).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&DispatcherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    Py_INCREF(&DispatcherType);
    /* the glue contract with massboot/tftp/server.py (Lane's and Dispatcher's constructors and
     * methods): server.py's FAST_PATH_API; a module with another number (an old build left in
     * an updated checkout) is not used */
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0
            || PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType) < 0
            || PyModule_AddIntConstant(m, "API", 4) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
