/* SPDX-License-Identifier: MIT */
/*
 * Description: chan-mem-side-thread with a bell on every end (T_BELL), for
 * TSan: the bell's poll role, its generation and the side stream's
 * events, shared by the threads of one process.
 */
#define T_BELL 1
#include "chan-mem-side-thread.c"
