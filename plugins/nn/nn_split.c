/* nn_split: how work is shared between the threads of an nn_pool run. */
#include "nn_pool.h"

void nn_split(long n, int ith, int nth, long align, long *lo, long *hi)
{
    if (nth < 1)
        nth = 1;
    if (align < 1)
        align = 1;
    long units = (n + align - 1) / align;
    long per = units / nth, extra = units % nth;
    /* The first `extra` threads take one unit more. */
    long start = (long)ith * per + (ith < extra ? ith : extra);
    long count = per + (ith < extra ? 1 : 0);
    long a = start * align, b = (start + count) * align;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}
