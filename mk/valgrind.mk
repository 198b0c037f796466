# SPDX-License-Identifier: MIT
#
# Description: make check-valgrind: a representative subset of the tests
# under valgrind memcheck (tests/valgrind/wrap.sh as IVMC_TEST_WRAPPER),
# every process of each test included (ivmcd, ivmcctl, ivmc-hostile, forked
# children, programs run by ivmc-run). A memory error or a definite or
# indirect leak in any of them fails the test. Included by the Makefile.
#
#   make check-valgrind [VALGRIND_TESTS='NAME...']
#
# Logs: $(O)/valgrind/NAME.log (the test's output, as make check writes)
# and $(O)/valgrind/NAME.vg.log (valgrind's, every line ==PID==).
#
# The subset: the ring and channel (the consumer of hostile shared memory
# included), every native API test, the daemon and its parsers (control
# messages, policy, netlink), the hostile peer through a real daemon, the
# cheaper thread variants and the preload on a few oracle scenarios.
# Left out, for time (the stage takes 3-4 min on 2 cores):
#   ring-random-fork, ring-wrap-2e32  20-30 s each, for ring code that
#                  ring-edges and chan-* run too
#   ring-random-thread, chan-switch-thread  10 s each; the process
#                  variants (chan-switch-random) run the same code
#   ctl-cmdline    10 daemons started to die on bad arguments: 10-17 s
# Timing that valgrind's slowdown breaks:
#   ctl-policy     its 200 ms pending_timeout cases race the slowdown
#   ctl-netns-bridge  its NAT case once ended -ECANCELED (the server
#                  shut down while still pending), not -ETIMEDOUT (1 in 3)
#   ctl-autostart  ten racers serialised by valgrind miss their bound
# Valgrind's limits:
#   sec-proc-access  pidfd_open() is ENOSYS under valgrind 3.19
#   preload-fds    counts the fds at the top of the table, where valgrind
#                  keeps its own
#   sec-hostile-preload, preload-*.sh  the victims are python3, redis,
#                  nginx...: system programs, not run under valgrind
#   vm-*: the guests run under qemu
# preload-oracle's exec scenario is not in the list: valgrind cannot exec
# /proc/self/exe (it names valgrind itself).

VALGRIND_TESTS ?= ring-edges \
	chan-eof chan-nonblock chan-switch-random chan-hostile-peer \
	chan-hostile-cons-backwards chan-peer-killed chan-reserve-closed-epoch \
	chan-side-errors-like-socket chan-mem-poll chan-fork-share \
	chan-detach-blocked-thread chan-local-wakeups-thread \
	chan-multi-waiters-thread chan-serialised-calls-thread \
	api-allow-list api-forged-fds api-listen-connect api-many-channels \
	api-nonblock-poll api-stream-fork api-zero-copy \
	ctl-garbage ctl-policy-parse ctl-policy-load ctl-attach ctl-attach-poll \
	ctl-identity ctl-kfacts ctl-restart ctl-sigstop ctl-container \
	ctl-netns-veth \
	sec-hostile-tcp sec-netns-policy \
	preload-oracle
VALGRIND_ORACLE ?= stream,readiness,fork
VALGRIND_TIMEOUT ?= 120

.PHONY: check-valgrind

check-valgrind: all
	$(msg) RUN "$(O)/tests (valgrind memcheck)"
	$(Q)command -v valgrind > /dev/null || \
		{ echo "check-valgrind: valgrind not found" >&2; \
		  echo "0 passed, 1 failed"; exit 1; }
	$(Q)IVMC_TEST_WRAPPER=tests/valgrind/wrap.sh \
	IVMC_VG_LOGDIR=$(O)/valgrind IVMC_TEST_LOGDIR=$(O)/valgrind \
	IVMC_TEST_TIMEOUT=$(VALGRIND_TIMEOUT) \
	IVMC_ORACLE_ONLY=$(VALGRIND_ORACLE) \
	bash tests/run.sh $(O)/tests $(VALGRIND_TESTS)
