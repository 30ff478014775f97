#include "test_support.h"

#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef OUTPOST_BINARY_DIR
#define OUTPOST_BINARY_DIR "build"
#endif
#ifndef OUTPOST_SOURCE_DIR
#define OUTPOST_SOURCE_DIR "."
#endif
#ifndef OUTPOST_TEST_PLUGIN_DIR
#define OUTPOST_TEST_PLUGIN_DIR OUTPOST_BINARY_DIR "/tests/plugins"
#endif

char *ts_tmpdir(void)
{
    char tmpl[] = "/tmp/outpost-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    cr_assert_not_null(d, "mkdtemp: %s", strerror(errno));
    return strdup(d);
}

void ts_tmpdir_remove(const char *dir)
{
    if (!dir || strncmp(dir, "/tmp/outpost-test-", 18) != 0)
        return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    int rc = system(cmd);
    (void)rc;
}

char *ts_write_file(const char *dir, const char *name, const char *text)
{
    char *path;
    cr_assert(asprintf(&path, "%s/%s", dir, name) > 0);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
    return path;
}

int ts_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    cr_assert(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Replaces every occurrence of key in s (returns a new string). */
static char *replace_all(const char *s, const char *key, const char *val)
{
    size_t klen = strlen(key), vlen = strlen(val), n = 0;
    for (const char *p = strstr(s, key); p; p = strstr(p + klen, key))
        n++;
    char *out = malloc(strlen(s) + n * vlen + 1);
    cr_assert_not_null(out);
    char *o = out;
    for (;;) {
        const char *p = strstr(s, key);
        if (!p)
            break;
        memcpy(o, s, (size_t)(p - s));
        o += p - s;
        memcpy(o, val, vlen);
        o += vlen;
        s = p + klen;
    }
    strcpy(o, s);
    return out;
}

static size_t sink_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    ts_response *r = ud;
    size_t n = size * nmemb;
    char *nb = realloc(r->body, r->body_len + n + 1);
    cr_assert_not_null(nb);
    r->body = nb;
    memcpy(r->body + r->body_len, ptr, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static size_t sink_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    ts_response *r = ud;
    size_t n = size * nmemb, have = r->headers ? strlen(r->headers) : 0;
    char *nb = realloc(r->headers, have + n + 1);
    cr_assert_not_null(nb);
    r->headers = nb;
    memcpy(r->headers + have, ptr, n);
    r->headers[have + n] = '\0';
    return n;
}

static int try_http(ts_response *r, const char *method, const char *url, const char *body,
                    const char *const *headers, long timeout_ms)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    cr_assert_not_null(c);
    struct curl_slist *hl = NULL;
    for (const char *const *h = headers; h && *h; h++)
        hl = curl_slist_append(hl, *h);
    if (body)
        hl = curl_slist_append(hl, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, sink_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (!r->body) {
        r->body = calloc(1, 1);
        cr_assert_not_null(r->body);
    }
    return rc == CURLE_OK ? 0 : -1;
}

void ts_http(ts_response *r, const char *method, const char *url, const char *body,
             const char *const *headers)
{
    int rc = try_http(r, method, url, body, headers, 30000);
    cr_assert_eq(rc, 0, "%s %s failed to complete", method, url);
}

void ts_response_free(ts_response *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof *r);
}

char *ts_header(const ts_response *r, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        if (!eol)
            eol = p + strlen(p);
        if ((size_t)(eol - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            return strndup(v, (size_t)(eol - v));
        }
        p = *eol ? eol + 2 : eol;
    }
    return NULL;
}

void ts_agent_start(ts_agent *a, const char *config_yaml)
{
    ts_agent_start_files(a, config_yaml, NULL);
}

void ts_agent_start_files(ts_agent *a, const char *config_yaml, const char *const *files)
{
    memset(a, 0, sizeof *a);
    a->dir = ts_tmpdir();
    for (const char *const *f = files; f && f[0]; f += 2)
        free(ts_write_file(a->dir, f[0], f[1]));
    a->port = ts_free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    char *s1 = replace_all(config_yaml, "@PORT@", port);
    char *s2 = replace_all(s1, "@DIR@", a->dir);
    char *s3 = replace_all(s2, "@SRC@", OUTPOST_SOURCE_DIR);
    char *s4 = replace_all(s3, "@PLUGINS@", OUTPOST_TEST_PLUGIN_DIR);
    a->config_path = ts_write_file(a->dir, "outpost.yaml", s4);
    free(s1);
    free(s2);
    free(s3);
    free(s4);
    cr_assert(asprintf(&a->log_path, "%s/agent.log", a->dir) > 0);
    snprintf(a->base_url, sizeof a->base_url, "http://127.0.0.1:%d", a->port);

    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(a->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execl(OUTPOST_BINARY_DIR "/outpostd", "outpostd", "--config", a->config_path,
              (char *)NULL);
        _exit(127);
    }
    a->pid = pid;
    char url[128];
    snprintf(url, sizeof url, "%s/healthz", a->base_url);
    for (int i = 0; i < 300; i++) { /* up to 30 s: sanitizer builds start slowly */
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            char *log = ts_agent_log(a);
            cr_assert_fail("outpostd exited during start-up:\n%s", log);
        }
        ts_response r;
        if (try_http(&r, "GET", url, NULL, NULL, 1000) == 0 && r.status == 200) {
            ts_response_free(&r);
            return;
        }
        ts_response_free(&r);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    char *log = ts_agent_log(a);
    cr_assert_fail("outpostd did not answer /healthz:\n%s", log);
}

void ts_agent_signal(ts_agent *a, int sig) { kill(a->pid, sig); }

int ts_agent_stop(ts_agent *a)
{
    int status = -1;
    bool had_pid = a->pid > 0;
    if (a->pid > 0) {
        kill(a->pid, SIGTERM);
        for (int i = 0; i < 600; i++) {
            if (waitpid(a->pid, &status, WNOHANG) == a->pid)
                break;
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
            if (i == 599) {
                kill(a->pid, SIGKILL);
                waitpid(a->pid, &status, 0);
            }
        }
    }
    if (had_pid && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
        /* Show why: the agent's own log is the only witness. */
        char *log = ts_agent_log(a);
        fprintf(stderr, "outpostd exited with status %d; its log:\n%s\n", status, log);
        free(log);
    }
    ts_tmpdir_remove(a->dir);
    free(a->dir);
    free(a->config_path);
    free(a->log_path);
    a->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

char *ts_agent_log(const ts_agent *a)
{
    FILE *f = fopen(a->log_path, "r");
    if (!f)
        return strdup("");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    fclose(m);
    return buf;
}

int ts_run(const char *cmdline, char **out)
{
    char *cmd;
    cr_assert(asprintf(&cmd, "%s 2>&1", cmdline) > 0);
    FILE *p = popen(cmd, "r");
    free(cmd);
    cr_assert_not_null(p);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(m);
    int status = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int ts_promtool_check(const ts_agent *a, const char *exposition)
{
    if (access("/usr/bin/promtool", X_OK) != 0)
        return -1;
    char *path = ts_write_file(a->dir, "metrics.txt", exposition);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    char *out = NULL;
    int rc = ts_run(cmd, &out);
    cr_assert_eq(rc, 0, "promtool: %s", out);
    free(out);
    free(path);
    return 0;
}
