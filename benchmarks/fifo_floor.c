/* fifo_floor.c: the cheapest strict-FIFO cross-process semaphore we could write, as a MEASURING REFERENCE
 * for benchmarks/bench_process.py (the "FIFO floor" peer). It is NOT part of interlock and NOT crash-safe:
 * a holder that dies leaks its permit, a waiter that dies keeps its queue slot (the permit handed to it is
 * lost), and a process killed inside the mutex leaves it locked forever.
 *
 * State lives in a MAP_SHARED page that the processes inherit across fork: a PTHREAD_PROCESS_SHARED mutex,
 * the count of free permits, and a ring of waiter futex words. acquire(): take a free permit if nobody is
 * queued, else append a word (= 0) and sleep on it until it is 1. release(): if someone is queued, set the
 * oldest word to 1 and wake it (direct handoff: the permit never becomes free, so nobody can barge);
 * else permits++. Every contended grant therefore costs one futex wake-up, which is what the floor shows.
 * Shared (not FUTEX_PRIVATE) futexes: the mapping is at the same address but in different processes.
 * Build: cc -O2 -shared -fPIC -o fifo_floor.so fifo_floor.c
 */
#include <linux/futex.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RING 256 /* more waiters than this at once -> acquire() returns -1 */

struct floor {
    pthread_mutex_t mu;
    int permits;
    uint32_t head, tail; /* queued waiters: word[head % RING] .. word[(tail - 1) % RING] */
    uint32_t word[RING];
};

size_t floor_size(void) { return sizeof(struct floor); }

int floor_init(struct floor *f, int permits) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    f->permits = permits;
    f->head = f->tail = 0;
    return pthread_mutex_init(&f->mu, &a);
}

int floor_acquire(struct floor *f) {
    pthread_mutex_lock(&f->mu);
    if (f->permits > 0 && f->head == f->tail) {
        f->permits--;
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    if (f->tail - f->head >= RING) {
        pthread_mutex_unlock(&f->mu);
        return -1;
    }
    uint32_t *w = &f->word[f->tail++ % RING];
    __atomic_store_n(w, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&f->mu);
    while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == 0) /* EINTR, EAGAIN, spurious: look again */
        syscall(SYS_futex, w, FUTEX_WAIT, 0, NULL, NULL, 0);
    return 0;
}

int floor_release(struct floor *f) {
    pthread_mutex_lock(&f->mu);
    if (f->head == f->tail) {
        f->permits++;
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    uint32_t *w = &f->word[f->head++ % RING];
    __atomic_store_n(w, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&f->mu);
    syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0); /* outside the mutex: a slot is reused only
                                                            after RING more waiters, and an extra wake
                                                            is harmless (the waiter re-checks its word) */
    return 0;
}
