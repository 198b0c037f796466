/* SPDX-License-Identifier: MIT */
/*
 * Description: chan-mem-side with a bell on every end (T_BELL): the
 * channels guests use when they take the ivshmem device's interrupt.
 */
#define T_BELL 1
#include "chan-mem-side.c"
