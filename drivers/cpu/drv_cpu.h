/*
 * drv_cpu: the CPU device, the partition every build has.
 *
 * It reports the usable core count (sched_getaffinity, so container and
 * taskset limits are honoured) and the instruction-set features kernels pick
 * their paths from at run time. Thread-safe; the probe runs once.
 */
#ifndef DRV_CPU_H
#define DRV_CPU_H

#include <stdbool.h>

typedef struct drv_cpu_info {
    int cores;      /* CPUs this process may run on */
    bool avx2;
    bool fma;
    bool avx512f;
    char model[64]; /* from /proc/cpuinfo, "" if unknown */
} drv_cpu_info;

const drv_cpu_info *drv_cpu_probe(void);

#endif
