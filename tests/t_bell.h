/* SPDX-License-Identifier: MIT */
/*
 * Description: test helpers for channels with a bell (chan_cfg.bell), as
 * between guests that take the device's interrupt: with T_BELL defined,
 * bells_init() makes one bell per side, an eventfd each, ringing the
 * other's, and BELL(side) is that side's bell; without, BELL() is NULL.
 */
#ifndef IVMC_TESTS_T_BELL_H
#define IVMC_TESTS_T_BELL_H

#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "chan/chan.h"
#include "helpers.h"

#ifdef T_BELL
static int bell_efd[2];
static struct chan_bell *bells[2];

static int ring_efd(void *arg)
{
	static const uint64_t one = 1;

	return write(*(int *)arg, &one, sizeof(one)) == sizeof(one) ? 0 : -1;
}

/* One bell per side: an eventfd each; ringing writes the other's. */
static void bells_init(void)
{
	for (int i = 0; i < 2; i++) {
		bell_efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		T_ASSERT(bell_efd[i] >= 0);
	}
	for (int i = 0; i < 2; i++)
		T_ASSERT_OK(chan_bell_new(bell_efd[i], ring_efd,
					  &bell_efd[1 - i], &bells[i]));
}
#define BELL(side) bells[side]
#else
#define BELL(side) NULL
#endif

#endif
