/*
 * outpostctl: the operator's command-line client.
 *
 *   outpostctl policy test POLICY.lua [MORE.lua ...] REQUEST.json
 *              [--hook route|limit|on_error|on_response] [--result RESULT.json]
 *              [--lib DIR] [--memory BYTES] [--instructions N]
 *   outpostctl hash-token TOKEN        (or the token on stdin with "-")
 *   outpostctl version
 *
 * Exit codes: 0 success, 1 the operation failed, 2 usage or input error.
 */
#include <stdio.h>
#include <string.h>

#include "platform/pl_hash.h"
#include "platform/pl_log.h"
#include "policy/op_policy.h"

#ifndef OUTPOST_VERSION
#define OUTPOST_VERSION "0.0.0"
#endif

static int usage(FILE *f, int rc)
{
    fprintf(f, "usage: outpostctl policy test POLICY.lua [MORE.lua ...] REQUEST.json\n"
               "           [--hook route|limit|on_error|on_response] [--result RESULT.json]\n"
               "           [--lib DIR] [--memory BYTES] [--instructions N]\n"
               "       outpostctl hash-token TOKEN|-\n"
               "       outpostctl version\n");
    return rc;
}

/* Prints the SHA-256 an account token is stored as in the config. */
static int hash_token(const char *arg)
{
    char buf[1024];
    const char *tok = arg;
    if (strcmp(arg, "-") == 0) {
        if (!fgets(buf, sizeof buf, stdin)) {
            fprintf(stderr, "outpostctl: no token on standard input\n");
            return 2;
        }
        buf[strcspn(buf, "\r\n")] = '\0';
        tok = buf;
    }
    if (!*tok) {
        fprintf(stderr, "outpostctl: empty token\n");
        return 2;
    }
    char hex[PL_SHA256_HEX_LEN + 1];
    pl_sha256_hex(tok, strlen(tok), hex);
    printf("%s\n", hex);
    return 0;
}

int main(int argc, char **argv)
{
    pl_log_configure(PL_LOG_WARN, PL_LOG_FORMAT_KV);
    if (argc < 2)
        return usage(stderr, 2);
    if (strcmp(argv[1], "policy") == 0 && argc >= 3 && strcmp(argv[2], "test") == 0)
        return op_policy_cli(argc - 3, argv + 3, stdout, stderr);
    if (strcmp(argv[1], "hash-token") == 0 && argc == 3)
        return hash_token(argv[2]);
    if (strcmp(argv[1], "version") == 0) {
        printf("outpostctl %s\n", OUTPOST_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0)
        return usage(stdout, 0);
    return usage(stderr, 2);
}
