/* interlock.backends.file._fastfile: the optional native twin of the file:// hot transitions.
 *
 * What is here, and its pure-Python twin (keep them in step; tests/file/test_fastfile.py runs both on
 * the same operations and compares the state files byte for byte, and the whole tests/file and
 * contract suites run with INTERLOCK_FILE_PURE=1 as well):
 *
 *   grant()    flock(LOCK_EX) + StateFile.grant_fast_locked + flock(LOCK_UN)       (_state.py)
 *   release()  flock(LOCK_EX) + StateFile.release_locked (full release: no waiter, or the FIFO handoff
 *              to the head waiters with their delivery through Waker._posts) + flock(LOCK_UN)
 *   enqueue()  StateFile.enqueue_locked (called with the lock held after grant() returned None)
 *   wait()     a blocked thread's futex wait and what follows it when the wake-up is its grant: the
 *              SemSlot loop in FileChannel._wait_thread (SemLock.acquire, the mailbox check, the Lease)
 *
 * and two things the Python twin does not do: a C release pokes the waiter that its handoff made the
 * head of the queue, and a C waiter so poked waits for its grant awake for a few tens of microseconds
 * (see "spinning" below); and a C release that woke a grantee in another process yields its CPU to it
 * (see "yielding after a handoff"). Scheduling hints only: the state and the mailbox protocol are the
 * same in both twins, except that the C release posts its deliveries after its unlock (see release()).
 *
 * Why: an uncontended pair and a handoff are each one short locked transition of the state file. In
 * Python such a transition is ~40 lines at ~0.1-1 us each (the releaser of a handoff runs right after a
 * sleep, from cold caches); here it is a few hundred instructions between two flock calls. Likewise a
 * woken grantee runs from cold caches: every line between its wake-up and the return of acquire() is
 * handoff latency.
 *
 * Only the common cases are here. Anything else returns to Python WITH THE FILE LOCK STILL HELD, and
 * the caller runs the Python twin under it, which handles everything (a mapping to grow, a slot to
 * move to the end of the file, a partial release, a wake-up slot not yet opened):
 *
 *   grant():   (token, previous_owner_died, waiters passed)  granted; committed; lock released
 *              None                                        no room (lock HELD: the caller enqueues)
 *              False                                       not handled here (lock HELD)
 *   release(): True                                        released (and handed off, delivered);
 *                                                          lock released
 *              False                                       no such grant of this process; lock released
 *              list of (process, slot, grant datagram)     committed; these grants are still to be
 *                                                          delivered (lock HELD: deliver, then unlock)
 *              None                                        not handled here (lock HELD)
 *
 * Every check comes before the first store, so "not handled" never leaves a partial update.
 *
 * Crash consistency is the Python twin's: the new state is written into the inactive slot, then the
 * one-byte selector flips with a release store (the compiler may not move the slot's stores after it).
 * A process SIGKILLed anywhere in between leaves the old state; the kernel drops its flock.
 *
 * Interrupts: no Python code runs here except the bound sem_post of a delivery (a C method) and, only
 * while blocked in flock() with the GIL released, signal handlers (checked on EINTR, before the lock is
 * taken). So a transition either completes, deliveries included, or changes nothing.
 *
 * Formats (see _state.py): page 0 holds the selector at byte 8 and the slot table (offset u64, size
 * u64) x 2 at byte 24. A slot: capacity i64 | available i64 | last token u64 | next ticket u64 | nh u32
 * | nw u32 | flags u32 | epoch u32, then nh holder and nw waiter records of 80 bytes: key u64 | process
 * u64 | waiter id u64 | permits i64 | since f64 | wake slot u32 | mode u8 | label 35 bytes. All little
 * endian (x86-64 and arm64 Linux, the platforms the backend is tested on; see BIG_ENDIAN below).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <sched.h>
#include <semaphore.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "_fastfile assumes a little-endian host (the state file format is little endian)"
#endif

#define SLOT_HDR 48
#define REC 80
#define LABEL_LEN 35
#define GRANT_LEN 25
#define PREV_DIED 0x80
#define F_PREV_DIED 1u
/* A mailbox slot (32 bytes, _proc.MBOX_SLOT): the grant (GRANT_LEN bytes: waiter id u64 | token u64 |
 * permits i64 | mode u8), then two bytes of the head-of-queue hint (see "spinning" below):
 *   BOX_POKE   set by a releaser whose handoff made this slot's waiter the head of its queue;
 *              cleared by that waiter (an atomic exchange: each poke is taken once).
 *   BOX_SPINS  set by a waiter in wait() (it takes pokes), cleared by the pure-Python waiter (it does
 *              not: a poke would cost it a look at the state), read by releasers before they poke. */
#define BOX_POKE 25
#define BOX_SPINS 26
#define BOX_LEN 32

static double mono(void);

/* -- helpers ------------------------------------------------------------------------------------ */

