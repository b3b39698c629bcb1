/* How far apart this machine's first two cores are, moment by moment: the round trip of one
 * cache line between a thread pinned to core 0 and one pinned to core 1, every quarter second.
 * Linux; needs a C compiler (benchmarks/cores.py --pingpong builds and runs it):
 *
 *     cc -O2 -pthread benchmarks/pingpong.c -o /tmp/pingpong && /tmp/pingpong 10
 *
 * On the 2-core machine of the README it printed 54-75 ns for minutes at a time, then 330-420
 * ns for minutes: the two virtual cores had moved apart (no shared cache between them). That
 * is the "slow phase" of the README's Benchmarks: onnxruntime's two-thread ops, whose halves
 * meet in the caches op after op, then slow down by up to 1.6x (the MNIST CNN's training step
 * 17 -> 27 ms), and one-thread sessions each on a part of the batch do not. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic long ball __attribute__((aligned(64)));
static _Atomic int done;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int pin(int core) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *partner(void *unused) {  /* sends back every odd value as the next even one */
    (void)unused;
    pin(1);
    for (long v = 1; !atomic_load(&done); v += 2) {
        while (atomic_load_explicit(&ball, memory_order_acquire) != v)
            if (atomic_load(&done)) return NULL;
        atomic_store_explicit(&ball, v + 1, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 10;
    if (pin(0) != 0) { fprintf(stderr, "cannot pin to core 0\n"); return 1; }
    pthread_t other;
    pthread_create(&other, NULL, partner, NULL);
    long v = 0;
    for (int sample = 0; sample < seconds * 4; sample++) {
        double start = now();
        long trips = 0;
        while (now() - start < 0.25) {
            for (int i = 0; i < 1000; i++, v += 2) {
                atomic_store_explicit(&ball, v + 1, memory_order_release);
                while (atomic_load_explicit(&ball, memory_order_acquire) != v + 2) {}
            }
            trips += 1000;
        }
        printf("%.1f\n", (now() - start) / trips * 1e9);
        fflush(stdout);
    }
    atomic_store(&done, 1);
    atomic_store(&ball, -1);
    pthread_join(other, NULL);
    return 0;
}
