/*
 * test_support: helpers shared by Criterion tests.
 *
 * Integration tests start the real outpostd (built in OUTPOST_BINARY_DIR) on a
 * free loopback port with a config written to a temporary directory, and talk
 * to it over HTTP with libcurl. Every helper asserts on failure, so a test
 * reads as a sequence of requests and expectations.
 */
#ifndef TEST_SUPPORT_H
#define TEST_SUPPORT_H

#include <stddef.h>
#include <sys/types.h>

/* A fresh temporary directory (removed by ts_tmpdir_remove). */
char *ts_tmpdir(void);
void ts_tmpdir_remove(const char *dir);
/* Writes text to dir/name; returns the malloc'd full path. */
char *ts_write_file(const char *dir, const char *name, const char *text);

/* A loopback TCP port that was free a moment ago. */
int ts_free_port(void);

typedef struct ts_agent {
    pid_t pid;
    int port;
    char *dir;          /* temp dir with config, data and log */
    char *config_path;
    char *log_path;     /* the agent's stderr */
    char base_url[64];  /* http://127.0.0.1:PORT */
} ts_agent;

/* Writes config_yaml (with "@PORT@" replaced by a free port, "@DIR@" by the
 * temp dir, "@SRC@" by the source dir, "@PLUGINS@" by the test plugin dir)
 * and starts outpostd on it; waits until /healthz answers (or asserts). */
void ts_agent_start(ts_agent *a, const char *config_yaml);
/* Same, first writing files into the temp dir: files is a NULL-terminated
 * list of (name, content) pairs. */
void ts_agent_start_files(ts_agent *a, const char *config_yaml, const char *const *files);
/* SIGTERM, wait; returns the exit status (or -1). Frees the fields. */
int ts_agent_stop(ts_agent *a);
/* Sends a signal to the agent. */
void ts_agent_signal(ts_agent *a, int sig);
/* The agent's stderr so far (malloc'd). */
char *ts_agent_log(const ts_agent *a);

typedef struct ts_response {
    long status;
    char *body;          /* NUL-terminated */
    size_t body_len;
    char *headers;       /* raw response header block */
} ts_response;

/* One HTTP request. method "GET"/"POST"/...; body may be NULL; headers is a
 * NULL-terminated list of "Name: value" strings or NULL. */
void ts_http(ts_response *r, const char *method, const char *url, const char *body,
             const char *const *headers);
void ts_response_free(ts_response *r);
/* Value of a response header (case-insensitive name), malloc'd, or NULL. */
char *ts_header(const ts_response *r, const char *name);

/* Checks a Prometheus text exposition with `promtool check metrics`
 * (asserting it passes). Returns 0 if it ran, -1 if promtool is not
 * installed (Debian package prometheus): the caller then skips, saying so. */
int ts_promtool_check(const ts_agent *a, const char *exposition);

/* Runs a command line with /bin/sh; returns its exit status and (if out is
 * not NULL) its combined stdout+stderr, malloc'd. */
int ts_run(const char *cmdline, char **out);

#endif
