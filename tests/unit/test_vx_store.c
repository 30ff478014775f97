/*
 * Unit tests for the catalog of vector indexes (agent/vector/vx_store):
 * create/get/list/delete, name and limit checks, account names that would
 * escape the root, reopen finding the indexes (with their vectors), failed
 * indexes listed and not served, and deletion removing the directory only
 * after the last reference is dropped.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test_support.h"
#include "vector/vx_store.h"

TestSuite(vx_store, .timeout = 60);

static vx_store *open_store(const char *root, uint32_t max_indexes)
{
    vx_store_opts o;
    memset(&o, 0, sizeof o);
    o.root = root;
    o.max_indexes = max_indexes;
    vx_index_opts_init(&o.index);
    o.index.fsync = false;
    vx_store *s = NULL;
    char err[256] = "";
    cr_assert_eq(vx_store_open(&o, &s, err, sizeof err), 0, "%s", err);
    return s;
}

static vx_index_config cfg(const char *name, uint32_t dim)
{
    vx_index_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    c.dimensions = dim;
    c.metric = VX_EUCLIDEAN;
    return c;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Counts entries under dir (recursively) whose name is name. */
static int count_named(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (!strcmp(de->d_name, name))
            n++;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            n += count_named(p, name);
    }
    closedir(d);
    return n;
}

Test(vx_store, create_get_list_delete_and_reopen)
{
    char *root = ts_tmpdir();
    vx_store *s = open_store(root, 3);
    char err[256];
    vx_index *x = NULL;
    vx_index_config c = cfg("beta", 2);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), 0, "%s", err);
    float v[2] = {1, 2};
    vx_vector_in in = {"a", v, NULL, NULL};
    uint64_t id;
    cr_assert_eq(vx_index_upsert(x, &in, 1, &id, err, sizeof err), 0);
    vx_index_unref(x);
    c = cfg("alpha", 3);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), 0);
    vx_index_unref(x);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), -EEXIST);
    c = cfg("gamma", 3);
    cr_assert_eq(vx_store_create(s, "acct2", &c, &x, err, sizeof err), 0);
    vx_index_unref(x);
    /* names and dimensions are checked */
    c = cfg("Bad Name", 3);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), -EINVAL);
    c = cfg("toolarge", 1537);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), -EINVAL);
    cr_assert_eq(vx_store_max_dimensions(s), VX_INDEX_DIM_MAX_DEFAULT);
    /* per-account maximum */
    c = cfg("delta", 3);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), 0);
    vx_index_unref(x);
    c = cfg("epsilon", 3);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), -ENOSPC);
    cr_assert(strstr(err, "3"), "%s", err);
    /* list in name order, per account */
    vx_index **l = NULL;
    size_t n = 0;
    cr_assert_eq(vx_store_list(s, "acct1", &l, &n), 0);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(vx_index_get_config(l[0])->name, "alpha");
    cr_assert_str_eq(vx_index_get_config(l[1])->name, "beta");
    cr_assert_str_eq(vx_index_get_config(l[2])->name, "delta");
    for (size_t i = 0; i < n; i++)
        vx_index_unref(l[i]);
    free(l);
    cr_assert_eq(vx_store_list(s, "nobody", &l, &n), 0);
    cr_assert_eq(n, 0);
    free(l);
    cr_assert_null(vx_store_get(s, "acct2", "beta"));
    x = vx_store_get(s, "acct1", "beta");
    cr_assert_not_null(x);
    vx_index_unref(x);
    vx_store_close(s);

    /* reopen finds everything, with the vectors */
    s = open_store(root, 3);
    cr_assert_eq(vx_store_failed_count(s), 0);
    x = vx_store_get(s, "acct1", "beta");
    cr_assert_not_null(x);
    vx_index_info info;
    vx_index_info_get(x, &info);
    cr_assert_eq(info.vector_count, 1);
    cr_assert_eq(vx_index_get_config(x)->dimensions, 2);
    /* delete: gone from the catalog at once, directory removed after the
     * last reference (we still hold one) */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/acct1/beta", root);
    cr_assert(exists(dir));
    cr_assert_eq(vx_store_delete(s, "acct1", "beta", err, sizeof err), 0);
    cr_assert_eq(vx_store_delete(s, "acct1", "beta", err, sizeof err), -ENOENT);
    cr_assert_null(vx_store_get(s, "acct1", "beta"));
    cr_assert_not(exists(dir));
    cr_assert_eq(count_named(root, "index.json"), 4, "still in the trash while referenced");
    cr_assert_eq(vx_index_upsert(x, &in, 1, &id, err, sizeof err), 0, "the holder still works");
    vx_index_unref(x);
    cr_assert_eq(count_named(root, "index.json"), 3, "removed after the last reference");
    /* the name can be created again */
    c = cfg("beta", 4);
    cr_assert_eq(vx_store_create(s, "acct1", &c, &x, err, sizeof err), 0, "%s", err);
    vx_index_info_get(x, &info);
    cr_assert_eq(info.vector_count, 0);
    vx_index_unref(x);
    vx_store_close(s);
    ts_tmpdir_remove(root);
    free(root);
}

