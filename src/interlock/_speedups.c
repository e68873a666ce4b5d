/* interlock._speedups: the optional native accelerator of the memory:// fast path.
 *
 * What is here, and its pure-Python twin (keep them in step; tests run the contract suite on both,
 * "memory" and "memory-pure" in tests/backends.py):
 *
 *   LeaseBase                  twin: _lease._PyLeaseBase (the fields of a Lease and its finalizer,
 *                              which calls Lease._on_garbage_collected only while HELD)
 *   Lease release/__enter__/   twins: the Lease methods of the same name in _lease.py (the C ones
 *     __exit__                 release a HELD lease of a native channel; anything else calls them)
 *   Acquire                    twin: the coroutine of MemoryChannel.acquire_async (what the C
 *                              Semaphore.acquire_async returns)
 *   Mutex                      twin: _thread.allocate_lock()          (memory.py: _PyChannelState)
 *   ChannelState fields        twin: plain attributes set in memory.py _MemoryChannelBase.__init__
 *   ChannelState._grant_locked twin: memory.py _PyChannelState._grant_locked
 *   ChannelState._try_grant    twin: memory.py _PyChannelState._try_grant
 *   ChannelState.release       twin: memory.py _MemoryChannelBase._release (the C code handles the case
 *                              "no waiter queued, whole lease", and calls the Python one otherwise)
 *   facade methods             twins: the Python methods of the same name in _primitives.py (the C
 *                              ones handle the uncontended memory:// case and call the Python ones
 *                              for everything else: other backends, debug mode, waiting, arguments)
 *
 * Everything that waits (the waiter queue, cancellation, timeouts, deadlock detection, thread and task
 * death) stays in Python, except the common contended cases: see the "contended handoff" section at
 * the end of this file (ChannelState._release_contended / _acquire_contended).
 *
 * Mutex discipline: the fast paths hold the channel mutex only inside C. No Python code runs while it
 * is held, except finalizers run by a garbage collection that an allocation may trigger (exactly as in
 * the Python twin); those see the mutex locked and hand the release to the reaper thread.
 * KeyboardInterrupt: a signal handler runs only at the interpreter's check points, and C code has none,
 * so a C fast path either completes or changes nothing (the blocking mutex wait may raise before it
 * took the mutex, like _thread.lock).
 *
 * The GIL makes the process-wide token counter and the per-channel state safe; free-threaded builds
 * use the pure-Python path (the module refuses to import there).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030A0000
#error "interlock._speedups needs Python 3.10+"
#endif

/* ---------------------------------------------------------------------------------------------- */
/* module-wide references, set by configure() / bind_facades()                                    */

static PyObject *Lease_type = NULL;          /* interlock._lease.Lease */
static PyObject *untrack_task_death = NULL;  /* interlock._core.owner.untrack_task_death */
static PyObject *tls = NULL;                 /* interlock._core.owner._tls */
static PyObject *thread_owner_fn = NULL;     /* interlock._core.owner.thread_owner */
static PyObject *lease_module_dict = NULL;   /* interlock._lease.__dict__ (for _debug) */
static PyObject *empty_tuple = NULL;
static PyObject *one = NULL;  /* int 1: one permit */

/* Python fallbacks of the facade methods (the twins in _primitives.py) */
static PyObject *py_sem_enter, *py_sem_exit, *py_sem_acquire, *py_sem_aenter, *py_sem_aexit, *py_sem_acquire_async;
static PyObject *py_lock_enter, *py_lock_exit, *py_lock_acquire;
static PyObject *task_owner_fn = NULL;       /* _primitives._task_owner */

/* offsets of the __slots__ the facades read (member descriptors), found at bind time */
static Py_ssize_t off_ch = 0, off_fair = 0, off_cm = 0, off_cm_stack = 0;
static PyTypeObject *ThreadOwner_type = NULL;

static unsigned long long token_counter = 0;  /* twin: memory.py _tokens = itertools.count(1) */

static PyObject *s_owner, *s_release, *s_release_slow, *s_debug, *s_ch, *s_fair, *s_cm, *s_cm_stack,
    *s_acquire, *s_permits_mode, *s_exclusive, *s_acquire_async, *s_reentrant, *s_owner_key, *s_throw, *s_close;

static PyTypeObject Mutex_Type;
static PyTypeObject ChannelState_Type;
static PyTypeObject Ready_Type;

static inline double
monotonic_seconds(void)
{
    /* The same clock and the same value as time.monotonic(), without the call. */
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_MonotonicRaw(&t);
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
#endif
}

/* ---------------------------------------------------------------------------------------------- */
/* Mutex: a non-reentrant lock usable from Python (with, acquire, release, locked) and from C.     */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    char locked;
} MutexObject;

static int
mutex_lock(MutexObject *m)
{
    /* Returns 0 with the mutex held, or -1 with an exception (a signal handler raised while waiting;
       the mutex is then not held), like _thread.lock.acquire(). */
    if (PyThread_acquire_lock(m->lock, NOWAIT_LOCK)) {
        m->locked = 1;
        return 0;
    }
    for (;;) {
        PyLockStatus r;
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(m->lock, -1, 1);
        Py_END_ALLOW_THREADS
        if (r == PY_LOCK_ACQUIRED) {
            m->locked = 1;
            return 0;
        }
        if (r == PY_LOCK_INTR && Py_MakePendingCalls() < 0) {
            return -1;
        }
    }
}

static inline void
mutex_unlock(MutexObject *m)
{
    m->locked = 0;
    PyThread_release_lock(m->lock);
}

static PyObject *
Mutex_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((args != NULL && PyTuple_GET_SIZE(args) > 0) || (kwds != NULL && PyDict_GET_SIZE(kwds) > 0)) {
        PyErr_SetString(PyExc_TypeError, "Mutex() takes no arguments");
        return NULL;
    }
    MutexObject *m = (MutexObject *)type->tp_alloc(type, 0);
    if (m == NULL) {
        return NULL;
    }
    m->lock = PyThread_allocate_lock();
    if (m->lock == NULL) {
        Py_DECREF(m);
        return PyErr_NoMemory();
    }
    return (PyObject *)m;
}

static void
Mutex_dealloc(MutexObject *m)
{
    if (m->lock != NULL) {
        if (m->locked) {
            PyThread_release_lock(m->lock);
        }
        PyThread_free_lock(m->lock);
    }
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *
Mutex_acquire(MutexObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    int blocking = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1 && (blocking = PyObject_IsTrue(args[0])) < 0) {
        return NULL;
    }
    if (!blocking) {
        if (!PyThread_acquire_lock(m->lock, NOWAIT_LOCK)) {
            Py_RETURN_FALSE;
        }
        m->locked = 1;
        Py_RETURN_TRUE;
    }
    if (mutex_lock(m) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Mutex_release(MutexObject *m, PyObject *Py_UNUSED(ignored))
{
    if (!m->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    mutex_unlock(m);
    Py_RETURN_NONE;
}

static PyObject *
Mutex_exit(MutexObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return Mutex_release(m, NULL);
}

static PyObject *
Mutex_enter(MutexObject *m, PyObject *Py_UNUSED(ignored))
{
    if (mutex_lock(m) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Mutex_locked(MutexObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(m->locked);
}

static PyMethodDef Mutex_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Mutex_acquire, METH_FASTCALL,
     "acquire($self, blocking=True, /)\n--\n\nTake the mutex; without blocking, return False if taken."},
    {"release", (PyCFunction)Mutex_release, METH_NOARGS, "release($self, /)\n--\n\nRelease the mutex."},
    {"locked", (PyCFunction)Mutex_locked, METH_NOARGS, "locked($self, /)\n--\n\nTrue while held."},
    {"__enter__", (PyCFunction)Mutex_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Mutex_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Mutex_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interlock._speedups.Mutex",
    .tp_doc = "The mutex of a native memory:// channel (C twin of _thread.allocate_lock()).",
    .tp_basicsize = sizeof(MutexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Mutex_new,
    .tp_dealloc = (destructor)Mutex_dealloc,
    .tp_methods = Mutex_methods,
};

/* ---------------------------------------------------------------------------------------------- */
/* LeaseBase: the fields of a Lease in a C struct (twin: _lease._PyLeaseBase).                     */
/*                                                                                                */
/* interlock._lease.Lease subclasses it and keeps every method, docstring and behaviour in Python. */
/* What C adds: the fields are member descriptors of this struct (no instance dict), the grant     */
/* fills them with direct stores, and the finalizer is a C tp_finalize that costs nothing unless   */
/* the Lease is still HELD; only then does it call Lease._on_garbage_collected(), the one copy of  */
/* the leak path (the pure twin's __del__ calls the same method). file:// and redis:// create their */
/* leases with Lease.__new__ / Lease(...) and attribute stores, which the member descriptors serve. */

#define LEASE_HELD 0
#define LEASE_RELEASED 1

typedef struct {
    PyObject_HEAD
    PyObject *channel;        /* _channel (T_OBJECT_EX: unset until the grant sets it) */
    PyObject *token;
    PyObject *permits;
    PyObject *owner;
    PyObject *site;           /* _site */
    PyObject *mode;
    PyObject *acquired_at;    /* a float, shared with the holder record */
    PyObject *deadline;       /* _deadline, None when the lease does not expire */
    PyObject *lost_callbacks; /* _lost_callbacks */
    PyObject *lost_reason;    /* _lost_reason */
    PyObject *backend_data;
    PyObject *death_cb;       /* _death_cb */
    PyObject *weakreflist;
    int state;                /* _state: HELD 0, RELEASED 1, LOST 2, ABANDONED 3 */
    char prev_died;           /* previous_owner_died */
} LeaseObject;

static PyTypeObject LeaseBase_Type;
static PyObject *s_on_garbage_collected;

#define IS_LEASE(o) ((PyObject *)Py_TYPE(o) == Lease_type || PyObject_TypeCheck((o), &LeaseBase_Type))

static PyObject *
LeaseBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* Arguments are Lease.__init__'s business; every field starts unset/None, _state HELD. */
    return type->tp_alloc(type, 0);
}

static int
LeaseBase_traverse(LeaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->channel);
    Py_VISIT(self->token);
    Py_VISIT(self->permits);
    Py_VISIT(self->owner);
    Py_VISIT(self->site);
    Py_VISIT(self->mode);
    Py_VISIT(self->acquired_at);
    Py_VISIT(self->deadline);
    Py_VISIT(self->lost_callbacks);
    Py_VISIT(self->lost_reason);
    Py_VISIT(self->backend_data);
    Py_VISIT(self->death_cb);
    return 0;
}

static int
LeaseBase_clear(LeaseObject *self)
{
    Py_CLEAR(self->channel);
    Py_CLEAR(self->token);
    Py_CLEAR(self->permits);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->site);
    Py_CLEAR(self->mode);
    Py_CLEAR(self->acquired_at);
    Py_CLEAR(self->deadline);
    Py_CLEAR(self->lost_callbacks);
    Py_CLEAR(self->lost_reason);
    Py_CLEAR(self->backend_data);
    Py_CLEAR(self->death_cb);
    return 0;
}

/* twin: _PyLeaseBase.__del__. Runs once per object (PEP 442), also for cycles; the leak path may
   resurrect the Lease (the reaper thread queues it), which tp_finalize allows. */
static void
LeaseBase_finalize(LeaseObject *self)
{
    if (self->state != LEASE_HELD) {
        return;
    }
    PyObject *r;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
#endif
    r = PyObject_CallMethodNoArgs((PyObject *)self, s_on_garbage_collected);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    else {
        Py_DECREF(r);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(et, ev, tb);
#endif
}

static void
LeaseBase_dealloc(LeaseObject *self)
{
    /* Called directly for LeaseBase itself, and by the subclass's dealloc (which has already run the
       finalizer; a second call returns at once). The finalizer does nothing unless HELD. */
    if (self->state == LEASE_HELD && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    LeaseBase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lease_state_get(LeaseObject *self, void *closure)
{
    return PyLong_FromLong(self->state);
}

static int
lease_state_set(LeaseObject *self, PyObject *value, void *closure)
{
    long v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_state cannot be deleted");
        return -1;
    }
    if (!PyLong_Check(value) || (v = PyLong_AsLong(value)) < 0 || v > 3) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "_state must be HELD, RELEASED, LOST or ABANDONED (0-3)");
        }
        return -1;
    }
    self->state = (int)v;
    return 0;
}

static PyObject *
lease_prev_died_get(LeaseObject *self, void *closure)
{
    return PyBool_FromLong(self->prev_died);
}

static int
lease_prev_died_set(LeaseObject *self, PyObject *value, void *closure)
{
    int v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "previous_owner_died cannot be deleted");
        return -1;
    }
    if ((v = PyObject_IsTrue(value)) < 0) {
        return -1;
    }
    self->prev_died = (char)v;
    return 0;
}