static inline uint64_t ld_u64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline int64_t ld_i64(const char *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t ld_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void st_u64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void st_i64(char *p, int64_t v) { memcpy(p, &v, 8); }
static inline void st_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st_f64(char *p, double v) { memcpy(p, &v, 8); }

/* The commit point: every store to the inactive slot is ordered before this one. */
static inline void commit(char *m, unsigned sel)
{
    __atomic_store_n((unsigned char *)(m + 8), (unsigned char)(sel ^ 1u), __ATOMIC_RELEASE);
}

/* flock(LOCK_EX): first without blocking (the usual case, no GIL round trip), then blocking with the
 * GIL released. EINTR runs the signal handlers (PEP 475); if one raises, the lock is not taken. */
static int lock_ex(int fd)
{
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK && errno != EINTR) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (;;) {
        int r, err;
        Py_BEGIN_ALLOW_THREADS
        r = flock(fd, LOCK_EX);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r == 0)
            return 0;
        if (err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

static void unlock(int fd)
{
    (void)flock(fd, LOCK_UN);  /* cannot fail on an fd we locked; the kernel drops it on close anyway */
}

/* Locate the active and inactive slots. Returns 0, or -1 if the mapping does not cover the slot table
 * (another process grew the file: the Python twin remaps). */
typedef struct {
    unsigned sel;
    uint64_t off, dst, dsize;
    int64_t cap, avail;
    uint64_t last, ticket;
    uint32_t nh, nw, flags, epoch;
} slot_t;

static int read_slot(const char *m, Py_ssize_t len, slot_t *s)
{
    uint64_t o0, s0, o1, s1;
    if (len < 56)
        return -1;
    s->sel = (unsigned char)m[8] & 1u;
    o0 = ld_u64(m + 24); s0 = ld_u64(m + 32);
    o1 = ld_u64(m + 40); s1 = ld_u64(m + 48);
    if (o0 + s0 > (uint64_t)len || o1 + s1 > (uint64_t)len || o0 + s0 < o0 || o1 + s1 < o1)
        return -1;
    if (s->sel) { s->off = o1; s->dst = o0; s->dsize = s0; }
    else        { s->off = o0; s->dst = o1; s->dsize = s1; }
    if (s->off + SLOT_HDR > (uint64_t)len)
        return -1;
    const char *h = m + s->off;
    s->cap = ld_i64(h); s->avail = ld_i64(h + 8); s->last = ld_u64(h + 16); s->ticket = ld_u64(h + 24);
    s->nh = ld_u32(h + 32); s->nw = ld_u32(h + 36); s->flags = ld_u32(h + 40); s->epoch = ld_u32(h + 44);
    if (s->off + SLOT_HDR + ((uint64_t)s->nh + s->nw) * REC > (uint64_t)len)
        return -1;
    return 0;
}

static void write_hdr(char *h, int64_t cap, int64_t avail, uint64_t last, uint64_t ticket, uint32_t nh,
                      uint32_t nw, uint32_t flags, uint32_t epoch)
{
    st_i64(h, cap); st_i64(h + 8, avail); st_u64(h + 16, last); st_u64(h + 24, ticket);
    st_u32(h + 32, nh); st_u32(h + 36, nw); st_u32(h + 40, flags); st_u32(h + 44, epoch);
}

/* The owner label argument: bytes, cut to the record's LABEL_LEN (borrowed pointer into `obj`). */
static int get_label(PyObject *obj, const char **label, Py_ssize_t *len)
{
    if (!PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "label must be bytes");
        return -1;
    }
    *label = PyBytes_AS_STRING(obj);
    *len = PyBytes_GET_SIZE(obj);
    if (*len > LABEL_LEN)
        *len = LABEL_LEN;
    return 0;
}

static int get_map(PyObject *obj, Py_buffer *view)
{
    return PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_SIMPLE);
}

/* -- grant ---------------------------------------------------------------------------------------- */

PyDoc_STRVAR(grant_doc,
"grant(m, fd, permits, fair, proc, mode, label, now) -> (token, prev_died, nw) | None | False\n\n"
"flock + StateFile.grant_fast_locked + unlock; None (no room) and False (not handled) return with\n"
"the file lock HELD. See the module comment.");

static PyObject *ff_grant(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "grant() takes 8 arguments");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[1]);
    long long permits = PyLong_AsLongLong(args[2]);
    int fair = PyObject_IsTrue(args[3]);
    unsigned long long proc = PyLong_AsUnsignedLongLong(args[4]);
    long mode = PyLong_AsLong(args[5]);
    double now = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred())
        return NULL;
    const char *label;
    Py_ssize_t llen;
    if (get_label(args[6], &label, &llen) < 0)
        return NULL;

    Py_buffer view;
    if (get_map(args[0], &view) < 0)
        return NULL;
    if (lock_ex(fd) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *m = (char *)view.buf;
    slot_t s;
    if (read_slot(m, view.len, &s) < 0) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;  /* lock held */
    }
    if (s.avail < permits || (s.nw && fair)) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;  /* lock held */
    }
    uint64_t lh = (uint64_t)s.nh * REC, lw = (uint64_t)s.nw * REC;
    if (s.dsize < SLOT_HDR + lh + REC + lw) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;  /* the inactive slot must grow: the Python twin moves it (lock held) */
    }
    const char *src = m + s.off + SLOT_HDR;
    char *d = m + s.dst + SLOT_HDR;
    if (lh)
        memmove(d, src, lh);
    uint64_t token = s.last + 1;
    unsigned prev = s.flags & F_PREV_DIED;
    char *r = d + lh;
    st_u64(r, token);
    st_u64(r + 8, proc);
    st_u64(r + 16, 0);
    st_i64(r + 24, permits);
    st_f64(r + 32, now);
    st_u32(r + 40, 0);
    r[44] = (char)((mode & 0xFF) | (prev ? PREV_DIED : 0));
    memcpy(r + 45, label, (size_t)llen);
    memset(r + 45 + llen, 0, (size_t)(LABEL_LEN - llen));
    uint32_t epoch = s.epoch;
    if (lw) {
        /* A barging (fair=False) grant: waiters must learn of a holder they do not watch yet. */
        memmove(d + lh + REC, src + lh, lw);
        epoch += 1;
    }
    write_hdr(m + s.dst, s.cap, s.avail - permits, token, s.ticket, s.nh + 1, s.nw, s.flags & ~F_PREV_DIED,
              epoch);
    commit(m, s.sel);
    PyBuffer_Release(&view);
    unlock(fd);
    return Py_BuildValue("(KOI)", (unsigned long long)token, prev ? Py_True : Py_False, (unsigned)s.nw);
}

/* -- release -------------------------------------------------------------------------------------- */

/* Post the semaphore of a Waker cache entry (mailbox, offset, bound SemLock.release, sem_t address):
 * sem_post on the address, which the entry's bound method keeps alive (no Python call, no
 * sem_getvalue: the releaser's lines before the post are handoff latency). glibc's sem_post makes no
 * system call when nobody sleeps on the semaphore (a waiter spinning after a poke, see wait()).
 * Returns 0, or -1 with an exception other than the ones Waker.wake ignores. */