Test(vx_store, account_names_stay_under_root)
{
    char *root = ts_tmpdir();
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/store", root);
    vx_store *s = open_store(sub, 0);
    static const char *accounts[] = {"../escape", "..", "a/b", "/abs", "x41", "A", "", "ünï"};
    char err[256];
    for (size_t i = 0; i < sizeof accounts / sizeof *accounts; i++) {
        vx_index *x = NULL;
        vx_index_config c = cfg("idx", 2);
        cr_assert_eq(vx_store_create(s, accounts[i], &c, &x, err, sizeof err), 0, "%s: %s",
                     accounts[i], err);
        vx_index_unref(x);
    }
    /* every index.json is inside the store root, one per account */
    cr_assert_eq(count_named(sub, "index.json"), 8);
    cr_assert_eq(count_named(root, "index.json"), 8);
    char p[4096];
    snprintf(p, sizeof p, "%s/escape", root);
    cr_assert_not(exists(p));
    vx_store_close(s);
    s = open_store(sub, 0);
    cr_assert_eq(vx_store_failed_count(s), 0, "%s", vx_store_failed(s, 0));
    for (size_t i = 0; i < sizeof accounts / sizeof *accounts; i++) {
        vx_index *x = vx_store_get(s, accounts[i], "idx");
        cr_assert_not_null(x, "account '%s' found again", accounts[i]);
        vx_index_unref(x);
    }
    char longacct[200];
    memset(longacct, 'a', 199);
    longacct[199] = '\0';
    vx_index *x = NULL;
    vx_index_config c = cfg("idx", 2);
    cr_assert_eq(vx_store_create(s, longacct, &c, &x, err, sizeof err), -EINVAL);
    vx_store_close(s);
    ts_tmpdir_remove(root);
    free(root);
}

Test(vx_store, failed_index_is_listed_not_served_nor_deleted)
{
    char *root = ts_tmpdir();
    vx_store *s = open_store(root, 0);
    char err[256];
    vx_index *x = NULL;
    vx_index_config c = cfg("good", 2);
    cr_assert_eq(vx_store_create(s, "acct", &c, &x, err, sizeof err), 0);
    vx_index_unref(x);
    c = cfg("broken", 2);
    cr_assert_eq(vx_store_create(s, "acct", &c, &x, err, sizeof err), 0);
    vx_index_unref(x);
    vx_store_close(s);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/acct/broken", root);
    free(ts_write_file(dir, "index.json", "not json"));
    /* a leftover trash entry is cleared at open */
    char trash[4096];
    snprintf(trash, sizeof trash, "%s/.trash/1-old", root);
    cr_assert_eq(system(NULL) != 0, 1);
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", trash);
    cr_assert_eq(system(cmd), 0);
    s = open_store(root, 0);
    cr_assert_eq(vx_store_failed_count(s), 1);
    cr_assert(strstr(vx_store_failed(s, 0), "acct/broken: ") &&
                  strstr(vx_store_failed(s, 0), "index.json"),
              "%s", vx_store_failed(s, 0));
    cr_assert_null(vx_store_get(s, "acct", "broken"));
    x = vx_store_get(s, "acct", "good");
    cr_assert_not_null(x);
    vx_index_unref(x);
    cr_assert(exists(dir), "a failed index is kept for an operator");
    cr_assert_not(exists(trash));
    vx_store_close(s);
    ts_tmpdir_remove(root);
    free(root);
}
