#include "drivers/cpu/drv_cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

static drv_cpu_info g_info;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void probe(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    g_info.cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    if (g_info.cores < 1)
        g_info.cores = 1;
    __builtin_cpu_init();
    g_info.avx2 = __builtin_cpu_supports("avx2");
    g_info.fma = __builtin_cpu_supports("fma");
    g_info.avx512f = __builtin_cpu_supports("avx512f");
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ')
                        c++;
                    c[strcspn(c, "\n")] = '\0';
                    snprintf(g_info.model, sizeof g_info.model, "%s", c);
                }
                break;
            }
        }
        fclose(f);
    }
}

const drv_cpu_info *drv_cpu_probe(void)
{
    pthread_once(&g_once, probe);
    return &g_info;
}