static int post(PyObject *t)
{
    if (PyTuple_GET_SIZE(t) >= 4) {
        sem_t *sem = (sem_t *)PyLong_AsVoidPtr(PyTuple_GET_ITEM(t, 3));
        if (sem != NULL) {
            (void)sem_post(sem);  /* EOVERFLOW: posted to its maximum, nothing to do (as Waker.wake) */
            return 0;
        }
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *res = PyObject_CallNoArgs(PyTuple_GET_ITEM(t, 2));
    if (res == NULL) {
        /* As Waker.wake: OSError, or ValueError (posted to its maximum), means nothing to do. */
        if (PyErr_ExceptionMatches(PyExc_OSError) || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* The Waker's cache entry of (process, slot) (a new reference) with its mailbox exported in ``mb``
 * and the slot's offset in ``*off`` (``need`` bytes of it inside the mapping). NULL: not in the cache
 * (*status 0) or an error (*status -1). */
static PyObject *cached_box(PyObject *posts, uint64_t proc, uint32_t slot, Py_ssize_t need, Py_buffer *mb,
                            Py_ssize_t *off, int *status)
{
    *status = -1;
    PyObject *key = Py_BuildValue("(KI)", (unsigned long long)proc, (unsigned)slot);
    if (key == NULL)
        return NULL;
    PyObject *t = PyDict_GetItemWithError(posts, key);  /* borrowed */
    Py_DECREF(key);
    if (t == NULL) {
        *status = PyErr_Occurred() ? -1 : 0;
        return NULL;
    }
    *status = 0;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 3)
        return NULL;
    Py_INCREF(t);  /* a post may run arbitrary code in theory; keep the tuple alive */
    *off = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 1));
    if ((*off < 0 && PyErr_Occurred()) || get_map(PyTuple_GET_ITEM(t, 0), mb) < 0) {
        *status = -1;
        Py_DECREF(t);
        return NULL;
    }
    if (*off < 0 || *off + need > mb->len) {
        PyBuffer_Release(mb);
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* Deliver one grant through the Waker's cache of (mailbox, offset, bound sem_post, sem_t address), keyed by
 * (process, slot): write it into the mailbox. The post is left to the caller when the entry has a sem_t
 * address (*later: the entry, a new reference, and *sem), so that it can post after its unlock; else it
 * is made here. Returns 1 delivered (or to post), 0 not in the cache, -1 error (an exception other than
 * the ones Waker.wake ignores); for 0 and -1 the caller hands the grant to Python, which delivers it. */
static int deliver(PyObject *posts, uint64_t proc, uint32_t slot, const char payload[GRANT_LEN],
                   PyObject **later, sem_t **sem)
{
    Py_buffer mb;
    Py_ssize_t off;
    int status;
    *later = NULL;
    PyObject *t = cached_box(posts, proc, slot, GRANT_LEN, &mb, &off, &status);
    if (t == NULL)
        return status;
    char *box = (char *)mb.buf + off;
    /* The grant first, its waiter id last (Waker.wake): a thread woken early by a stale post reads the
     * id first, so it never takes a half-written grant. sem_post orders both before the wake-up. */
    memcpy(box + 8, payload + 8, GRANT_LEN - 8);
    uint64_t wid;
    memcpy(&wid, payload, 8);
    __atomic_store_n((uint64_t *)box, wid, __ATOMIC_RELEASE);  /* offsets are multiples of 32 */
    PyBuffer_Release(&mb);
    if (PyTuple_GET_SIZE(t) >= 4) {
        *sem = (sem_t *)PyLong_AsVoidPtr(PyTuple_GET_ITEM(t, 3));
        if (*sem != NULL) {
            *later = t;  /* its bound method keeps the sem_t mapped until the caller's post */
            return 1;
        }
        PyErr_Clear();
    }
    int r = post(t);
    Py_DECREF(t);
    return r < 0 ? -1 : 1;
}

/* -- spinning ------------------------------------------------------------------------------------
 *
 * A FIFO handoff puts one wake-up on the path of every contended grant: the releaser posts, and the
 * grantee's CPU must leave idle (on a VM, a halted vCPU woken by an IPI) and schedule it; 10-20 us
 * here, against ~1 us for an unfair semaphore whose releaser simply re-takes the permit. So the waiter
 * that becomes the head of the queue is told (a "poke": BOX_POKE and a post, sent by the releaser after
 * its handoff) and, being next, waits for its grant awake: it polls its semaphore with sem_trywait and
 * yields the CPU between polls (sched_yield: any runnable task goes first, so a spinner never delays a
 * holder), for at most a budget, then parks in the kernel as before. A grant that finds it awake costs
 * the releaser no system call (glibc's sem_post skips the futex wake when nobody sleeps) and the
 * grantee no wake-up.
 *
 * The budget adapts, per process: twice the recent time from a poke to its grant (a moving average,
 * seeded by the first one; the cap until then) plus 20 us, at most spin_max_us (1000 by default);
 * none while that average exceeds it (long holds: spinning would rarely catch the grant). Waiters
 * then stop taking pokes (BOX_SPINS), except one wait in 16 that keeps the average current, so long
 * holds cost no extra wake-up either. A waiter blocked behind a long hold therefore spins at most
 * spin_max_us once, then uses no CPU.
 *
 * Why a cap of 1 ms, not the few tens of us a mutex spins: the wait being hidden is the permit's whole
 * idle time between holders, on every contended grant, and on this kind of VM a wake-up that lands on
 * a halted vCPU costs 30-60 us, not 10. The head of a queue whose holders hold for a few hundred us
 * (the forced handoff and the 3-permit semaphore of benchmarks/bench_process.py, whose heads wait
 * 100-600 us on a quiet VM) then waits awake and takes its grant with no wake-up (figures in
 * docs/file-backend.md). The price is the head's CPU while it waits (a yielding spin: any runnable
 * task goes first), one spinner per queue head; a smaller INTERLOCK_FILE_SPIN_US trades it back.
 *
 * Pokes are hints: a lost, late or stale one (the slot reused by a later wait) costs at most one
 * spin, never a wrong grant. The grant itself still travels only through the mailbox and its id. */
static double spin_max_us = 1000.0;  /* configure_spin(), INTERLOCK_FILE_SPIN_US; 0: never spin */
#define SPIN_MAX (spin_max_us * 1e-6)  /* in seconds, like every time here */
static double head_wait = 0.0;     /* moving average of poke -> grant (seconds), GIL-protected */
static unsigned long long head_waits;  /* samples in it: the first one seeds it (an average that starts
                                          at 0 would keep a new process's first waits from spinning) */
static int spin_adaptive = 1;     /* 0 (tests): the budget is SPIN_MAX */
static unsigned long long n_pokes_sent, n_pokes, n_spin_grants, n_spin_parks, n_primes;  /* for tests, profiles */
static unsigned n_waits;

/* -- yielding after a handoff ----------------------------------------------------------------------
 *
 * Linux usually queues a futex-woken task on the CPU of the task that woke it (here, even with the other
 * vCPU idle: a halted vCPU looks preempted to the guest scheduler, which avoids it). So a woken grantee
 * runs only once its releaser sleeps or is preempted, and everything the releaser does after the post
 * (the rest of release(), the caller's code up to its next blocking call) is added to the handoff:
 * measured here, 10-40 us between the post and the grantee's first instruction, against 2-3 us with a
 * yield. So a release that posted a grant to a parked thread of another process yields its CPU once
 * (sched_yield, after the unlock and every post: nothing is held but the GIL of this process, whose
 * threads the grantee does not need). The grantee, which now holds the permits, goes first; the
 * releaser continues when it blocks or its turn comes. When the grantee was placed on another CPU, or
 * nothing else is runnable here, sched_yield returns at once (one system call, ~0.5 us).
 * configure_yield(False) or INTERLOCK_FILE_HANDOFF_YIELD=0 turns it off (a releaser whose own latency
 * matters more than the next holder's, on a machine where CPUs are scarce). */
static int yield_after = 1;            /* configure_yield() */
static unsigned long long n_yields;    /* for tests and profiles */

static double spin_budget(void)
{
    double max = SPIN_MAX;
    if (!spin_adaptive || max <= 0.0 || head_waits == 0)
        return max;  /* (no sample yet: one spin of at most the cap finds out) */
    if (head_wait > max)
        return 0.0;
    double b = 2.0 * head_wait + 20e-6;
    return b < max ? b : max;
}

/* Tell waiter (proc, slot) that it is now the head of its queue. Skipped (0) when its waiter does not
 * take pokes, or when its slot is not in the Waker's cache and ``prime`` (Waker.prime, or None) cannot
 * put it there. -1 only with an unexpected exception.
 *
 * The cache is filled by deliveries, so without ``prime`` a releaser would never poke a waiter it has
 * never granted to; in a strict rotation (A hands to B, B to C, C to A) that is every poke: A's new
 * head is always C. Priming opens the waiter's mailbox and semaphore once (after the unlock and the
 * grants' posts, so no grantee waits for it); later pokes of that slot are one dict lookup. */
static int poke(PyObject *posts, PyObject *prime, uint64_t proc, uint32_t slot)
{
    /* (n_primes counts the calls of prime, whatever they found) */
    Py_buffer mb;
    Py_ssize_t off;
    int status;
    PyObject *t = cached_box(posts, proc, slot, BOX_LEN, &mb, &off, &status);
    if (t == NULL && status == 0 && prime != NULL && prime != Py_None) {
        PyObject *r = PyObject_CallFunction(prime, "KI", (unsigned long long)proc, (unsigned)slot);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        n_primes++;
        t = cached_box(posts, proc, slot, BOX_LEN, &mb, &off, &status);
    }
    if (t == NULL)
        return status;
    int r = 0;
    unsigned char *box = (unsigned char *)mb.buf + off;
    if (PyTuple_GET_SIZE(t) >= 4 && __atomic_load_n(box + BOX_SPINS, __ATOMIC_RELAXED)) {
        __atomic_store_n(box + BOX_POKE, (unsigned char)1, __ATOMIC_RELEASE);
        r = 1;
    }
    PyBuffer_Release(&mb);
    if (r == 1) {
        n_pokes_sent++;
        if (post(t) < 0)
            r = -1;
    }
    Py_DECREF(t);
    return r;
}

PyDoc_STRVAR(release_doc,
"release(m, fd, token, proc, permits, abandoned, now, posts, prime=None) -> True | False | list | None\n\n"
"(now: the monotonic time that stamps the grants of a handoff, None: read the clock if needed;\n"
"prime: Waker.prime, which caches a waiter's mailbox and semaphore for a poke, see poke())\n"
"flock + StateFile.release_locked (full release) with delivery through ``posts`` + unlock; a list\n"
"(grants left to deliver) and None (not handled) return with the file lock HELD.");

typedef struct {
    uint64_t proc, wid, token;
    int64_t permits;
    uint32_t slot;
    unsigned char mode;
    PyObject *later;  /* delivered into the mailbox, to post after the unlock (deliver()) */
    sem_t *sem;
} grant_t;

static PyObject *ff_release(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 && nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "release() takes 8 or 9 arguments");
        return NULL;
    }
    PyObject *prime = nargs == 9 ? args[8] : NULL;
    int fd = (int)PyLong_AsLong(args[1]);
    unsigned long long token = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long proc = PyLong_AsUnsignedLongLong(args[3]);
    long long permits = PyLong_AsLongLong(args[4]);
    int abandoned = PyObject_IsTrue(args[5]);
    /* (monotonic) stamps the grants of a handoff; None: read the clock here, only if there is one */
    double now = args[6] == Py_None ? -1.0 : PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *posts = args[7];
    if (!PyDict_Check(posts)) {
        PyErr_SetString(PyExc_TypeError, "posts must be a dict");
        return NULL;
    }

    Py_buffer view;
    if (get_map(args[0], &view) < 0)
        return NULL;
    if (lock_ex(fd) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    char *m = (char *)view.buf;
    slot_t s;
    if (read_slot(m, view.len, &s) < 0)
        goto not_handled;
    const char *src = m + s.off + SLOT_HDR;
    uint64_t i;
    for (i = 0; i < s.nh; i++)
        if (ld_u64(src + i * REC) == token)
            break;
    if (i == s.nh || ld_u64(src + i * REC + 8) != proc) {
        PyBuffer_Release(&view);
        unlock(fd);
        Py_RETURN_FALSE;
    }
    const char *at = src + i * REC;
    int64_t rpermits = ld_i64(at + 24);
    if (permits < rpermits)
        goto not_handled;  /* a partial release keeps the rest: the Python twin */
    uint32_t flags = s.flags | (abandoned ? F_PREV_DIED : 0u);
    uint64_t lh = (uint64_t)s.nh * REC;
    int64_t avail = s.avail + rpermits;

    if (!s.nw) {
        /* The common case: a full release with nobody waiting. */
        if (s.dsize < SLOT_HDR + lh - REC)
            goto not_handled;
        char *d = m + s.dst + SLOT_HDR;
        if (i)
            memmove(d, src, i * REC);
        uint64_t rest = lh - (i + 1) * REC;
        if (rest)
            memmove(d + i * REC, at + REC, rest);
        write_hdr(m + s.dst, s.cap, avail, s.last, s.ticket, s.nh - 1, 0, flags, s.epoch);
        commit(m, s.sel);
        PyBuffer_Release(&view);
        unlock(fd);
        Py_RETURN_TRUE;
    }

    /* The handoff: grant the head waiters that fit (FIFO), commit, then deliver (still under the file
     * lock, so a waiter can observe its grant only once its delivery is complete). */
    if (s.dsize < SLOT_HDR + lh - REC + (uint64_t)s.nw * REC)
        goto not_handled;
    const char *w0 = src + lh;
    uint32_t k = 0;
    uint64_t last = s.last;
    while (avail > 0 && k < s.nw) {  /* (every waiter asks for >= 1 permit) */
        if (ld_i64(w0 + (uint64_t)k * REC + 24) > avail)
            break;
        avail -= ld_i64(w0 + (uint64_t)k * REC + 24);
        k++;
    }
    grant_t small[8];
    grant_t *g = small;
    if (k > 8) {
        g = PyMem_Malloc(sizeof(grant_t) * k);
        if (g == NULL) {
            PyBuffer_Release(&view);
            unlock(fd);
            return PyErr_NoMemory();
        }
    }
    if (args[6] == Py_None)
        now = mono();
    char *d = m + s.dst + SLOT_HDR;
    if (i)
        memmove(d, src, i * REC);
    uint64_t rest = lh - (i + 1) * REC;
    if (rest)
        memmove(d + i * REC, at + REC, rest);
    char *pos = d + lh - REC;
    unsigned char wprev = (flags & F_PREV_DIED) ? PREV_DIED : 0;
    for (uint32_t j = 0; j < k; j++, pos += REC) {
        const char *w = w0 + (uint64_t)j * REC;
        last += 1;
        memmove(pos, w, REC);  /* process, waiter id, permits and label carry over */
        st_u64(pos, last);
        st_f64(pos + 32, now);
        st_u32(pos + 40, 0);
        pos[44] = (char)((unsigned char)w[44] | wprev);
        g[j].token = last;
        g[j].proc = ld_u64(w + 8);
        g[j].wid = ld_u64(w + 16);
        g[j].permits = ld_i64(w + 24);
        g[j].slot = ld_u32(w + 40);
        g[j].mode = (unsigned char)pos[44];
        wprev = 0;
    }
    if (k)
        flags &= ~F_PREV_DIED;
    if (k < s.nw)
        memmove(pos, w0 + (uint64_t)k * REC, (uint64_t)(s.nw - k) * REC);
    write_hdr(m + s.dst, s.cap, avail, last, s.ticket, s.nh - 1 + k, s.nw - k, flags, s.epoch);
    commit(m, s.sel);  /* from here on the grants exist */
    /* The new head of the queue, to poke once the grants are delivered (see "spinning"). */
    int poke_head = k > 0 && k < s.nw && spin_max_us > 0.0;
    uint64_t head_proc = poke_head ? ld_u64(w0 + (uint64_t)k * REC + 8) : 0;
    uint32_t head_slot = poke_head ? ld_u32(w0 + (uint64_t)k * REC + 40) : 0;
    PyBuffer_Release(&view);

    PyObject *left = NULL;
    for (uint32_t j = 0; j < k; j++) {
        char payload[GRANT_LEN];
        st_u64(payload, g[j].wid);
        st_u64(payload + 8, g[j].token);
        st_i64(payload + 16, g[j].permits);
        payload[24] = (char)g[j].mode;
        int r = deliver(posts, g[j].proc, g[j].slot, payload, &g[j].later, &g[j].sem);
        if (r == 1)
            continue;
        if (r < 0)
            PyErr_Clear();  /* the caller's Waker.wake delivers it again, and raises if it must */
        /* Not delivered here: the caller delivers it (Waker.wake opens what it needs). */
        PyObject *item = Py_BuildValue("(KIy#)", (unsigned long long)g[j].proc, (unsigned)g[j].slot, payload,
                                       (Py_ssize_t)GRANT_LEN);
        if (item == NULL || (left == NULL && (left = PyList_New(0)) == NULL) || PyList_Append(left, item) < 0) {
            /* Out of memory with the grants committed (the Python twin has the same exposure): this
             * waiter is woken by its death watch or its timeout, and then finds its grant in the state. */
            Py_XDECREF(item);
            PyErr_Clear();
            continue;
        }
        Py_DECREF(item);
    }
    /* The posts of the grants written above (their mailboxes are complete, under the lock), made after
     * the unlock: the post is then the releaser's last step, and a grantee woken onto the releaser's
     * vCPU does not wait for the rest of it. A waiter that looks at the state in between (its timeout)
     * finds its grant there, and the late post is then a stale one for the slot's next wait (it looks
     * at the state: see wait()). A releaser killed in between leaves a committed, undelivered grant, as
     * one killed before its delivery always could: the grantee's death watch wakes it. With grants
     * left to Python the lock stays held (the protocol above), so these are posted now. */
    if (left == NULL)
        unlock(fd);
    int woke_other = 0;
    for (uint32_t j = 0; j < k; j++) {
        if (g[j].later != NULL) {
            (void)sem_post(g[j].sem);  /* EOVERFLOW: posted to its maximum, nothing to do (as Waker.wake) */
            Py_DECREF(g[j].later);
            woke_other |= g[j].proc != proc;  /* (a thread of this process would need our GIL first) */
        }
    }
    if (g != small)
        PyMem_Free(g);
    if (left != NULL)
        return left;  /* lock held: the caller delivers these, then unlocks (no poke: a hint) */
    /* The yield first, then the poke: a grantee queued on this CPU runs before the poke's futex wake
     * (a system call, and often an IPI), which is off every grantee's path. The poked head waits for
     * the next release, so a poke later by the grantee's run is still early (and a stale one is
     * harmless: a hint). */
    if (woke_other && yield_after) {  /* see "yielding after a handoff" */
        n_yields++;
        sched_yield();
    }
    if (poke_head && poke(posts, prime, head_proc, head_slot) < 0) {
        /* A poke is a hint: its errors are dropped, except an interrupt raised by a signal handler
         * while prime ran Python code (KeyboardInterrupt, SystemExit), which goes on to the caller;
         * the release itself is complete. */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_TRUE;

not_handled:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;  /* lock held */
}


/* -- enqueue -------------------------------------------------------------------------------------- */

PyDoc_STRVAR(enqueue_doc,
"enqueue(m, permits, proc, wid, slot, mode, label, now) -> (ticket, processes) | None\n\n"
"StateFile.enqueue_locked, called with the file lock held (after grant() returned None) and leaving it\n"
"held: append a waiter record; the processes named in the state are returned for the death watch.\n"
"None: not handled (the inactive slot must grow): the Python twin does it.");

static PyObject *ff_enqueue(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "enqueue() takes 8 arguments");
        return NULL;
    }
    long long permits = PyLong_AsLongLong(args[1]);
    unsigned long long proc = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long wid = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long slot = PyLong_AsUnsignedLong(args[4]);
    long mode = PyLong_AsLong(args[5]);
    double now = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred())
        return NULL;
    const char *label;
    Py_ssize_t llen;
    if (get_label(args[6], &label, &llen) < 0)
        return NULL;
    Py_buffer view;
    if (get_map(args[0], &view) < 0)
        return NULL;
    char *m = (char *)view.buf;
    slot_t s;
    uint64_t n;
    if (read_slot(m, view.len, &s) < 0
        || s.dsize < SLOT_HDR + (n = ((uint64_t)s.nh + s.nw) * REC) + REC) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const char *src = m + s.off + SLOT_HDR;
    PyObject *procs = PySet_New(NULL);
    if (procs == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (uint64_t i = 0; i < n; i += REC) {
        PyObject *p = PyLong_FromUnsignedLongLong(ld_u64(src + i + 8));
        if (p == NULL || PySet_Add(procs, p) < 0) {
            Py_XDECREF(p);
            Py_DECREF(procs);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(p);
    }
    PyObject *ticket = PyLong_FromUnsignedLongLong(s.ticket);
    PyObject *res = ticket == NULL ? NULL : PyTuple_Pack(2, ticket, procs);
    Py_XDECREF(ticket);
    Py_DECREF(procs);
    if (res == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    /* Nothing can fail from here: write the new state and commit it. */
    char *d = m + s.dst + SLOT_HDR;
    if (n)
        memmove(d, src, n);
    char *r = d + n;
    st_u64(r, s.ticket);
    st_u64(r + 8, proc);
    st_u64(r + 16, wid);
    st_i64(r + 24, permits);
    st_f64(r + 32, now);
    st_u32(r + 40, (uint32_t)slot);
    r[44] = (char)(mode & 0xFF);
    memcpy(r + 45, label, (size_t)llen);
    memset(r + 45 + llen, 0, (size_t)(LABEL_LEN - llen));
    write_hdr(m + s.dst, s.cap, s.avail, s.last, s.ticket + 1, s.nh, s.nw + 1, s.flags, s.epoch);
    commit(m, s.sel);
    PyBuffer_Release(&view);
    return res;
}

/* -- wait ----------------------------------------------------------------------------------------- */

static PyObject *s_slot, *s_acquire, *s_release, *s_done, *s_token, *s_permits, *s_acquired_at, *s_state, *s_prev_died, *zero;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* what time.monotonic() reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* sem_wait with the GIL released; timeout < 0: forever. 1 posted, 0 timed out, -1 error (signal
 * handler raised, as in SemLock.acquire). */
static int sem_wait_gil(sem_t *sem, double timeout)
{
    if (sem_trywait(sem) == 0)
        return 1;
    if (timeout == 0.0)
        return 0;
    struct timespec abs;
    if (timeout > 0) {
        double dl = mono() + timeout;
        abs.tv_sec = (time_t)dl;
        abs.tv_nsec = (long)((dl - (double)abs.tv_sec) * 1e9);
        if (abs.tv_nsec >= 1000000000L) { abs.tv_sec += 1; abs.tv_nsec -= 1000000000L; }
    }
    for (;;) {
        int r, err;
        Py_BEGIN_ALLOW_THREADS
        r = timeout < 0 ? sem_wait(sem) : sem_clockwait(sem, CLOCK_MONOTONIC, &abs);
        err = errno;
        Py_END_ALLOW_THREADS
        if (r == 0)
            return 1;
        if (err == ETIMEDOUT)
            return 0;
        if (err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* interlock._speedups' capsule of C entry points for other extensions (a struct of function pointers,
 * see _speedups.c), imported on first use; NULL where _speedups is not built (the Lease is then the
 * pure-Python class, filled by setattr). */
typedef struct {
    int (*fill_granted)(PyObject *lease, PyObject *token, PyObject *permits, PyObject *acquired_at,
                        int prev_died);
} interlock_lease_api;

static const interlock_lease_api *lease_api(void)
{
    static const interlock_lease_api *api;
    static int tried;
    if (!tried) {
        tried = 1;
        api = (const interlock_lease_api *)PyCapsule_Import("interlock._speedups._lease_api", 0);
        if (api == NULL)
            PyErr_Clear();
    }
    return api;
}

PyDoc_STRVAR(wait_doc,
"wait(handle, mbox, off, wid, timeout, w, lease, local, owner, mode, waits, pool, slot, graph_lock,\n"
"     graph) -> lease | None | False\n\n"
"Sleep on the semaphore ``handle`` (SemLock.handle; timeout None: forever). Posted with this wait's\n"
"grant in mailbox slot ``off`` (its id ``wid`` first): mark ``w`` done, fill the pre-built ``lease``\n"
"(token, permits, acquired_at, held, previous_owner_died), record it in ``local``, end the wait (drop\n"
"``wid`` from ``waits``; with ``graph_lock``, drop ``owner`` from the wait-for graph ``graph`` as\n"
"deadlock.leave_wait does; set ``w.slot`` to None and put ``slot`` back into ``pool``, last) and\n"
"return the lease.\n"
"Poked (BOX_POKE: this wait became the head of its queue): wait for the grant awake, at most the spin\n"
"budget, then asleep again (see \"spinning\"). Posted with anything else: None (look at the state).\n"
"Timed out: False. Neither ends the wait.");

static PyObject *ff_wait(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "wait() takes 15 arguments");
        return NULL;
    }
    sem_t *sem = (sem_t *)PyLong_AsVoidPtr(args[0]);
    Py_ssize_t off = PyLong_AsSsize_t(args[2]);
    unsigned long long wid = PyLong_AsUnsignedLongLong(args[3]);
    double timeout = args[4] == Py_None ? -1.0 : PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (sem == NULL || !PyDict_Check(args[7]) || !PyDict_Check(args[10]) || !PyList_Check(args[11])
        || (args[13] != Py_None && !PyDict_Check(args[14]))) {
        PyErr_SetString(PyExc_TypeError, "wait(): bad semaphore handle or local dict");
        return NULL;
    }
    if (timeout < 0 && args[4] != Py_None)
        timeout = 0.0;
    /* The mailbox is exported only while it is read or written, never across a sleep: a fork child
     * closes its copy of the mapping, which an export inherited from a sleeping thread would forbid. */
    Py_buffer mb;
    if (get_map(args[1], &mb) < 0)
        return NULL;
    if (off < 0 || off + BOX_LEN > mb.len) {
        PyBuffer_Release(&mb);
        PyErr_SetString(PyExc_ValueError, "wait(): mailbox offset out of range");
        return NULL;
    }
    /* Take pokes only while spinning pays (a poke wakes a parked head), and on every 16th wait anyway,
     * so that the average keeps following the hold times. */
    unsigned char takes = spin_max_us > 0.0 && (spin_budget() > 0.0 || (++n_waits & 15) == 0);
    __atomic_store_n((unsigned char *)mb.buf + off + BOX_SPINS, takes, __ATOMIC_RELAXED);
    PyBuffer_Release(&mb);
    double deadline = timeout < 0 ? -1.0 : mono() + timeout, poked_at = -1.0;
    int got = sem_wait_gil(sem, timeout);
    unsigned char *box;
    for (;;) {
        if (got < 0)
            return NULL;
        if (!got)
            Py_RETURN_FALSE;
        if (get_map(args[1], &mb) < 0)
            return NULL;
        if (off + BOX_LEN > mb.len) {
            PyBuffer_Release(&mb);
            Py_RETURN_NONE;
        }
        box = (unsigned char *)mb.buf + off;
        /* The waiter id first: it is written last (Waker.wake), so if it is ours the grant behind it is
         * complete even if a stale post woke us while it was being written. */
        if (__atomic_load_n((const uint64_t *)box, __ATOMIC_ACQUIRE) == wid)
            break;  /* (mb still exported) */
        unsigned char poked = __atomic_exchange_n(box + BOX_POKE, (unsigned char)0, __ATOMIC_ACQ_REL);
        PyBuffer_Release(&mb);
        if (!poked)
            Py_RETURN_NONE;  /* a refresh, or a stale post of an earlier wait on this slot */
        /* Poked: this wait is the head of its queue. Wait for the grant awake, then parked. */
        n_pokes++;
        poked_at = mono();
        double left = deadline < 0 ? -1.0 : deadline > poked_at ? deadline - poked_at : 0.0;
        double budget = spin_budget();
        if (deadline >= 0 && budget > left)
            budget = left;
        got = 0;
        if (budget > 0) {
            Py_BEGIN_ALLOW_THREADS
            double end = poked_at + budget;
            while (!(got = sem_trywait(sem) == 0) && mono() < end)
                sched_yield();
            Py_END_ALLOW_THREADS
            if (got)
                n_spin_grants++;
            else
                n_spin_parks++;
        }
        if (!got) {
            double now = mono();
            got = sem_wait_gil(sem, deadline < 0 ? -1.0 : deadline > now ? deadline - now : 0.0);
        }
    }
    if (poked_at >= 0) {
        /* A sample counts at most twice the cap: one long wait (a holder preempted by the host, say)
         * then lifts the average by at most a quarter of the cap, instead of stopping the spinning for
         * the next hundred waits; long holds still take the average above the cap. */
        double sample = mono() - poked_at;
        if (sample > 2.0 * SPIN_MAX)
            sample = 2.0 * SPIN_MAX;
        head_wait = head_waits++ ? head_wait + (sample - head_wait) * 0.125 : sample;
    }
    else if (__atomic_exchange_n(box + BOX_POKE, (unsigned char)0, __ATOMIC_ACQ_REL)) {
        /* A poke raced with this grant (both posted before this wait ran): take its post too, so the
         * slot's next wait does not wake for nothing. (If that post is still in flight, the next wait
         * takes one stale post: a look at the state.) */
        (void)sem_trywait(sem);
    }
    uint64_t token = ld_u64((const char *)box + 8);
    int64_t permits = ld_i64((const char *)box + 16);
    unsigned char mode = box[24];
    PyBuffer_Release(&mb);
    /* The mailbox holds this wait's grant (its unique id): no second look at the state, no lock. Only
     * this process can release it from here on. */
    PyObject *w = args[5], *lease = args[6], *local = args[7], *owner = args[8], *mode_s = args[9];
    if (PyObject_SetAttr(w, s_done, Py_True) < 0)
        return NULL;
    PyObject *tok = PyLong_FromUnsignedLongLong(token);
    PyObject *perm = PyLong_FromLongLong(permits);
    double at_d = mono();
    PyObject *at = PyFloat_FromDouble(at_d);
    PyObject *rec = NULL;
    if (tok == NULL || perm == NULL || at == NULL)
        goto fail;
    /* Direct stores through _speedups when the Lease is its C type (see lease_api()), else setattr. */
    const interlock_lease_api *api = lease_api();
    if (api == NULL || api->fill_granted(lease, tok, perm, at, (mode & PREV_DIED) != 0) != 0) {
        if (PyObject_SetAttr(lease, s_token, tok) < 0 || PyObject_SetAttr(lease, s_permits, perm) < 0
            || PyObject_SetAttr(lease, s_acquired_at, at) < 0 || PyObject_SetAttr(lease, s_state, zero) < 0)
            goto fail;
        if ((mode & PREV_DIED) && PyObject_SetAttr(lease, s_prev_died, Py_True) < 0)
            goto fail;
    }
    rec = PyTuple_Pack(4, owner, perm, mode_s, at);
    if (rec == NULL || PyDict_SetItem(local, tok, rec) < 0)
        goto fail;
    Py_CLEAR(rec);
    Py_CLEAR(tok);
    Py_CLEAR(perm);
    Py_CLEAR(at);
    /* End the wait here, not in Python lines after the wake-up (see _wait_native). */
    if (PyDict_DelItem(args[10], args[3]) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    if (args[13] != Py_None) {
        PyObject *r = PyObject_CallMethodNoArgs(args[13], s_acquire);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        int e = PyDict_DelItem(args[14], owner);
        if (e < 0) {
            if (PyErr_ExceptionMatches(PyExc_KeyError))
                PyErr_Clear();
        }
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        r = PyObject_CallMethodNoArgs(args[13], s_release);
        if (et != NULL) {
            Py_XDECREF(r);
            PyErr_Restore(et, ev, tb);
            return NULL;
        }
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    /* Last, the slot back to the pool, marked as such first (w.slot = None: see _end_wait); nothing
     * can fail after it is pooled, where another thread may take it. */
    if (PyObject_SetAttr(w, s_slot, Py_None) < 0 || PyList_Append(args[11], args[12]) < 0)
        return NULL;
    Py_INCREF(lease);
    return lease;
fail:
    Py_XDECREF(rec);
    Py_XDECREF(tok);
    Py_XDECREF(perm);
    Py_XDECREF(at);
    return NULL;
}

PyDoc_STRVAR(configure_spin_doc,
"configure_spin(max_us, adaptive=True) -> previous max_us\n\n"
"The most a poked head-of-queue waiter of this process spins before it parks (microseconds; 0: never;\n"
"the default 1000; FileBackend applies INTERLOCK_FILE_SPIN_US). adaptive=False (tests): always spin\n"
"max_us. Resets the moving average. See the module's \"spinning\" comment.");

static PyObject *ff_configure_spin(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "configure_spin() takes 1 or 2 arguments");
        return NULL;
    }
    double us = PyFloat_AsDouble(args[0]);
    if (us == -1.0 && PyErr_Occurred())
        return NULL;
    int adaptive = nargs < 2 ? 1 : PyObject_IsTrue(args[1]);
    if (adaptive < 0)
        return NULL;
    if (!(us >= 0.0 && us <= 1e6)) {
        PyErr_SetString(PyExc_ValueError, "configure_spin(): max_us must be between 0 and 1000000");
        return NULL;
    }
    double old = spin_max_us;
    spin_max_us = us;
    spin_adaptive = adaptive;
    head_wait = 0.0;
    head_waits = 0;
    return PyFloat_FromDouble(old);
}

PyDoc_STRVAR(configure_yield_doc,
"configure_yield(on) -> previous setting\n\n"
"Whether a release that hands permits to a parked thread of another process yields its CPU to it\n"
"(default True; FileBackend applies INTERLOCK_FILE_HANDOFF_YIELD). See \"yielding after a handoff\".");

static PyObject *ff_configure_yield(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    int old = yield_after;
    yield_after = on;
    return PyBool_FromLong(old);
}

PyDoc_STRVAR(handoff_yields_doc,
"handoff_yields() -> the number of releases of this process that yielded after a handoff (for tests).");

static PyObject *ff_handoff_yields(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(n_yields);
}

PyDoc_STRVAR(spin_stats_doc,
"spin_stats() -> (pokes_sent, pokes_taken, grants_while_spinning, spins_then_parked, head_wait_us,\n"
"primes)\n\n"
"Counters of this process since it started (for tests and profiles).");

static PyObject *ff_spin_stats(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(KKKKdK)", n_pokes_sent, n_pokes, n_spin_grants, n_spin_parks, head_wait * 1e6,
                         n_primes);
}

static PyMethodDef methods[] = {
    {"configure_spin", (PyCFunction)(void (*)(void))ff_configure_spin, METH_FASTCALL, configure_spin_doc},
    {"spin_stats", ff_spin_stats, METH_NOARGS, spin_stats_doc},
    {"configure_yield", ff_configure_yield, METH_O, configure_yield_doc},
    {"handoff_yields", ff_handoff_yields, METH_NOARGS, handoff_yields_doc},
    {"grant", (PyCFunction)(void (*)(void))ff_grant, METH_FASTCALL, grant_doc},
    {"release", (PyCFunction)(void (*)(void))ff_release, METH_FASTCALL, release_doc},
    {"wait", (PyCFunction)(void (*)(void))ff_wait, METH_FASTCALL, wait_doc},
    {"enqueue", (PyCFunction)(void (*)(void))ff_enqueue, METH_FASTCALL, enqueue_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "interlock.backends.file._fastfile",
    "Optional native twin of the file:// backend's hot transitions (see _fastfile.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastfile(void)
{
#ifdef Py_GIL_DISABLED
    PyErr_SetString(PyExc_ImportError, "_fastfile is not built for free-threaded Python");
    return NULL;
#else
    s_slot = PyUnicode_InternFromString("slot");
    s_acquire = PyUnicode_InternFromString("acquire");
    s_release = PyUnicode_InternFromString("release");
    s_done = PyUnicode_InternFromString("done");
    s_token = PyUnicode_InternFromString("token");
    s_permits = PyUnicode_InternFromString("permits");
    s_acquired_at = PyUnicode_InternFromString("acquired_at");
    s_state = PyUnicode_InternFromString("_state");
    s_prev_died = PyUnicode_InternFromString("previous_owner_died");
    zero = PyLong_FromLong(0);  /* Lease._state HELD */
    if (!s_slot || !s_acquire || !s_release || !s_done || !s_token || !s_permits || !s_acquired_at || !s_state || !s_prev_died || !zero)
        return NULL;
    return PyModule_Create(&module);
#endif
}