/* For the file:// C twin (_fastfile.wait, through the capsule "interlock._speedups._lease_api"): fill
   a pre-built Lease with its grant by direct stores, as its member descriptors would (token, permits,
   acquired_at, _state = HELD, previous_owner_died if set). A grantee runs this right after its wake-up,
   where each attribute store through the generic setattr costs ~0.5 us from cold caches. Returns 0, or 1
   when `lease` is not a LeaseBase (the caller then stores the attributes itself). */
static int
lease_fill_granted(PyObject *lease, PyObject *token, PyObject *permits, PyObject *acquired_at, int prev_died)
{
    if (!IS_LEASE(lease)) {
        return 1;
    }
    LeaseObject *l = (LeaseObject *)lease;
    Py_XSETREF(l->token, Py_NewRef(token));
    Py_XSETREF(l->permits, Py_NewRef(permits));
    Py_XSETREF(l->acquired_at, Py_NewRef(acquired_at));
    if (prev_died) {
        l->prev_died = 1;
    }
    l->state = LEASE_HELD;
    return 0;
}

/* The capsule's contents (a struct, so that more entries can follow without a new capsule). */
typedef struct {
    int (*fill_granted)(PyObject *, PyObject *, PyObject *, PyObject *, int);
} interlock_lease_api;

static interlock_lease_api lease_api = {lease_fill_granted};

