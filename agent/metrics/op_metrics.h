/*
 * op_metrics: the process-wide metrics registry and its Prometheus text
 * exposition (format 0.0.4), served at GET /metrics.
 *
 * Model: a *family* has a name, help, type and a fixed list of label names; a
 * *child* is one combination of label values and holds the numbers. Names
 * follow Prometheus conventions: prefixed "outpost_", units in the name
 * (_seconds, _bytes), counters end in _total.
 *
 * Threading: everything is thread-safe. Registration and child lookup take a
 * lock (do them once and keep the pointer on hot paths, or accept one
 * uncontended lock per lookup); updates on a child are lock-free atomics.
 *
 * Ownership: families and children live for the life of the process; the
 * pointers returned are never freed by callers and stay valid forever.
 *
 * Errors: registration returns NULL on invalid names/labels, or when the name
 * is already registered with another type or other label names (or other
 * buckets), or would collide with a histogram's _bucket/_sum/_count series;
 * each refusal is logged (event metrics.register_refused). Looking up a
 * child with the wrong number of label values, or a NULL value, returns NULL.
 * Updating a NULL child, or a child of another type (op_gauge_add on a
 * counter), is a no-op, so a metric mistake never takes a request down.
 *
 * Cardinality: a family holds at most OP_METRIC_MAX_CHILDREN label-value
 * sets. Past the cap, new sets all share one overflow child whose every label
 * value is OP_METRIC_OVERFLOW_VALUE (logged once per family), so totals stay
 * right and memory stays bounded. Label values that are not valid UTF-8 have
 * their bad bytes replaced by '?' (a scrape must stay parseable). Still, never
 * use unbounded user input (paths, ids) as label values.
 */
#ifndef OP_METRICS_H
#define OP_METRICS_H

#include <stddef.h>

#define OP_METRIC_MAX_LABELS 16        /* label names per family */
#define OP_METRIC_MAX_CHILDREN 10000   /* label-value sets per family */
#define OP_METRIC_OVERFLOW_VALUE "__overflow__"

typedef struct op_metric op_metric;             /* a family */
typedef struct op_metric_child op_metric_child; /* one label-value set */

typedef enum op_metric_type {
    OP_METRIC_COUNTER = 0,
    OP_METRIC_GAUGE = 1,
    OP_METRIC_HISTOGRAM = 2,
} op_metric_type;

/* label_names: NULL-terminated array, or NULL for none. Registering the same
 * name again with the same type and labels returns the existing family. */
op_metric *op_metric_counter(const char *name, const char *help, const char *const *label_names);
op_metric *op_metric_gauge(const char *name, const char *help, const char *const *label_names);
/* buckets: strictly increasing upper bounds, +Inf implied; NULL/0 selects
 * OP_METRIC_DEFAULT_SECONDS_BUCKETS. */
op_metric *op_metric_histogram(const char *name, const char *help, const char *const *label_names,
                               const double *buckets, size_t n_buckets);

/* Buckets for latencies: 100 us .. 60 s. */
extern const double OP_METRIC_DEFAULT_SECONDS_BUCKETS[];
extern const size_t OP_METRIC_DEFAULT_SECONDS_BUCKETS_N;

/* The child for these label values (as many as the family has label names);
 * created on first use (the strings are copied). values may be NULL for a
 * family without labels. */
op_metric_child *op_metric_child_get(op_metric *fam, const char *const *values);
/* Convenience: values as arguments, count must match the family's labels. */
op_metric_child *op_metric_with(op_metric *fam, ...);

/* v >= 0; negative or NaN amounts are ignored (a counter never goes down). */
void op_counter_add(op_metric_child *c, double v);
void op_counter_inc(op_metric_child *c);
void op_gauge_set(op_metric_child *c, double v);
void op_gauge_add(op_metric_child *c, double v);     /* may be negative */
/* A value equal to a bound counts in that bound's bucket (le is <=). NaN is
 * ignored: it would turn _sum into NaN forever. */
void op_histogram_observe(op_metric_child *c, double v);

/* Current value of a counter or gauge child (tests, /readyz); for a
 * histogram child, its number of observations; 0 for NULL. */
double op_metric_value(const op_metric_child *c);

/* Renders every family in registration order as Prometheus text. Returns 0
 * and a malloc'd NUL-terminated buffer the caller frees, or -ENOMEM. */
int op_metrics_render(char **out, size_t *out_len);

/* Registers and sets the process-identity gauges, once at start-up (calling
 * again just sets them again):
 *   outpost_build_info{version,revision,compiler} 1
 *   outpost_process_start_time_seconds (Unix time the process started)
 * NULL version/revision read as "unknown". */
void op_metrics_register_build_info(const char *version, const char *revision);

#endif
