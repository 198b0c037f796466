/* SPDX-License-Identifier: MIT */
/*
 * Description: what the host's daemons (ivmcd, ivmc-vmd) share: a log with
 * levels and timestamps, the monotonic clock in ms, mkdir -p, and a lock
 * file that makes a second instance fail. Linked into every tool (Makefile:
 * tools/common/).
 */
#ifndef IVMC_TOOLS_DAEMON_H
#define IVMC_TOOLS_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

enum dlog_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Log as PROG[pid] to fp (NULL: nowhere), the messages at level and
 * below. Until it is called nothing is logged. */
void dlog_setup(const char *prog, int level, FILE *fp);

/* The level now (for a caller that changes only the file). */
int dlog_get_level(void);

/* One line "HH:MM:SS.mmm PROG[pid] LEVEL: message", flushed. */
void dlog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "error", "warn", "info" or "debug" as a level; -1 for anything else. */
int dlog_parse_level(const char *s);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t now_ms(void);

/* mkdir -p, 0755 where it creates: every directory of path, the last
 * component too if last. Returns 0 or -errno. */
int mkdir_p(const char *path, bool last);

/* Open (create, mode) and lock path for the process's lifetime. Returns
 * the fd, -EADDRINUSE when another process holds it, or -errno. */
int lock_file(const char *path, mode_t mode);

#endif