static PyGetSetDef LeaseBase_getset[] = {
    {"_state", (getter)lease_state_get, (setter)lease_state_set, "HELD 0, RELEASED 1, LOST 2, ABANDONED 3", NULL},
    {"previous_owner_died", (getter)lease_prev_died_get, (setter)lease_prev_died_set,
     "True when this grant follows a holder that never released", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef LeaseBase_members[] = {
    {"_channel", T_OBJECT_EX, offsetof(LeaseObject, channel), 0, NULL},
    {"token", T_OBJECT_EX, offsetof(LeaseObject, token), 0, "the fencing token"},
    {"permits", T_OBJECT_EX, offsetof(LeaseObject, permits), 0, "how many permits this lease holds"},
    {"owner", T_OBJECT_EX, offsetof(LeaseObject, owner), 0, "the thread or task that acquired it"},
    {"_site", T_OBJECT_EX, offsetof(LeaseObject, site), 0, NULL},
    {"mode", T_OBJECT_EX, offsetof(LeaseObject, mode), 0, "exclusive, shared or permits"},
    {"acquired_at", T_OBJECT_EX, offsetof(LeaseObject, acquired_at), 0, "time.monotonic() of the grant"},
    /* T_OBJECT: unset reads as None, the default of these fields */
    {"_deadline", T_OBJECT, offsetof(LeaseObject, deadline), 0, NULL},
    {"_lost_callbacks", T_OBJECT, offsetof(LeaseObject, lost_callbacks), 0, NULL},
    {"_lost_reason", T_OBJECT, offsetof(LeaseObject, lost_reason), 0, NULL},
    {"backend_data", T_OBJECT, offsetof(LeaseObject, backend_data), 0, "the backend's own record"},
    {"_death_cb", T_OBJECT, offsetof(LeaseObject, death_cb), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LeaseBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interlock._speedups.LeaseBase",
    .tp_doc = "The fields and finalizer of interlock.Lease in C (twin: interlock._lease._PyLeaseBase).",
    .tp_basicsize = sizeof(LeaseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = LeaseBase_new,
    .tp_dealloc = (destructor)LeaseBase_dealloc,
    .tp_traverse = (traverseproc)LeaseBase_traverse,
    .tp_clear = (inquiry)LeaseBase_clear,
    .tp_finalize = (destructor)LeaseBase_finalize,
    .tp_weaklistoffset = offsetof(LeaseObject, weakreflist),
    .tp_members = LeaseBase_members,
    .tp_getset = LeaseBase_getset,
};

/* ---------------------------------------------------------------------------------------------- */
/* ChannelState: the state of one memory:// primitive, base class of the native MemoryChannel.     */

typedef struct {
    PyObject_HEAD
    PyObject *mutex;       /* MutexObject, never NULL */
    PyObject *waiters;     /* collections.deque of waiters */
    PyObject *holders;     /* dict token -> (owner, permits, acquired_at, mode) */
    PyObject *last_token;  /* int or NULL (None) */
    PyObject *r_lease;     /* Channel._r_lease (Lock facades) */
    Py_ssize_t available;
    Py_ssize_t r_depth;    /* Channel._r_depth (RLock facades) */
    char prev_died;
    /* Channel._owned, .bounded and (bounded only) .capacity, read once by the contended wait: none of
       them changes after __init__ (a bounded channel's capacity is fixed: signal() and forget() refuse
       to change it). cfg_loaded 0 until read. */
    char cfg_loaded, cfg_owned, cfg_bounded;
    Py_ssize_t cfg_capacity;
} ChannelState;

#define IS_NATIVE(ch) (Py_TYPE(ch)->tp_base == &ChannelState_Type || PyObject_TypeCheck((ch), &ChannelState_Type))

static PyObject *
ChannelState_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ChannelState *self = (ChannelState *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->mutex = Mutex_new(&Mutex_Type, empty_tuple, NULL);
    if (self->mutex == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
ChannelState_traverse(ChannelState *self, visitproc visit, void *arg)
{
    Py_VISIT(self->waiters);
    Py_VISIT(self->holders);
    Py_VISIT(self->r_lease);
    return 0;
}

static int
ChannelState_clear(ChannelState *self)
{
    Py_CLEAR(self->waiters);
    Py_CLEAR(self->holders);
    Py_CLEAR(self->r_lease);
    Py_CLEAR(self->last_token);
    return 0;
}

static void
ChannelState_dealloc(ChannelState *self)
{
    PyObject_GC_UnTrack(self);
    ChannelState_clear(self);
    Py_CLEAR(self->mutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline Py_ssize_t
queue_length(ChannelState *self)
{
    return self->waiters == NULL ? 0 : PyObject_Length(self->waiters);
}

/* twin: memory.py _PyChannelState._grant_locked. Caller holds the mutex and checked that the permits
   fit. Every allocation comes first; the shared state changes only at the end, by stores that cannot
   fail or run Python code, so a failure (MemoryError) leaves nothing behind. The Lease is allocated
   with tp_alloc (Lease is a subclass of LeaseBase with no fields of its own, checked by configure())
   and filled by direct stores: no Python __new__/__init__ runs. */
static PyObject *
grant_locked(ChannelState *self, Py_ssize_t permits, PyObject *permits_obj, PyObject *owner,
             PyObject *site, PyObject *mode)
{
    PyObject *token = NULL, *at = NULL, *rec = NULL;
    LeaseObject *lease = NULL;
    PyTypeObject *lt = (PyTypeObject *)Lease_type;
    if (self->holders == NULL || lt == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memory channel not initialised");
        return NULL;
    }
    token = PyLong_FromUnsignedLongLong(++token_counter);
    if (token == NULL) {
        return NULL;
    }
    lease = (LeaseObject *)lt->tp_alloc(lt, 0);
    if (lease == NULL) {
        goto fail;
    }
    /* From here a failure drops a Lease whose _state is HELD: mark it released first (below). */
    at = PyFloat_FromDouble(monotonic_seconds());
    if (at == NULL) {
        goto fail;
    }
    rec = PyTuple_Pack(4, owner, permits_obj, at, mode);
    if (rec == NULL || PyDict_SetItem(self->holders, token, rec) < 0) {
        goto fail;
    }
    /* committed: plain stores from here on */
    lease->channel = Py_NewRef((PyObject *)self);
    lease->token = token;  /* the reference taken above */
    lease->permits = Py_NewRef(permits_obj);
    lease->owner = Py_NewRef(owner);
    lease->site = Py_NewRef(site);
    lease->mode = Py_NewRef(mode);
    lease->acquired_at = at;  /* the reference taken above */
    lease->prev_died = self->prev_died;
    Py_DECREF(rec);
    Py_XSETREF(self->last_token, Py_NewRef(token));
    self->prev_died = 0;
    self->available -= permits;
    return (PyObject *)lease;
fail:
    /* Nothing was committed. A half-built Lease must not look held to its finalizer. */
    if (lease != NULL) {
        lease->state = LEASE_RELEASED;
    }
    Py_XDECREF(rec);
    Py_XDECREF(at);
    Py_XDECREF(lease);
    Py_DECREF(token);
    return NULL;
}

/* twin: memory.py _PyChannelState._try_grant. Returns a new Lease, None (would have to wait), or NULL
   with an exception. */
static PyObject *
try_grant(ChannelState *self, Py_ssize_t permits, PyObject *permits_obj, PyObject *owner, PyObject *site,
          PyObject *mode, int fair)
{
    MutexObject *m = (MutexObject *)self->mutex;
    PyObject *r;
    if (mutex_lock(m) < 0) {
        return NULL;
    }
    Py_ssize_t queued = queue_length(self);
    if (queued < 0) {
        r = NULL;
    }
    else if (self->available >= permits && (queued == 0 || !fair)) {
        r = grant_locked(self, permits, permits_obj, owner, site, mode);
    }
    else {
        r = Py_NewRef(Py_None);
    }
    mutex_unlock(m);
    return r;
}

static int
get_permits(PyObject *o, Py_ssize_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "permits must be an int");
        return -1;
    }
    *out = PyLong_AsSsize_t(o);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
ChannelState_grant_locked(ChannelState *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t permits;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_grant_locked(permits, owner, site, mode)");
        return NULL;
    }
    if (get_permits(args[0], &permits) < 0) {
        return NULL;
    }
    return grant_locked(self, permits, args[0], args[1], args[2], args[3]);
}

static PyObject *
ChannelState_try_grant(ChannelState *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t permits;
    int fair;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_try_grant(permits, owner, site, mode, fair)");
        return NULL;
    }
    if (get_permits(args[0], &permits) < 0 || (fair = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    return try_grant(self, permits, args[0], args[1], args[2], args[3], fair);
}

static PyTypeObject *native_channel_type;  /* memory.py MemoryChannel (configure_handoff) */
static int release_locked(ChannelState *self, PyObject *token, Py_ssize_t permits, int ab, PyObject **rec_out);

/* twin: memory.py _MemoryChannelBase._release_py (the pure-Python release). The C code handles a whole
   release with nobody queued; every other case (waiters to wake, a partial release) goes to the Python
   method before anything was changed. permits_obj NULL means "the whole lease" (lease.permits, which
   always equals the permits in its holder record), read only if the Python method is needed. */
static PyObject *
channel_release(ChannelState *self, PyObject *lease, PyObject *permits_obj, int abandoned)
{
    Py_ssize_t permits = PY_SSIZE_T_MAX, held;
    int handled = 0, thread_owned = 0;
    PyObject *rec = NULL, *token, *cb;
    if (permits_obj != NULL && get_permits(permits_obj, &permits) < 0) {
        return NULL;
    }
    if (!IS_LEASE(lease)) {
        PyErr_SetString(PyExc_TypeError, "release() needs an interlock.Lease");
        return NULL;
    }
    token = ((LeaseObject *)lease)->token;
    if (token == NULL) {
        PyErr_SetString(PyExc_AttributeError, "this Lease has no token");
        return NULL;
    }
    Py_INCREF(token);
    MutexObject *m = (MutexObject *)self->mutex;
    if (mutex_lock(m) < 0) {
        Py_DECREF(token);
        return NULL;
    }
    if (queue_length(self) == 0 && self->holders != NULL) {
        rec = PyDict_GetItemWithError(self->holders, token);  /* borrowed */
        if (rec == NULL) {
            handled = PyErr_Occurred() ? -1 : 1;  /* not held (any more): nothing to return */
        }
        else if (PyTuple_CheckExact(rec) && PyTuple_GET_SIZE(rec) == 4
                 && PyLong_CheckExact(PyTuple_GET_ITEM(rec, 1))
                 && (held = PyLong_AsSsize_t(PyTuple_GET_ITEM(rec, 1))) <= permits && held >= 0) {
            Py_INCREF(rec);
            if (PyDict_DelItem(self->holders, token) < 0) {
                handled = -1;
            }
            else {
                self->available += held;
                if (abandoned) {
                    self->prev_died = 1;
                }
                handled = 1;
                /* only a task's grant can carry a death callback (_core.owner.track_task_death) */
                thread_owned = ThreadOwner_type != NULL && Py_IS_TYPE(PyTuple_GET_ITEM(rec, 0), ThreadOwner_type);
            }
        }
        else {
            rec = NULL;
            if (PyErr_Occurred()) {
                handled = -1;
            }
        }
    }
    else if (self->holders != NULL && Py_IS_TYPE(self, native_channel_type)) {
        /* Threads or tasks queue: the handoff, under this same hold of the mutex (what _release_py,
           i.e. ChannelState._release_contended, would do after locking it again). */
        handled = release_locked(self, token, permits, abandoned, &rec) < 0 ? -1 : 1;
        thread_owned = rec != NULL && ThreadOwner_type != NULL
                       && Py_IS_TYPE(PyTuple_GET_ITEM(rec, 0), ThreadOwner_type);
    }
    mutex_unlock(m);
    /* references are dropped only now, outside the mutex */
    Py_XDECREF(rec);
    Py_DECREF(token);
    if (handled < 0) {
        return NULL;
    }
    if (!handled) {
        PyObject *r, *p = permits_obj != NULL ? permits_obj : ((LeaseObject *)lease)->permits;
        if (p == NULL) {
            PyErr_SetString(PyExc_AttributeError, "this Lease has no permits");
            return NULL;
        }
        Py_INCREF(p);
        PyObject *args[4] = {(PyObject *)self, lease, p, abandoned ? Py_True : Py_False};
        r = PyObject_VectorcallMethod(s_release_slow, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(p);
        return r;
    }
    if (thread_owned) {
        Py_RETURN_NONE;
    }
    cb = ((LeaseObject *)lease)->death_cb;
    if (cb != NULL && cb != Py_None) {
        return PyObject_CallOneArg(untrack_task_death, lease);
    }
    Py_RETURN_NONE;
}

/* twin: _lease.Lease.release for a held Lease of a native channel (anything else calls the Python
   method): mark it released, then return its permits. `ch` is lease._channel if the caller knows it
   (else NULL). */
static PyObject *
lease_release(PyObject *lease, PyObject *ch)
{
    LeaseObject *l = (LeaseObject *)lease;
    if (!IS_LEASE(lease) || l->state != LEASE_HELD) {
        return PyObject_CallMethodNoArgs(lease, s_release);  /* lost or already released */
    }
    if (ch == NULL) {
        ch = l->channel;
    }
    if (ch == NULL || !IS_NATIVE(ch)) {
        return PyObject_CallMethodNoArgs(lease, s_release);
    }
    /* a native channel's Lease: Lease.release would do exactly this (its HELD branch) */
    Py_INCREF(ch);
    l->state = LEASE_RELEASED;
    PyObject *r = channel_release((ChannelState *)ch, lease, NULL, 0);
    Py_DECREF(ch);
    return r;
}

static PyObject *
ChannelState_release(ChannelState *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *abandoned = Py_False;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw < 2 || nargs + nkw > 3 || nargs < 2
        || (nkw == 1 && !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)))
        || (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "abandoned") != 0)) {
        PyErr_SetString(PyExc_TypeError, "release(lease, permits, abandoned=False)");
        return NULL;
    }
    if (nargs + nkw == 3) {
        abandoned = args[2];
    }
    int ab = PyObject_IsTrue(abandoned);
    return ab < 0 ? NULL : channel_release(self, args[0], args[1], ab);
}

static PyObject *
mutex_get(ChannelState *self, void *closure)
{
    return Py_NewRef(self->mutex);
}

static int
mutex_set(ChannelState *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyObject_TypeCheck(value, &Mutex_Type)) {
        PyErr_SetString(PyExc_TypeError, "_mutex must be an interlock._speedups.Mutex");
        return -1;
    }
    Py_SETREF(self->mutex, Py_NewRef(value));
    return 0;
}

static PyGetSetDef ChannelState_getset[] = {
    {"_mutex", (getter)mutex_get, (setter)mutex_set, "the channel's mutex", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef ChannelState_members[] = {
    {"available", T_PYSSIZET, offsetof(ChannelState, available), 0, "free permits"},
    {"waiters", T_OBJECT_EX, offsetof(ChannelState, waiters), 0, "FIFO deque of waiters"},
    {"holders", T_OBJECT_EX, offsetof(ChannelState, holders), 0, "token -> (owner, permits, at, mode)"},
    {"_last_token", T_OBJECT, offsetof(ChannelState, last_token), 0, "last token granted"},
    {"_prev_died", T_BOOL, offsetof(ChannelState, prev_died), 0, "the next grant follows a dead holder"},
    {"_r_lease", T_OBJECT, offsetof(ChannelState, r_lease), 0, "the lease taken through Lock objects"},
    {"_r_depth", T_PYSSIZET, offsetof(ChannelState, r_depth), 0, "RLock depth"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef ChannelState_methods[] = {
    {"_grant_locked", (PyCFunction)(void (*)(void))ChannelState_grant_locked, METH_FASTCALL,
     "_grant_locked($self, permits, owner, site, mode, /)\n--\n\nMake a grant (caller holds _mutex)."},
    {"_try_grant", (PyCFunction)(void (*)(void))ChannelState_try_grant, METH_FASTCALL,
     "_try_grant($self, permits, owner, site, mode, fair, /)\n--\n\nGrant at once if possible, else None."},
    {"release", (PyCFunction)(void (*)(void))ChannelState_release, METH_FASTCALL | METH_KEYWORDS,
     "release($self, lease, permits, abandoned=False)\n--\n\nReturn the permits of a lease."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChannelState_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interlock._speedups.ChannelState",
    .tp_doc = "Native state and fast paths of a memory:// channel (twin: memory.py _PyChannelState).",
    .tp_basicsize = sizeof(ChannelState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = ChannelState_new,
    .tp_dealloc = (destructor)ChannelState_dealloc,
    .tp_traverse = (traverseproc)ChannelState_traverse,
    .tp_clear = (inquiry)ChannelState_clear,
    .tp_methods = ChannelState_methods,
    .tp_members = ChannelState_members,
    .tp_getset = ChannelState_getset,
};

/* ---------------------------------------------------------------------------------------------- */
/* Ready: an awaitable that is already done (what a coroutine returning at once would give).        */

typedef struct {
    PyObject_HEAD
    PyObject *result;
} ReadyObject;

static PyObject *ready_none = NULL;  /* the Ready of None that __aexit__ returns */

static PyObject *
ready_new(PyObject *result)
{
    ReadyObject *r = PyObject_New(ReadyObject, &Ready_Type);
    if (r == NULL) {
        return NULL;
    }
    r->result = Py_NewRef(result);
    return (PyObject *)r;
}

static void
Ready_dealloc(ReadyObject *r)
{
    Py_CLEAR(r->result);
    PyObject_Free(r);
}

static PyObject *
Ready_await(ReadyObject *r)
{
    return Py_NewRef(r);
}

static PyObject *
Ready_iternext(ReadyObject *r)
{
    if (r->result == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    else {
        PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, r->result);
        if (exc == NULL) {
            return NULL;
        }
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PySendResult
Ready_send(ReadyObject *r, PyObject *arg, PyObject **result)
{
    *result = Py_NewRef(r->result);
    return PYGEN_RETURN;
}

static PyAsyncMethods Ready_async = {
    .am_await = (unaryfunc)Ready_await,
    .am_send = (sendfunc)Ready_send,
};

static PyTypeObject Ready_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interlock._speedups.Ready",
    .tp_doc = "An awaitable whose result is already known.",
    .tp_basicsize = sizeof(ReadyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Ready_dealloc,
    .tp_as_async = &Ready_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Ready_iternext,
};

/* ---------------------------------------------------------------------------------------------- */
/* Facade methods (twins: the methods of the same name in _primitives.py).                         */

static Py_ssize_t
slot_offset(PyObject *cls, const char *name)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    Py_ssize_t off = 0;
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *md = ((PyMemberDescrObject *)d)->d_member;
        if (md->type == T_OBJECT_EX) {
            off = md->offset;
        }
    }
    Py_DECREF(d);
    return off;
}

/* self.<slot> through its offset (self was type-checked by the method descriptor); new reference */
static inline PyObject *
slot_get(PyObject *self, Py_ssize_t off, PyObject *name)
{
    if (off > 0) {
        PyObject *v = *(PyObject **)((char *)self + off);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(self, name);
}

static inline PyObject *
cm_stack_of(PyObject *owner)
{
    return Py_IS_TYPE(owner, ThreadOwner_type) ? slot_get(owner, off_cm_stack, s_cm_stack)
                                                : PyObject_GetAttr(owner, s_cm_stack);
}

static int
debug_on(void)
{
    PyObject *d = PyDict_GetItemWithError(lease_module_dict, s_debug);  /* borrowed */
    if (d == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    return PyObject_IsTrue(d);
}

/* The calling thread's owner: _core.owner._tls.owner, created by thread_owner() on first use.
   _tls.owner never changes once set, so a copy is kept in the thread state's dict (a lookup there
   costs a third of a threading.local attribute read), and the last thread's owner is also kept here
   under its thread state's id (unique for the life of the process, never reused), which spares the
   dict lookup while one thread does the acquiring. Returns a new reference. If `create` is false,
   returns NULL without an exception when the thread has no owner yet. */
static uint64_t last_owner_tsid = 0;
static PyObject *last_owner = NULL;

static PyObject *
thread_owner_ref(int create)
{
    uint64_t tsid = PyThreadState_GetID(PyThreadState_Get());
    if (last_owner != NULL && tsid == last_owner_tsid) {
        return Py_NewRef(last_owner);
    }
    PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
    PyObject *o;
    if (tdict != NULL) {
        o = PyDict_GetItemWithError(tdict, s_owner_key);  /* borrowed */
        if (o != NULL) {
            Py_XSETREF(last_owner, Py_NewRef(o));
            last_owner_tsid = tsid;
            return Py_NewRef(o);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    o = PyObject_GetAttr(tls, s_owner);
    if (o == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        if (!create) {
            return NULL;
        }
        if ((o = PyObject_CallNoArgs(thread_owner_fn)) == NULL) {
            return NULL;
        }
    }
    if (tdict != NULL && Py_IS_TYPE(o, ThreadOwner_type) && PyDict_SetItem(tdict, s_owner_key, o) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

static PyObject *
current_thread_owner(void)
{
    return thread_owner_ref(1);
}

static PyObject *
caller_code(void)
{
    /* _getframe(1).f_code seen from a Python method = the code of the frame calling this C method */
    PyFrameObject *f = PyEval_GetFrame();  /* borrowed */
    if (f == NULL) {
        Py_RETURN_NONE;
    }
    return (PyObject *)PyFrame_GetCode(f);
}

/* The channel of a facade when the C fast path applies to it (native channel, not in debug mode);
   NULL with no exception set when the Python twin must run; NULL with an exception on error. */
static ChannelState *
fast_channel(PyObject *self)
{
    PyObject *ch = slot_get(self, off_ch, s_ch);
    int dbg;
    if (ch == NULL) {
        return NULL;
    }
    if (!IS_NATIVE(ch) || (dbg = debug_on()) != 0) {
        Py_DECREF(ch);
        return NULL;
    }
    return (ChannelState *)ch;
}

static PyObject *
call_with_self(PyObject *func, PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *small[8];
    PyObject **stack = total < 8 ? small : PyMem_Malloc((total + 1) * sizeof(PyObject *));
    PyObject *r;
    if (stack == NULL) {
        return PyErr_NoMemory();
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        stack[i + 1] = args[i];
    }
    r = PyObject_Vectorcall(func, stack, nargs + 1, kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return r;
}

static PyObject *contended_acquire(ChannelState *self, Py_ssize_t permits, PyObject *permits_obj,
                                   PyObject *owner, PyObject *site, PyObject *mode, int fair);

/* Grant one uncontended request through a native channel, or take the slow path: the C blocking wait
   of the contended handoff section for a MemoryChannel (no method lookup and argument parsing between
   the failed grant and the queue), else MemoryChannel.acquire (which re-checks and queues). Returns a
   new reference. */
static PyObject *
facade_grant(ChannelState *ch, Py_ssize_t permits, PyObject *permits_obj, PyObject *owner, PyObject *mode,
             PyObject *fair_obj)
{
    int fair = PyObject_IsTrue(fair_obj);
    PyObject *site, *lease;
    if (fair < 0 || (site = caller_code()) == NULL) {
        return NULL;
    }
    /* Under contention the permits are taken or (fair) others queue: then skip the locked try. This
       look holds the GIL, under which every change of the queue and the count is made, so it is exact
       now; the locked sections below decide either way. */
    if (ch->available < permits || (fair && queue_length(ch) != 0)) {
        lease = Py_NewRef(Py_None);
    }
    else {
        lease = try_grant(ch, permits, permits_obj, owner, site, mode, fair);
    }
    if (lease == Py_None && Py_IS_TYPE(ch, native_channel_type)) {
        Py_DECREF(lease);
        lease = contended_acquire(ch, permits, permits_obj, owner, site, mode, fair);
        if (lease == NULL && !PyErr_Occurred()) {
            lease = Py_NewRef(Py_None);  /* not a case of the C wait: the method below */
        }
    }
    if (lease == Py_None) {
        Py_DECREF(lease);
        PyObject *args[8] = {(PyObject *)ch, permits_obj, Py_None, Py_True, owner, site, mode, fair_obj};
        lease = PyObject_VectorcallMethod(s_acquire, args, 8 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_DECREF(site);
    return lease;
}

static PyObject *
sem_thread_acquire(PyObject *self, ChannelState *ch, Py_ssize_t permits, PyObject *permits_obj)
{
    PyObject *owner, *fair, *lease = NULL;
    if ((fair = slot_get(self, off_fair, s_fair)) == NULL) {
        return NULL;
    }
    if ((owner = current_thread_owner()) != NULL) {
        lease = facade_grant(ch, permits, permits_obj, owner, s_permits_mode, fair);
    }
    Py_DECREF(fair);
    Py_XDECREF(owner);
    return lease;
}

/* twin: _primitives.Semaphore.__enter__ */
static PyObject *
sem_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ChannelState *ch = fast_channel(self);
    PyObject *owner, *lease, *stack;
    if (ch == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(py_sem_enter, self);
    }
    if ((owner = current_thread_owner()) == NULL) {
        Py_DECREF(ch);
        return NULL;
    }
    PyObject *fair = slot_get(self, off_fair, s_fair);
    lease = fair == NULL ? NULL : facade_grant(ch, 1, one, owner, s_permits_mode, fair);
    Py_XDECREF(fair);
    Py_DECREF(ch);
    if (lease != NULL) {
        /* `with` blocks nest, so each thread keeps one LIFO stack of the leases its blocks hold. */
        stack = cm_stack_of(owner);
        if (stack == NULL || PyList_Append(stack, lease) < 0) {
            Py_CLEAR(lease);  /* MemoryError: the dropped Lease returns its permits */
        }
        Py_XDECREF(stack);
    }
    Py_DECREF(owner);
    return lease;
}

/* twin: _primitives.Semaphore.__exit__ */
static PyObject *
sem_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *owner, *stack, *ch, *top, *top_ch, *r;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    owner = thread_owner_ref(0);
    if (owner == NULL) {
        return PyErr_Occurred() ? NULL : call_with_self(py_sem_exit, self, args, nargs, NULL);
    }
    stack = cm_stack_of(owner);
    Py_DECREF(owner);
    if (stack == NULL) {
        return NULL;
    }
    ch = slot_get(self, off_ch, s_ch);
    if (ch == NULL) {
        Py_DECREF(stack);
        return NULL;
    }
    Py_ssize_t n = PyList_Check(stack) ? PyList_GET_SIZE(stack) : 0;
    if (n == 0 || !IS_NATIVE(ch)) {
        Py_DECREF(ch);
        Py_DECREF(stack);
        return call_with_self(py_sem_exit, self, args, nargs, NULL);
    }
    top = Py_NewRef(PyList_GET_ITEM(stack, n - 1));
    top_ch = IS_LEASE(top) ? Py_XNewRef(((LeaseObject *)top)->channel) : NULL;
    Py_DECREF(ch);
    if (top_ch != ch) {
        Py_XDECREF(top_ch);
        Py_DECREF(top);
        Py_DECREF(stack);
        return call_with_self(py_sem_exit, self, args, nargs, NULL);
    }
    /* list.pop(): the stack drops its reference to `top`, which we hold */
    Py_SET_SIZE(stack, n - 1);
    Py_DECREF(top);
    r = lease_release(top, top_ch);
    Py_DECREF(top_ch);
    Py_DECREF(top);
    Py_DECREF(stack);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* twin: _primitives.Semaphore.acquire (the C path takes only `acquire()` / `acquire(n)`) */
static PyObject *
sem_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), permits = 1;
    PyObject *permits_obj = one;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs > 1) {
        return call_with_self(py_sem_acquire, self, args, nargs, kwnames);
    }
    if (nargs == 1) {
        permits_obj = args[0];
        if (!PyLong_CheckExact(permits_obj)) {
            return call_with_self(py_sem_acquire, self, args, nargs, kwnames);
        }
        permits = PyLong_AsSsize_t(permits_obj);
        if (permits < 1) {
            PyErr_Clear();
            return call_with_self(py_sem_acquire, self, args, nargs, kwnames);
        }
    }
    ChannelState *ch = fast_channel(self);
    if (ch == NULL) {
        return PyErr_Occurred() ? NULL : call_with_self(py_sem_acquire, self, args, nargs, kwnames);
    }
    PyObject *lease = sem_thread_acquire(self, ch, permits, permits_obj);
    Py_DECREF(ch);
    return lease;
}

/* twin: _primitives._task_owner (with _core.owner.fast_current_task): the running task, else the
   thread's owner. get_running_loop_fn is asyncio._get_running_loop; with current_tasks (the asyncio
   C module's task table, 3.10/3.11) the task is one dict lookup, else current_task_fn(loop). */
static PyObject *get_running_loop_fn = NULL, *current_tasks = NULL, *current_task_fn = NULL;

#if PY_VERSION_HEX < 0x030C0000 && !defined(MS_WINDOWS)
/* On 3.10/3.11 asyncio._get_running_loop() makes a getpid() system call whenever a loop runs (to
   answer None in a forked child), ~140 ns of the ~190 ns it costs on a VM; `async with sem` asks
   twice. So each thread remembers the loop it last found running (a weak reference in its thread
   state dict, with the fork generation), and trusts it while that loop's run_forever is still active
   on this thread: BaseEventLoop sets _thread_id to the running thread's ident right before it becomes
   the running loop and clears it right after, and one thread runs at most one loop at a time. A
   fork bumps the generation (pthread_atfork), so a child asks asyncio again, as the twin does.
   Loops without an int _thread_id (other implementations) always take the asyncio call. 3.12+
   dropped the getpid() call (asyncio resets the running loop at fork), so they need no cache. */
#define LOOP_CACHE 1
#include <pthread.h>
static unsigned long fork_generation = 0;
static PyObject *s_loop_cache, *s_thread_id;

static void
bump_fork_generation(void)
{
    fork_generation++;
}

/* The last thread's entry is also kept here under its thread state id (unique, never reused), which
   spares the thread-dict lookup while one thread does the acquiring. */
static uint64_t last_loop_tsid = 0;
static PyObject *last_loop_entry = NULL;  /* (weakref to the loop, fork generation) */

/* the loop running on this thread (new reference), or NULL without an exception: ask asyncio */
static PyObject *
cached_running_loop(PyObject *tdict, uint64_t tsid)
{
    PyObject *entry;
    if (last_loop_entry != NULL && tsid == last_loop_tsid) {
        entry = last_loop_entry;
    }
    else if ((entry = PyDict_GetItemWithError(tdict, s_loop_cache)) == NULL) {  /* borrowed */
        PyErr_Clear();
        return NULL;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2
        || PyLong_AsUnsignedLong(PyTuple_GET_ITEM(entry, 1)) != fork_generation) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *loop = PyWeakref_GetObject(PyTuple_GET_ITEM(entry, 0));  /* borrowed */
    if (loop == NULL || loop == Py_None) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *tid = PyObject_GetAttr(loop, s_thread_id);
    if (tid == NULL) {
        PyErr_Clear();
        return NULL;
    }
    int running = PyLong_CheckExact(tid) && PyLong_AsUnsignedLong(tid) == PyThread_get_thread_ident();
    Py_DECREF(tid);
    if (!running) {
        PyErr_Clear();  /* (an OverflowError from a negative or huge _thread_id) */
        return NULL;
    }
    if (entry != last_loop_entry) {
        Py_XSETREF(last_loop_entry, Py_NewRef(entry));
        last_loop_tsid = tsid;
    }
    return Py_NewRef(loop);
}

static void
remember_running_loop(PyObject *tdict, uint64_t tsid, PyObject *loop)
{
    PyObject *ref = PyWeakref_NewRef(loop, NULL), *gen = NULL, *entry = NULL;
    if (ref != NULL && (gen = PyLong_FromUnsignedLong(fork_generation)) != NULL
        && (entry = PyTuple_Pack(2, ref, gen)) != NULL && PyDict_SetItem(tdict, s_loop_cache, entry) == 0) {
        Py_XSETREF(last_loop_entry, Py_NewRef(entry));
        last_loop_tsid = tsid;
    }
    Py_XDECREF(entry);
    Py_XDECREF(gen);
    Py_XDECREF(ref);
    PyErr_Clear();  /* not weak-referenceable, or no memory: no cache, same answer */
}
#endif

static PyObject *
task_owner(void)
{
    PyObject *loop = NULL, *task;
    if (get_running_loop_fn == NULL) {
        return PyObject_CallNoArgs(task_owner_fn);
    }
#ifdef LOOP_CACHE
    PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
    uint64_t tsid = PyThreadState_GetID(PyThreadState_Get());
    if (tdict != NULL) {
        loop = cached_running_loop(tdict, tsid);
    }
#endif
    if (loop == NULL) {
        if ((loop = PyObject_CallNoArgs(get_running_loop_fn)) == NULL) {
            return NULL;
        }
#ifdef LOOP_CACHE
        if (tdict != NULL && loop != Py_None) {
            remember_running_loop(tdict, tsid, loop);
        }
#endif
    }
    if (loop == Py_None) {
        Py_DECREF(loop);
        return current_thread_owner();
    }
    if (current_tasks != NULL) {
        task = PyDict_GetItemWithError(current_tasks, loop);  /* borrowed */
        Py_XINCREF(task);
    }
    else {
        task = PyObject_CallOneArg(current_task_fn, loop);
    }
    Py_DECREF(loop);
    if (task == NULL) {
        return PyErr_Occurred() ? NULL : current_thread_owner();
    }
    if (task == Py_None) {
        Py_DECREF(task);
        return current_thread_owner();
    }
    return task;
}

/* twin: _primitives.Semaphore.__aenter__ (uncontended on a native channel; else the Python coroutine) */
static PyObject *
sem_aenter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ChannelState *ch = fast_channel(self);
    PyObject *owner = NULL, *fair = NULL, *site = NULL, *lease = NULL, *cm = NULL, *prev, *r = NULL;
    int fair_b;
    if (ch == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(py_sem_aenter, self);
    }
    if ((owner = task_owner()) == NULL || (fair = slot_get(self, off_fair, s_fair)) == NULL
        || (fair_b = PyObject_IsTrue(fair)) < 0 || (site = caller_code()) == NULL) {
        goto done;
    }
    lease = try_grant(ch, 1, one, owner, site, s_permits_mode, fair_b);
    if (lease == NULL) {
        goto done;
    }
    if (lease == Py_None) {  /* would wait: the Python coroutine does it all */
        Py_CLEAR(lease);
        r = PyObject_CallOneArg(py_sem_aenter, self);
        goto done;
    }
    /* Per-task record of the leases taken by `async with` blocks (a task's blocks nest). */
    if ((cm = slot_get(self, off_cm, s_cm)) == NULL || !PyDict_CheckExact(cm)) {
        if (cm != NULL) {
            PyErr_SetString(PyExc_TypeError, "Semaphore._cm must be a dict");
        }
        goto done;
    }
    prev = PyDict_GetItemWithError(cm, owner);  /* borrowed */
    if (prev == NULL) {
        if (PyErr_Occurred() || PyDict_SetItem(cm, owner, lease) < 0) {
            goto done;
        }
    }
    else if (PyList_CheckExact(prev)) {
        if (PyList_Append(prev, lease) < 0) {
            goto done;
        }
    }
    else {
        PyObject *pair = PyList_New(2);
        if (pair == NULL) {
            goto done;
        }
        PyList_SET_ITEM(pair, 0, Py_NewRef(prev));
        PyList_SET_ITEM(pair, 1, Py_NewRef(lease));
        int e = PyDict_SetItem(cm, owner, pair);
        Py_DECREF(pair);
        if (e < 0) {
            goto done;
        }
    }
    r = ready_new(lease);
done:
    Py_XDECREF(cm);
    Py_XDECREF(lease);  /* on error, a granted Lease is dropped here and returns its permits */
    Py_XDECREF(site);
    Py_XDECREF(fair);
    Py_XDECREF(owner);
    Py_DECREF(ch);
    return r;
}

/* twin: _primitives.Semaphore.__aexit__ (a task's single `async with` lease on a native channel) */
static PyObject *
sem_aexit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ch, *owner = NULL, *cm = NULL, *lease, *r = NULL;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__aexit__ takes 3 arguments");
        return NULL;
    }
    ch = slot_get(self, off_ch, s_ch);
    if (ch == NULL) {
        return NULL;
    }
    if (!IS_NATIVE(ch)) {
        Py_DECREF(ch);
        return call_with_self(py_sem_aexit, self, args, nargs, NULL);
    }
    Py_DECREF(ch);
    if ((owner = task_owner()) == NULL || (cm = slot_get(self, off_cm, s_cm)) == NULL) {
        goto done;
    }
    lease = PyDict_CheckExact(cm) ? PyDict_GetItemWithError(cm, owner) : NULL;  /* borrowed */
    if (lease == NULL || PyList_CheckExact(lease)) {  /* none, or nested blocks: the Python twin */
        if (!PyErr_Occurred()) {
            r = call_with_self(py_sem_aexit, self, args, nargs, NULL);
        }
        goto done;
    }
    Py_INCREF(lease);
    if (PyDict_DelItem(cm, owner) < 0) {
        Py_DECREF(lease);
        goto done;
    }
    r = lease_release(lease, NULL);  /* memory:// release never blocks */
    Py_DECREF(lease);
    if (r != NULL) {
        /* one shared awaitable of None: a Ready holds nothing but its result */
        if (ready_none == NULL) {
            ready_none = ready_new(Py_None);
        }
        Py_SETREF(r, Py_XNewRef(ready_none));
    }
done:
    Py_XDECREF(cm);
    Py_XDECREF(owner);
    return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* Acquire: what the C Semaphore.acquire_async returns (twin: the coroutine of                     */
/* MemoryChannel.acquire_async that the Python method returns).                                    */
/*                                                                                                */
/* A coroutine-like object (send, throw, close, __await__: asyncio.iscoroutine() accepts it, so     */
/* create_task() and wait_for() take it as they take the Python coroutine). Like a coroutine it     */
/* does nothing until first resumed: the grant is tried at the first send (the `await`), and an     */
/* uncontended grant returns at once through am_send (PYGEN_RETURN, no StopIteration object). When  */
/* the request must wait it creates the Python coroutine (MemoryChannel.acquire_async, which        */
/* queues, times out and handles cancellation) and forwards send/throw/close to it from then on.    */
/* A throw or close before the first send grants nothing, as for a coroutine that never started.    */

typedef struct {
    PyObject_HEAD
    PyObject *ch;        /* ChannelState; NULL once started */
    PyObject *permits_obj;
    PyObject *owner;
    PyObject *site;
    PyObject *fair_obj;
    PyObject *inner;     /* the Python coroutine, when the request had to wait */
    Py_ssize_t permits;
    char started;
} AcquireObject;

static PyTypeObject Acquire_Type;

static int
Acquire_traverse(AcquireObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ch);
    Py_VISIT(self->permits_obj);
    Py_VISIT(self->owner);
    Py_VISIT(self->site);
    Py_VISIT(self->fair_obj);
    Py_VISIT(self->inner);
    return 0;
}

static int
Acquire_clear_request(AcquireObject *self)
{
    Py_CLEAR(self->ch);
    Py_CLEAR(self->permits_obj);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->site);
    Py_CLEAR(self->fair_obj);
    return 0;
}

static int
Acquire_clear(AcquireObject *self)
{
    Acquire_clear_request(self);
    Py_CLEAR(self->inner);
    return 0;
}

/* like a coroutine that was never awaited (nor closed): say so, since the acquire never happened */
static void
Acquire_finalize(AcquireObject *self)
{
    if (self->started) {
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
#endif
    if (PyErr_WarnEx(PyExc_RuntimeWarning, "Semaphore.acquire_async() was never awaited", 1) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(et, ev, tb);
#endif
}

static void
Acquire_dealloc(AcquireObject *self)
{
    /* the finalizer does nothing once started */
    if (!self->started && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected by a warning filter */
    }
    PyObject_GC_UnTrack(self);
    Acquire_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
acquire_new(ChannelState *ch, Py_ssize_t permits, PyObject *permits_obj, PyObject *owner, PyObject *site,
            PyObject *fair_obj)
{
    AcquireObject *a = PyObject_GC_New(AcquireObject, &Acquire_Type);
    if (a == NULL) {
        return NULL;
    }
    a->ch = Py_NewRef((PyObject *)ch);
    a->permits_obj = Py_NewRef(permits_obj);
    a->owner = Py_NewRef(owner);
    a->site = Py_NewRef(site);
    a->fair_obj = Py_NewRef(fair_obj);
    a->inner = NULL;
    a->permits = permits;
    a->started = 0;
    PyObject_GC_Track(a);
    return (PyObject *)a;
}

static PySendResult
Acquire_send_impl(AcquireObject *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (self->inner != NULL) {
        return PyIter_Send(self->inner, arg, result);
    }
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited acquire_async()");
        return PYGEN_ERROR;
    }
    if (arg != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started acquire_async()");
        return PYGEN_ERROR;
    }
    self->started = 1;
    int fair = PyObject_IsTrue(self->fair_obj);
    if (fair < 0) {
        Acquire_clear_request(self);
        return PYGEN_ERROR;
    }
    PyObject *lease = try_grant((ChannelState *)self->ch, self->permits, self->permits_obj, self->owner,
                                self->site, s_permits_mode, fair);
    if (lease != NULL && lease != Py_None) {
        Acquire_clear_request(self);
        *result = lease;
        return PYGEN_RETURN;
    }
    if (lease == Py_None) {  /* must wait: the Python coroutine does it all */
        Py_DECREF(lease);
        PyObject *args[8] = {self->ch, self->permits_obj, Py_None, Py_True, self->owner, self->site,
                             s_permits_mode, self->fair_obj};
        self->inner = PyObject_VectorcallMethod(s_acquire_async, args, 8 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Acquire_clear_request(self);
    if (self->inner == NULL) {
        return PYGEN_ERROR;
    }
    return PyIter_Send(self->inner, Py_None, result);
}

/* send() and iteration from Python: a return becomes StopIteration(value), as for a coroutine */
static PyObject *
Acquire_send_py(AcquireObject *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = Acquire_send_impl(self, arg, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_StopIteration, exc);
                Py_DECREF(exc);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
Acquire_iternext(AcquireObject *self)
{
    return Acquire_send_py(self, Py_None);
}

static PyObject *
Acquire_throw(AcquireObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(typ[, val[, tb]])");
        return NULL;
    }
    if (self->inner != NULL) {
        PyObject *stack[5] = {NULL, self->inner};
        for (Py_ssize_t i = 0; i < nargs; i++) {
            stack[i + 2] = args[i];
        }
        return PyObject_VectorcallMethod(s_throw, stack + 1, (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    /* not started (or finished): nothing was granted; raise the exception here */
    self->started = 1;
    Acquire_clear_request(self);
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException");
    }
    return NULL;
}

static PyObject *
Acquire_close(AcquireObject *self, PyObject *Py_UNUSED(ignored))
{
    self->started = 1;
    Acquire_clear_request(self);
    if (self->inner != NULL) {
        return PyObject_CallMethodNoArgs(self->inner, s_close);
    }
    Py_RETURN_NONE;
}

static PyObject *
Acquire_await(AcquireObject *self)
{
    return Py_NewRef(self);
}

static PyMethodDef Acquire_methods[] = {
    {"send", (PyCFunction)Acquire_send_py, METH_O, "send(value)\n--\n\nResume (as coroutine.send)."},
    {"throw", (PyCFunction)(void (*)(void))Acquire_throw, METH_FASTCALL,
     "throw(typ[, val[, tb]])\n--\n\nRaise inside (as coroutine.throw); before the first send nothing was granted."},
    {"close", (PyCFunction)Acquire_close, METH_NOARGS, "close()\n--\n\nClose (as coroutine.close)."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods Acquire_async = {
    .am_await = (unaryfunc)Acquire_await,
    .am_send = (sendfunc)Acquire_send_impl,
};

static PyTypeObject Acquire_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interlock._speedups.Acquire",
    .tp_doc = "The awaitable of Semaphore.acquire_async() on a native memory:// channel (a coroutine twin).",
    .tp_basicsize = sizeof(AcquireObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Acquire_dealloc,
    .tp_finalize = (destructor)Acquire_finalize,
    .tp_traverse = (traverseproc)Acquire_traverse,
    .tp_clear = (inquiry)Acquire_clear,
    .tp_as_async = &Acquire_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Acquire_iternext,
    .tp_methods = Acquire_methods,
};

/* twin: _primitives.Semaphore.acquire_async (the C path takes only `acquire_async()` /
   `acquire_async(n)`; keyword arguments, debug mode and other backends run the Python method) */
static PyObject *
sem_acquire_async(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), permits = 1;
    PyObject *permits_obj = one, *owner = NULL, *fair = NULL, *site = NULL, *r = NULL;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs > 1) {
        return call_with_self(py_sem_acquire_async, self, args, nargs, kwnames);
    }
    if (nargs == 1) {
        permits_obj = args[0];
        if (!PyLong_CheckExact(permits_obj) || (permits = PyLong_AsSsize_t(permits_obj)) < 1) {
            PyErr_Clear();
            return call_with_self(py_sem_acquire_async, self, args, nargs, kwnames);
        }
    }
    ChannelState *ch = fast_channel(self);
    if (ch == NULL) {
        return PyErr_Occurred() ? NULL : call_with_self(py_sem_acquire_async, self, args, nargs, kwnames);
    }
    if ((owner = task_owner()) != NULL && (fair = slot_get(self, off_fair, s_fair)) != NULL
        && (site = caller_code()) != NULL) {
        r = acquire_new(ch, permits, permits_obj, owner, site, fair);
    }
    Py_XDECREF(site);
    Py_XDECREF(fair);
    Py_XDECREF(owner);
    Py_DECREF(ch);
    return r;
}

static int
reentrant(PyObject *self)
{
    PyObject *v = _PyType_Lookup(Py_TYPE(self), s_reentrant);  /* borrowed */
    return v != NULL && PyObject_IsTrue(v);
}

/* twin: _primitives.Lock.__enter__ (non-reentrant locks) */
static PyObject *
lock_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ChannelState *ch;
    PyObject *owner, *lease;
    if (reentrant(self) || (ch = fast_channel(self)) == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(py_lock_enter, self);
    }
    if ((owner = current_thread_owner()) == NULL) {
        Py_DECREF(ch);
        return NULL;
    }
    lease = facade_grant(ch, 1, one, owner, s_exclusive, Py_True);
    if (lease != NULL) {
        Py_XSETREF(ch->r_lease, Py_NewRef(lease));
        ch->r_depth = 1;
    }
    Py_DECREF(owner);
    Py_DECREF(ch);
    return lease;
}

/* twin: _primitives.Lock.acquire (the C path takes only `acquire()`) */
static PyObject *
lock_acquire(PyObject *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs > 0) {
        return call_with_self(py_lock_acquire, self, args, nargs, kwnames);
    }
    ChannelState *ch;
    PyObject *owner, *lease;
    if (reentrant(self) || (ch = fast_channel(self)) == NULL) {
        return PyErr_Occurred() ? NULL : call_with_self(py_lock_acquire, self, args, nargs, kwnames);
    }
    if ((owner = current_thread_owner()) == NULL) {
        Py_DECREF(ch);
        return NULL;
    }
    lease = facade_grant(ch, 1, one, owner, s_exclusive, Py_True);
    if (lease != NULL) {
        Py_XSETREF(ch->r_lease, Py_NewRef(lease));
        ch->r_depth = 1;
    }
    Py_DECREF(owner);
    Py_DECREF(ch);
    return lease;
}

/* twin: _primitives.Lock.__exit__ (non-reentrant locks) */
static PyObject *
lock_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ChannelState *ch;
    PyObject *lease, *r;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    if (reentrant(self) || (ch = (ChannelState *)slot_get(self, off_ch, s_ch)) == NULL) {
        return PyErr_Occurred() ? NULL : call_with_self(py_lock_exit, self, args, nargs, NULL);
    }
    if (!IS_NATIVE(ch)) {
        Py_DECREF(ch);
        return call_with_self(py_lock_exit, self, args, nargs, NULL);
    }
    lease = ch->r_lease;  /* steal the channel's reference */
    ch->r_lease = NULL;
    if (lease == NULL || lease == Py_None) {
        Py_XDECREF(lease);
        Py_DECREF(ch);
        Py_RETURN_NONE;
    }
    r = lease_release(lease, NULL);  /* (_r_lease is only ever a lease of this channel, but check) */
    Py_DECREF(lease);
    Py_DECREF(ch);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* twins: _lease.Lease.release / __exit__ / __enter__. A HELD lease of a native channel is released
   here (lease_release); every other case (lost, released, other backends) runs the Python method. */
static PyObject *py_lease_release, *py_lease_exit, *py_lease_enter;

/* A HELD lease of another backend (file://, redis://): the HELD branch of the Python Lease.release,
   `self._state = RELEASED; self._channel.release(self, self.permits)`, without its frame (on file:// every
   line before the wake-up post of a handoff is handoff latency). */
static PyObject *
lease_release_other(LeaseObject *l)
{
    PyObject *ch = l->channel, *permits = l->permits;
    if (permits == NULL) {
        return PyObject_CallOneArg(py_lease_release, (PyObject *)l);
    }
    Py_INCREF(ch);
    Py_INCREF(permits);
    l->state = LEASE_RELEASED;
    PyObject *args[3] = {ch, (PyObject *)l, permits};
    PyObject *r = PyObject_VectorcallMethod(s_release, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(permits);
    Py_DECREF(ch);
    return r;
}

static PyObject *
lease_release_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    LeaseObject *l = (LeaseObject *)self;
    if (l->state != LEASE_HELD || l->channel == NULL) {
        return PyObject_CallOneArg(py_lease_release, self);
    }
    if (!IS_NATIVE(l->channel)) {
        return lease_release_other(l);
    }
    return lease_release(self, l->channel);
}

static PyObject *
lease_exit_method(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    LeaseObject *l = (LeaseObject *)self;
    if (nargs != 3 || l->state != LEASE_HELD || l->channel == NULL) {
        return call_with_self(py_lease_exit, self, args, nargs, NULL);
    }
    if (!IS_NATIVE(l->channel)) {
        return lease_release_other(l);
    }
    return lease_release(self, l->channel);
}

static PyObject *
lease_enter_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyMethodDef lease_defs[] = {
    {"release", (PyCFunction)lease_release_method, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))lease_exit_method, METH_FASTCALL, NULL},
    {"__enter__", (PyCFunction)lease_enter_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};
static PyObject **lease_fallbacks[] = {&py_lease_release, &py_lease_exit, &py_lease_enter};

static PyMethodDef sem_defs[] = {
    {"__enter__", (PyCFunction)sem_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))sem_exit, METH_FASTCALL, NULL},
    {"acquire", (PyCFunction)(void (*)(void))sem_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"__aenter__", (PyCFunction)sem_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))sem_aexit, METH_FASTCALL, NULL},
    {"acquire_async", (PyCFunction)(void (*)(void))sem_acquire_async, METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef lock_defs[] = {
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, NULL},
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject **sem_fallbacks[] = {&py_sem_enter, &py_sem_exit, &py_sem_acquire, &py_sem_aenter, &py_sem_aexit,
                                     &py_sem_acquire_async};
static PyObject **lock_fallbacks[] = {&py_lock_enter, &py_lock_exit, &py_lock_acquire};

static int
bind(PyObject *cls, PyMethodDef *defs, PyObject ***fallbacks)
{
    for (int i = 0; defs[i].ml_name != NULL; i++) {
        PyObject *orig = PyObject_GetAttrString(cls, defs[i].ml_name);
        if (orig == NULL) {
            return -1;
        }
        /* keep the Python method's docstring for help() (a copy that lives as long as the process) */
        PyObject *doc = PyObject_GetAttrString(orig, "__doc__");
        Py_XSETREF(*fallbacks[i], orig);
        if (doc == NULL) {
            return -1;
        }
        if (defs[i].ml_doc == NULL && PyUnicode_Check(doc)) {
            Py_ssize_t size;
            const char *text = PyUnicode_AsUTF8AndSize(doc, &size);
            char *copy = text == NULL ? NULL : PyMem_RawMalloc(size + 1);
            if (copy == NULL) {
                Py_DECREF(doc);
                if (!PyErr_Occurred()) {
                    PyErr_NoMemory();
                }
                return -1;
            }
            memcpy(copy, text, size + 1);
            defs[i].ml_doc = copy;
        }
        PyObject *descr = PyDescr_NewMethod((PyTypeObject *)cls, &defs[i]);
        if (descr == NULL) {
            Py_DECREF(doc);
            return -1;
        }
        int e = PyObject_SetAttrString(cls, defs[i].ml_name, descr);
        Py_DECREF(descr);
        Py_DECREF(doc);
        if (e < 0) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
bind_facades(PyObject *module, PyObject *args)
{
    PyObject *lock_cls, *sem_cls, *tls_o, *thread_owner_o, *lease_mod, *task_owner_o, *owner_cls, *task_lookup, *d;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO!O:bind_facades", &PyType_Type, &lock_cls, &PyType_Type, &sem_cls,
                          &tls_o, &thread_owner_o, &lease_mod, &task_owner_o, &PyType_Type, &owner_cls,
                          &task_lookup)) {
        return NULL;
    }
    Py_XSETREF(ThreadOwner_type, (PyTypeObject *)Py_NewRef(owner_cls));
    if (!PyTuple_Check(task_lookup) || PyTuple_GET_SIZE(task_lookup) != 3) {
        PyErr_SetString(PyExc_TypeError, "task_lookup must be (get_running_loop, table or None, current_task)");
        return NULL;
    }
    Py_XSETREF(get_running_loop_fn, Py_NewRef(PyTuple_GET_ITEM(task_lookup, 0)));
    Py_CLEAR(current_tasks);
    if (PyDict_CheckExact(PyTuple_GET_ITEM(task_lookup, 1))) {
        current_tasks = Py_NewRef(PyTuple_GET_ITEM(task_lookup, 1));
    }
    Py_XSETREF(current_task_fn, Py_NewRef(PyTuple_GET_ITEM(task_lookup, 2)));
    off_ch = slot_offset(sem_cls, "_ch");
    off_fair = slot_offset(sem_cls, "_fair");
    off_cm = slot_offset(sem_cls, "_cm");
    off_cm_stack = slot_offset(owner_cls, "cm_stack");
    if (slot_offset(lock_cls, "_ch") != off_ch) {
        PyErr_SetString(PyExc_TypeError, "Lock and Semaphore must share the _Primitive slots");
        return NULL;
    }
    if ((d = PyObject_GetAttrString(lease_mod, "__dict__")) == NULL) {
        return NULL;
    }
    Py_XSETREF(lease_module_dict, d);
    Py_XSETREF(tls, Py_NewRef(tls_o));
    Py_XSETREF(thread_owner_fn, Py_NewRef(thread_owner_o));
    Py_XSETREF(task_owner_fn, Py_NewRef(task_owner_o));
    if (bind(sem_cls, sem_defs, sem_fallbacks) < 0 || bind(lock_cls, lock_defs, lock_fallbacks) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
bind_lease(PyObject *module, PyObject *lease_cls)
{
    if (!PyType_Check(lease_cls) || !PyType_IsSubtype((PyTypeObject *)lease_cls, &LeaseBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "bind_lease() needs the Lease class (a LeaseBase subclass)");
        return NULL;
    }
    if (bind(lease_cls, lease_defs, lease_fallbacks) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *lease_type, *untrack;
    if (!PyArg_ParseTuple(args, "O!O:configure", &PyType_Type, &lease_type, &untrack)) {
        return NULL;
    }
    /* grant_locked allocates Leases with tp_alloc and fills the LeaseBase struct: Lease must be a
       subclass that adds no storage of its own (__slots__ = ()) and no __new__/__init__ work the fast
       path would skip beyond what LeaseBase_new does. */
    if (!PyType_IsSubtype((PyTypeObject *)lease_type, &LeaseBase_Type)
        || ((PyTypeObject *)lease_type)->tp_basicsize != LeaseBase_Type.tp_basicsize
        || ((PyTypeObject *)lease_type)->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "Lease must subclass LeaseBase with __slots__ = ()");
        return NULL;
    }
    Py_XSETREF(Lease_type, Py_NewRef(lease_type));
    Py_XSETREF(untrack_task_death, Py_NewRef(untrack));
    Py_RETURN_NONE;
}

/* ============================================================================================== */
/* Contended handoff (thread waiters).                                                             */
/*                                                                                                 */
/*   ChannelState._release_contended  twin: memory.py _MemoryChannelBase.release (with its          */
/*                                    _wake_granted while the head is a ThreadWaiter or a TaskWaiter */
/*                                    of the loop running in the releasing thread)                  */
/*   ChannelState._acquire_contended  twin: memory.py _MemoryChannelBase.acquire (+ _wait_thread)   */
/*                                    for a blocking semaphore wait without timeout                 */
/*                                                                                                 */
/* Why in C: under contention every grant is a handoff to a parked thread, and that thread's wake-up */
/* (a futex wake, about 5 us on the 2-core VM) is on the critical path. Two things make it longer    */
/* in Python: the releaser runs several Python frames before the wake, and after it the releaser     */
/* keeps the GIL for the frames of its own re-acquire, so the woken thread finds the GIL taken,      */
/* parks on the GIL's condition variable and needs a second wake-up. Here the wake is the first      */
/* thing done once the permits are back, and a releaser that has to queue again drops the GIL within */
/* a few hundred ns. The queue rule is unchanged: strict FIFO from the head, one mutex, the state of  */
/* a waiter changes only under it (_core/waiter.py). Anything else (a TaskWaiter at the head, a      */
/* timeout, an owned primitive with deadlock tracking, a running event loop, an exception while      */
/* blocked) is handed to the same Python methods as before.                                         */

static PyTypeObject *ThreadWaiter_type = NULL;  /* interlock._core.waiter.ThreadWaiter */
static PyTypeObject *TaskWaiter_type = NULL;    /* interlock._core.waiter.TaskWaiter */
static PyObject *py_acquire_full = NULL;        /* _MemoryChannelBase.acquire */
static PyObject *py_release_full = NULL;        /* _MemoryChannelBase.release */
static PyObject *allocate_lock_fn = NULL;       /* _thread.allocate_lock */
static PyObject *waiting_obj = NULL, *granted_obj = NULL;  /* _core.waiter.WAITING / GRANTED */
static Py_ssize_t off_w_lease, off_w_mode, off_w_owner, off_w_permits, off_w_since, off_w_site, off_w_state,
    off_w_lock, off_w_fut, off_w_loop;
static PyObject *s_wake_granted, *s_withdraw, *s_popleft, *s_append, *s_appendleft, *s_owned, *s_bounded, *s_capacity,
    *s_spare_waiter, *s_done, *s_set_result;

/* a __slots__ member of a waiter (offsets checked by configure_handoff); borrowed, NULL if unset */
#define WSLOT(w, off) (*(PyObject **)((char *)(w) + (off)))

static inline void
wslot_set(PyObject *w, Py_ssize_t off, PyObject *value)  /* steals `value` */
{
    PyObject **p = (PyObject **)((char *)w + off);
    Py_XSETREF(*p, value);
}

static int handoff_loop(ChannelState *self, PyObject **running_loop);

/* The kind of waiter the C handoff serves: 1 a ThreadWaiter, 2 a TaskWaiter of the event loop running in
   this thread (its future can be resolved directly, as TaskWaiter.wake does), 0 anything else (the
   Python _wake_granted serves it: another loop's task needs call_soon_threadsafe, which can fail). */
static int
waiter_kind(PyObject *w, PyObject **running_loop)
{
    if (Py_IS_TYPE(w, ThreadWaiter_type)) {
        return WSLOT(w, off_w_lock) != NULL ? 1 : 0;
    }
    if (TaskWaiter_type == NULL || !Py_IS_TYPE(w, TaskWaiter_type) || WSLOT(w, off_w_fut) == NULL
        || get_running_loop_fn == NULL) {
        return 0;
    }
    if (*running_loop == NULL && (*running_loop = PyObject_CallNoArgs(get_running_loop_fn)) == NULL) {
        PyErr_Clear();
        return 0;
    }
    return WSLOT(w, off_w_loop) == *running_loop && *running_loop != Py_None ? 2 : 0;
}

/* Wake the thread parked on a waiter's Mutex. A wake still pending (the lock already open, its thread
   not yet back) is not repeated: a second release of the underlying lock would let two waits through. */
static inline void
waiter_lock_open(MutexObject *m)
{
    if (m->locked) {
        mutex_unlock(m);
    }
}

/* Wake a granted waiter of kind 1 or 2 (twins: ThreadWaiter.wake, TaskWaiter.wake on its own loop). */
static int
wake_waiter(PyObject *w, int kind)
{
    PyObject *r;
    if (kind == 1) {
        /* its lock was taken when it was made and only this grant can free it */
        PyObject *lock = WSLOT(w, off_w_lock);
        if (Py_IS_TYPE(lock, &Mutex_Type)) {  /* made by new_thread_waiter: no method call */
            waiter_lock_open((MutexObject *)lock);
            return 0;
        }
        r = PyObject_CallMethodNoArgs(lock, s_release);
    }
    else {
        PyObject *fut = WSLOT(w, off_w_fut);
        if ((r = PyObject_CallMethodNoArgs(fut, s_done)) == NULL) {
            return -1;
        }
        int done = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (done < 0) {
            return -1;
        }
        /* a done future: its task was cancelled meanwhile and gives the grant back (_withdraw) */
        r = done ? Py_NewRef(Py_None) : PyObject_CallMethodOneArg(fut, s_set_result, Py_None);
    }
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Twin of _wake_granted while the head is a waiter that waiter_kind() accepts: grant from the head, in
   FIFO order, while the head fits. Caller holds the mutex. Returns 0 when done, 1 when the head is
   another kind of waiter (the caller runs the Python _wake_granted for the rest), -1 with an exception. */
static int
handoff_locked(ChannelState *self)
{
    PyObject *running_loop = NULL;
    int r = handoff_loop(self, &running_loop);
    Py_XDECREF(running_loop);
    return r;
}

static int
handoff_loop(ChannelState *self, PyObject **running_loop)
{
    for (;;) {
        Py_ssize_t n = queue_length(self);
        if (n <= 0) {
            return (int)n;
        }
        PyObject *w = PySequence_GetItem(self->waiters, 0);
        if (w == NULL) {
            return -1;
        }
        PyObject *permits_obj = WSLOT(w, off_w_permits);
        int kind = waiter_kind(w, running_loop);
        if (kind == 0 || permits_obj == NULL || !PyLong_CheckExact(permits_obj)) {
            Py_DECREF(w);
            return 1;
        }
        Py_ssize_t permits = PyLong_AsSsize_t(permits_obj);
        if (permits > self->available) {  /* head-of-line: nobody passes a head that does not fit */
            Py_DECREF(w);
            return 0;
        }
        PyObject *owner = WSLOT(w, off_w_owner), *site = WSLOT(w, off_w_site), *mode = WSLOT(w, off_w_mode);
        if (owner == NULL || site == NULL || mode == NULL) {
            Py_DECREF(w);
            return 1;
        }
        PyObject *wl = kind == 1 ? WSLOT(w, off_w_lock) : NULL;
        if (wl != NULL && Py_IS_TYPE(wl, &Mutex_Type)) {
            /* A thread parked in contended_acquire. Its wake-up takes microseconds, so the wake comes
               first and the grant is built meanwhile: the woken thread needs the GIL, which this
               thread keeps until the grant is complete (state GRANTED last). If the GIL is lost in
               between anyway (a finalizer run by an allocation), the woken thread finds the waiter
               still WAITING and waits for this mutex, which is held until the grant is complete;
               after a failed grant (MemoryError) it is back at the head, WAITING, and waits again. */
            PyObject *popped = PyObject_CallMethodNoArgs(self->waiters, s_popleft);  /* cannot fail: n > 0 */
            Py_XDECREF(popped);
            waiter_lock_open((MutexObject *)wl);
            PyObject *lease = grant_locked(self, permits, permits_obj, owner, site, mode);
            if (lease == NULL) {
                PyObject *et, *ev, *tb;
                PyErr_Fetch(&et, &ev, &tb);
                PyObject *r = PyObject_CallMethodOneArg(self->waiters, s_appendleft, w);
                Py_XDECREF(r);
                PyErr_Clear();
                PyErr_Restore(et, ev, tb);
                Py_DECREF(w);
                return -1;
            }
            wslot_set(w, off_w_lease, lease);
            wslot_set(w, off_w_state, Py_NewRef(granted_obj));
            Py_DECREF(w);
            continue;
        }
        PyObject *lease = grant_locked(self, permits, permits_obj, owner, site, mode);
        if (lease == NULL) {
            Py_DECREF(w);
            return -1;
        }
        /* committed. The waiter leaves the queue exactly when it leaves WAITING; the wake comes first
           (it starts the woken thread's OS wake-up), the popleft still under this mutex, and the woken
           waiter reads only its own lease and state. */
        wslot_set(w, off_w_lease, lease);
        wslot_set(w, off_w_state, Py_NewRef(granted_obj));
        int e = wake_waiter(w, kind);
        PyObject *popped = PyObject_CallMethodNoArgs(self->waiters, s_popleft);  /* cannot fail: n > 0 */
        Py_XDECREF(popped);
        Py_DECREF(w);
        if (e < 0) {
            return -1;
        }
    }
}

/* twin: _MemoryChannelBase.release, under the mutex (the caller holds it). Return `permits` (at most
   what is held) of the grant `token` and hand them to the head waiter(s). *rec_out gets the removed
   holder record (NULL if it was not held any more): the caller drops it only after unlocking.
   Returns 0, or -1 with an exception. */
static int
release_locked(ChannelState *self, PyObject *token, Py_ssize_t permits, int ab, PyObject **rec_out)
{
    Py_ssize_t held;
    int err;
    PyObject *rec = PyDict_GetItemWithError(self->holders, token);  /* borrowed */
    *rec_out = NULL;
    if (rec == NULL) {
        return PyErr_Occurred() ? -1 : 0;  /* not held (any more): nothing to return */
    }
    if (!PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) != 4
        || (held = PyLong_AsSsize_t(PyTuple_GET_ITEM(rec, 1))) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "corrupt holder record");
        }
        return -1;
    }
    *rec_out = Py_NewRef(rec);
    if (permits < held) {  /* partial release: keep the rest */
        PyObject *rest = PyLong_FromSsize_t(held - permits), *nrec = NULL;
        if (rest != NULL) {
            nrec = PyTuple_Pack(4, PyTuple_GET_ITEM(rec, 0), rest, PyTuple_GET_ITEM(rec, 2),
                                PyTuple_GET_ITEM(rec, 3));
            Py_DECREF(rest);
        }
        err = nrec == NULL ? -1 : PyDict_SetItem(self->holders, token, nrec);
        Py_XDECREF(nrec);
        held = permits;
    }
    else {
        err = PyDict_DelItem(self->holders, token);
    }
    if (err < 0) {
        return -1;
    }
    self->available += held;
    if (ab) {
        self->prev_died = 1;
    }
    int h = handoff_locked(self);
    if (h == 1) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self, s_wake_granted);
        h = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    return h;
}

/* twin: _MemoryChannelBase.release. Return `permits` of `lease` and hand them to the head waiter(s). */
static PyObject *
ChannelState_release_contended(ChannelState *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t permits, nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int ab = 0, err;
    PyObject *lease, *token, *rec, *cb;
    if (nargs < 2 || nargs + nkw > 3
        || (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "abandoned") != 0)) {
        PyErr_SetString(PyExc_TypeError, "_release_contended(lease, permits, abandoned=False)");
        return NULL;
    }
    lease = args[0];
    if (get_permits(args[1], &permits) < 0 || (nargs + nkw == 3 && (ab = PyObject_IsTrue(args[2])) < 0)) {
        return NULL;
    }
    if (self->holders == NULL || self->waiters == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "memory channel not initialised");
        return NULL;
    }
    /* with the accelerator built every Lease (even one made by Lease(...)) has the C core */
    if (!IS_LEASE(lease) || ((LeaseObject *)lease)->token == NULL) {
        PyErr_SetString(PyExc_TypeError, "_release_contended() needs a granted Lease");
        return NULL;
    }
    token = Py_NewRef(((LeaseObject *)lease)->token);
    MutexObject *m = (MutexObject *)self->mutex;
    if (mutex_lock(m) < 0) {
        Py_DECREF(token);
        return NULL;
    }
    err = release_locked(self, token, permits, ab, &rec);
    mutex_unlock(m);
    /* references are dropped only now, outside the mutex */
    Py_XDECREF(rec);
    Py_DECREF(token);
    if (err < 0) {
        return NULL;
    }
    cb = ((LeaseObject *)lease)->death_cb;  /* borrowed; NULL when never set */
    if (cb != NULL && cb != Py_None) {
        return PyObject_CallOneArg(untrack_task_death, lease);
    }
    Py_RETURN_NONE;
}

/* A ThreadWaiter made without its Python __init__ (same fields: Waiter.__init__, ThreadWaiter.__init__).
   Each thread keeps the waiter of its last wait that ended normally (its lock locked again, its lease
   cleared) in its thread state dict and reuses it for the next wait when nothing else refers to it any
   more (the queue dropped it when it was granted): no allocation, no new lock on a contended acquire. */
static PyObject *
new_thread_waiter(PyObject *permits_obj, PyObject *owner, PyObject *site, PyObject *mode)
{
    PyObject *w, *lock, *since;
    PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
    if ((since = PyFloat_FromDouble(monotonic_seconds())) == NULL) {
        return NULL;
    }
    w = tdict == NULL ? NULL : PyDict_GetItemWithError(tdict, s_spare_waiter);  /* borrowed */
    if (w != NULL && Py_IS_TYPE(w, ThreadWaiter_type) && Py_REFCNT(w) == 1 && WSLOT(w, off_w_lock) != NULL) {
        Py_INCREF(w);  /* only the dict refers to it: it stays there, unseen by anyone else */
    }
    else {
        if (w == NULL && PyErr_Occurred()) {
            Py_DECREF(since);
            return NULL;
        }
        /* The waiter's lock is a Mutex (it has the release() that ThreadWaiter.wake calls), which the
           wait below and wake_waiter use without method calls. Only a grant unlocks it. */
        if ((lock = Mutex_new(&Mutex_Type, NULL, NULL)) == NULL) {
            Py_DECREF(since);
            return NULL;
        }
        if (mutex_lock((MutexObject *)lock) < 0) {  /* a fresh lock: never blocks */
            Py_DECREF(lock);
            Py_DECREF(since);
            return NULL;
        }
        w = ThreadWaiter_type->tp_new(ThreadWaiter_type, empty_tuple, NULL);
        if (w == NULL) {
            Py_DECREF(since);
            Py_DECREF(lock);
            return NULL;
        }
        wslot_set(w, off_w_lock, lock);
    }
    wslot_set(w, off_w_permits, Py_NewRef(permits_obj));
    wslot_set(w, off_w_owner, Py_NewRef(owner));
    wslot_set(w, off_w_site, Py_NewRef(site));
    wslot_set(w, off_w_mode, Py_NewRef(mode));
    wslot_set(w, off_w_state, Py_NewRef(waiting_obj));
    wslot_set(w, off_w_lease, Py_NewRef(Py_None));
    wslot_set(w, off_w_since, since);
    return w;
}

/* The channel settings the contended wait reads (see ChannelState.cfg_*): 0, or -1 with an exception. */
static int
load_config(ChannelState *self)
{
    PyObject *v;
    int owned, bounded;
    Py_ssize_t capacity = 0;
    if ((v = PyObject_GetAttr((PyObject *)self, s_owned)) == NULL) {
        return -1;
    }
    owned = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (owned < 0 || (v = PyObject_GetAttr((PyObject *)self, s_bounded)) == NULL) {
        return -1;
    }
    bounded = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (bounded < 0) {
        return -1;
    }
    if (bounded) {
        if ((v = PyObject_GetAttr((PyObject *)self, s_capacity)) == NULL) {
            return -1;
        }
        capacity = PyLong_AsSsize_t(v);
        Py_DECREF(v);
        if (capacity == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    self->cfg_owned = (char)owned;
    self->cfg_bounded = (char)bounded;
    self->cfg_capacity = capacity;
    self->cfg_loaded = 1;
    return 0;
}

/* twin: _MemoryChannelBase.acquire followed by _wait_thread, for acquire(permits, None, True, owner,
   site, mode, fair) on a semaphore (not owned: no wait-for graph) from a thread without a running event
   loop. Returns a new Lease, NULL with an exception, or NULL WITHOUT an exception: not a case of this
   wait, the caller runs the Python method (which re-checks everything). */
static PyObject *
contended_acquire(ChannelState *self, Py_ssize_t permits, PyObject *permits_obj, PyObject *owner,
                  PyObject *site, PyObject *mode, int fair)
{
    PyObject *w = NULL, *lease, *v, *r;
    if (get_running_loop_fn == NULL || self->waiters == NULL || permits < 1) {
        return NULL;
    }
    if (!self->cfg_loaded && load_config(self) < 0) {
        return NULL;
    }
    /* Owned primitives track their waits in the wait-for graph; a request above a bounded capacity
       raises InvalidArgument: both in the Python method. */
    if (self->cfg_owned || (self->cfg_bounded && permits > self->cfg_capacity)) {
        return NULL;
    }
    /* The Python method starts with a _try_grant. Under contention the permits are taken or others
       queue, so it is tried only when this (unlocked, GIL-protected) look says it could succeed; the
       locked section below decides either way. */
    if (self->available >= permits && (!fair || queue_length(self) == 0)) {
        lease = try_grant(self, permits, permits_obj, owner, site, mode, fair);
        if (lease != Py_None) {
            return lease;  /* granted, or NULL with an exception */
        }
        Py_DECREF(lease);
    }
    /* A thread running an event loop must not block it: the Python method raises BlockingCallInEventLoop. */
    if ((v = PyObject_CallNoArgs(get_running_loop_fn)) == NULL) {
        return NULL;
    }
    int loop_running = v != Py_None;
    Py_DECREF(v);
    if (loop_running) {
        return NULL;
    }
    if ((w = new_thread_waiter(permits_obj, owner, site, mode)) == NULL) {
        return NULL;
    }
    MutexObject *m = (MutexObject *)self->mutex;
    if (mutex_lock(m) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    Py_ssize_t queued = queue_length(self);
    if (queued < 0) {
        lease = NULL;
    }
    else if (self->available >= permits && (queued == 0 || !fair)) {  /* freed meanwhile */
        lease = grant_locked(self, permits, permits_obj, owner, site, mode);
    }
    else {
        r = PyObject_CallMethodOneArg(self->waiters, s_append, w);
        lease = r == NULL ? NULL : Py_None;
        Py_XDECREF(r);
    }
    mutex_unlock(m);
    if (lease != Py_None) {
        Py_DECREF(w);
        return lease;
    }
    /* Queued. Block on the waiter's lock (the GIL is dropped inside): only the handoff releases it,
       after it set state = GRANTED and stored the lease. */
    PyObject *wl = WSLOT(w, off_w_lock);
    if (Py_IS_TYPE(wl, &Mutex_Type)) {
        /* handoff_loop wakes before it completes the grant (see there): a waiter still WAITING
           waits for the granter's mutex, then looks again; still WAITING means the grant failed and
           the waiter is queued again, so it waits for the next wake. */
        for (;;) {
            if (mutex_lock((MutexObject *)wl) < 0) {
                r = NULL;
                break;
            }
            if (WSLOT(w, off_w_state) == granted_obj) {
                r = Py_NewRef(Py_True);
                break;
            }
            if (mutex_lock(m) < 0) {
                r = NULL;
                break;
            }
            int again = WSLOT(w, off_w_state) == waiting_obj;
            mutex_unlock(m);
            if (!again) {
                r = Py_NewRef(Py_True);  /* granted (or else: checked below) */
                break;
            }
        }
    }
    else {
        r = PyObject_CallMethodNoArgs(wl, s_acquire);
    }
    if (r == NULL) {
        /* KeyboardInterrupt (or another exception from a signal handler) while blocked: as in
           _wait_thread, withdraw, or give back a grant that raced in, then let it propagate. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        /* A grant may have raced in and unlocked the waiter's lock: never reuse this waiter. */
        PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
        if (tdict != NULL && PyDict_GetItemWithError(tdict, s_spare_waiter) == w
            && PyDict_DelItem(tdict, s_spare_waiter) < 0) {
            PyErr_Clear();
        }
        PyErr_Clear();
        r = PyObject_CallMethodOneArg((PyObject *)self, s_withdraw, w);
        if (r == NULL) {
            PyErr_Clear();  /* the first exception wins, as in the Python `except: ...; raise` */
        }
        Py_XDECREF(r);
        PyErr_Restore(et, ev, tb);
        Py_DECREF(w);
        return NULL;
    }
    Py_DECREF(r);
    lease = WSLOT(w, off_w_lease);
    if (lease == NULL || lease == Py_None || WSLOT(w, off_w_state) != granted_obj) {
        Py_DECREF(w);
        PyErr_SetString(PyExc_RuntimeError, "interlock: a thread waiter woke without its grant");
        return NULL;
    }
    Py_INCREF(lease);
    /* The grant released the lock once and this wait took it back: it is locked, and the waiter is
       done with, so the thread keeps it for its next wait (new_thread_waiter), holding nothing alive. */
    wslot_set(w, off_w_lease, Py_NewRef(Py_None));  /* moves the waiter's reference to us */
    PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
    if (tdict != NULL && PyDict_SetItem(tdict, s_spare_waiter, w) < 0) {
        PyErr_Clear();  /* only a cache */
    }
    Py_DECREF(w);
    return lease;
}

/* ChannelState._acquire_contended: the method form of contended_acquire (MemoryChannel.acquire), for
   acquire(permits, None, True, owner, site, mode, fair); every other call goes to the Python method. */
static PyObject *
ChannelState_acquire_contended(ChannelState *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), permits;
    int fair;
    if (nargs == 7 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) && args[1] == Py_None
        && args[2] == Py_True && PyLong_CheckExact(args[0])) {
        if ((permits = PyLong_AsSsize_t(args[0])) < 1 || (fair = PyObject_IsTrue(args[6])) < 0) {
            PyErr_Clear();
        }
        else {
            PyObject *lease = contended_acquire(self, permits, args[0], args[3], args[4], args[5], fair);
            if (lease != NULL || PyErr_Occurred()) {
                return lease;
            }
        }
    }
    return call_with_self(py_acquire_full, (PyObject *)self, args, nargs, kwnames);
}

static PyMethodDef handoff_methods[] = {
    {"_release_contended", (PyCFunction)(void (*)(void))ChannelState_release_contended,
     METH_FASTCALL | METH_KEYWORDS,
     "_release_contended($self, lease, permits, abandoned=False)\n--\n\n"
     "Return permits and hand them to the head waiter(s) (twin: _MemoryChannelBase.release)."},
    {"_acquire_contended", (PyCFunction)(void (*)(void))ChannelState_acquire_contended,
     METH_FASTCALL | METH_KEYWORDS,
     "_acquire_contended($self, permits, timeout, blocking, owner, site, mode, fair, /)\n--\n\n"
     "Grant, or queue and block (twin: _MemoryChannelBase.acquire)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
configure_handoff(PyObject *module, PyObject *args)
{
    PyObject *tw, *kw, *acq, *rel, *alloc, *waiting, *granted, *chan = NULL;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO|O!:configure_handoff", &PyType_Type, &tw, &PyType_Type, &kw, &acq,
                          &rel, &alloc, &waiting, &granted, &PyType_Type, &chan)) {
        return NULL;
    }
    if (chan != NULL && !PyType_IsSubtype((PyTypeObject *)chan, &ChannelState_Type)) {
        PyErr_SetString(PyExc_TypeError, "the channel class must derive from ChannelState");
        return NULL;
    }
    if ((off_w_fut = slot_offset(kw, "fut")) <= 0 || (off_w_loop = slot_offset(kw, "loop")) <= 0
        || slot_offset(kw, "state") != slot_offset(tw, "state") || slot_offset(kw, "lease") != slot_offset(tw, "lease")
        || slot_offset(kw, "permits") != slot_offset(tw, "permits")) {
        PyErr_SetString(PyExc_TypeError, "TaskWaiter must share the Waiter __slots__ and have fut and loop");
        return NULL;
    }
    Py_XSETREF(TaskWaiter_type, (PyTypeObject *)Py_NewRef(kw));
    Py_ssize_t *offs[] = {&off_w_lease, &off_w_mode, &off_w_owner, &off_w_permits, &off_w_since, &off_w_site,
                          &off_w_state, &off_w_lock};
    const char *names[] = {"lease", "mode", "owner", "permits", "since", "site", "state", "_lock"};
    for (int i = 0; i < 8; i++) {
        if ((*offs[i] = slot_offset(tw, names[i])) <= 0) {
            PyErr_Format(PyExc_TypeError, "ThreadWaiter must have the __slots__ member %s", names[i]);
            return NULL;
        }
    }
    if (((PyTypeObject *)tw)->tp_new != PyBaseObject_Type.tp_new) {
        PyErr_SetString(PyExc_TypeError, "ThreadWaiter must use object.__new__");
        return NULL;
    }
    Py_XSETREF(ThreadWaiter_type, (PyTypeObject *)Py_NewRef(tw));
    Py_XSETREF(py_acquire_full, Py_NewRef(acq));
    Py_XSETREF(py_release_full, Py_NewRef(rel));
    Py_XSETREF(allocate_lock_fn, Py_NewRef(alloc));
    Py_XSETREF(waiting_obj, Py_NewRef(waiting));
    Py_XSETREF(granted_obj, Py_NewRef(granted));
    /* Channels of exactly this class (whose acquire and _release_py are this section's methods) are
       served by direct C calls from the facades and from channel_release. */
    Py_XSETREF(native_channel_type, (PyTypeObject *)Py_XNewRef(chan));
    Py_RETURN_NONE;
}

static PyMethodDef handoff_module_methods[] = {
    {"configure_handoff", configure_handoff, METH_VARARGS,
     "configure_handoff(ThreadWaiter, TaskWaiter, acquire, release, allocate_lock, WAITING, GRANTED, channel_class=None, /)\n--\n\n"
     "Set what the contended handoff uses (the waiter class and the Python fallbacks)."},
    {NULL, NULL, 0, NULL},
};

/* Called by PyInit: the methods of this section, added to ChannelState and to the module. */
#define INTERN_INT(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return -1;

static int
handoff_init(PyObject *module)
{
    INTERN_INT(s_wake_granted, "_wake_granted");
    INTERN_INT(s_withdraw, "_withdraw");
    INTERN_INT(s_popleft, "popleft");
    INTERN_INT(s_append, "append");
    INTERN_INT(s_appendleft, "appendleft");
    INTERN_INT(s_owned, "_owned");
    INTERN_INT(s_bounded, "bounded");
    INTERN_INT(s_capacity, "capacity");
    INTERN_INT(s_spare_waiter, "interlock._speedups.spare_waiter");
    INTERN_INT(s_done, "done");
    INTERN_INT(s_set_result, "set_result");
    for (PyMethodDef *d = handoff_methods; d->ml_name != NULL; d++) {
        PyObject *descr = PyDescr_NewMethod(&ChannelState_Type, d);
        int e = descr == NULL ? -1 : PyDict_SetItemString(ChannelState_Type.tp_dict, d->ml_name, descr);
        Py_XDECREF(descr);
        if (e < 0) {
            return -1;
        }
    }
    PyType_Modified(&ChannelState_Type);
    return PyModule_AddFunctions(module, handoff_module_methods);
}

/* ============================================================================================== */
/* end of the contended handoff section                                                            */

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(Lease, untrack_task_death, /)\n--\n\nSet the classes and hooks the fast paths use."},
    {"bind_lease", bind_lease, METH_O,
     "bind_lease(Lease, /)\n--\n\nInstall the C release/__enter__/__exit__ of Lease (the Python ones stay as fallbacks)."},
    {"bind_facades", bind_facades, METH_VARARGS,
     "bind_facades(Lock, Semaphore, tls, thread_owner, lease_module, task_owner, ThreadOwner, task_lookup, /)\n--\n\n"
     "Install the C fast paths as methods of the facade classes (the Python ones stay as fallbacks)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "interlock._speedups",
    .m_doc = "Optional native accelerator of the memory:// fast path (see memory.py for the twins).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;

PyMODINIT_FUNC
PyInit__speedups(void)
{
#ifdef Py_GIL_DISABLED
    PyErr_SetString(PyExc_ImportError, "interlock._speedups relies on the GIL; using the pure-Python path");
    return NULL;
#else
    PyObject *m;
    INTERN(s_owner, "owner");
    INTERN(s_release, "release");
    INTERN(s_release_slow, "_release_py");
    INTERN(s_debug, "_debug");
    INTERN(s_ch, "_ch");
    INTERN(s_fair, "_fair");
    INTERN(s_cm, "_cm");
    INTERN(s_cm_stack, "cm_stack");
    INTERN(s_acquire, "acquire");
    INTERN(s_permits_mode, "permits");
    INTERN(s_exclusive, "exclusive");
    INTERN(s_acquire_async, "acquire_async");
    INTERN(s_reentrant, "_reentrant");
    INTERN(s_owner_key, "interlock._speedups.thread_owner");
    INTERN(s_on_garbage_collected, "_on_garbage_collected");
    INTERN(s_throw, "throw");
#ifdef LOOP_CACHE
    INTERN(s_loop_cache, "interlock._speedups.running_loop");
    INTERN(s_thread_id, "_thread_id");
    if (pthread_atfork(NULL, NULL, bump_fork_generation) != 0) {
        PyErr_SetString(PyExc_ImportError, "interlock._speedups: pthread_atfork failed");
        return NULL;
    }
#endif
    INTERN(s_close, "close");
    if ((empty_tuple = PyTuple_New(0)) == NULL || (one = PyLong_FromLong(1)) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&LeaseBase_Type) < 0 || PyType_Ready(&Mutex_Type) < 0 || PyType_Ready(&ChannelState_Type) < 0 || PyType_Ready(&Ready_Type) < 0
        || PyType_Ready(&Acquire_Type) < 0) {
        return NULL;
    }
    m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Mutex", (PyObject *)&Mutex_Type) < 0
        || PyModule_AddObjectRef(m, "ChannelState", (PyObject *)&ChannelState_Type) < 0
        || PyModule_AddObjectRef(m, "LeaseBase", (PyObject *)&LeaseBase_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *api = PyCapsule_New(&lease_api, "interlock._speedups._lease_api", NULL);
    if (api == NULL || PyModule_AddObjectRef(m, "_lease_api", api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(api);
    if (handoff_init(m) < 0) {  /* the contended handoff section */
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
