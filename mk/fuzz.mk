# SPDX-License-Identifier: MIT
#
# Description: libFuzzer targets (tests/fuzz/fuzz-*.c), built with clang
# against the library compiled with the shared-memory load hook
# (-DIVMC_FUZZ_SHM, src/ring/atomics.h). Included by the Makefile.
#
#   make fuzz [FUZZ_SECONDS=60]  build each target into $(O)/fuzz/ and run it
#                                for FUZZ_SECONDS on a fresh copy of its seed
#                                corpus (tests/fuzz/corpus/<target>/)
#   make fuzz-ci                 the same, 20 s each
#   make fuzz-build              build only
#
# A crash, a sanitizer report, a leak or a hang (one input running more than
# FUZZ_TIMEOUT s) fails the run and leaves the reproducer in
# $(O)/fuzz/artifacts/<target>/ (kept across runs); replay it with
# $(O)/fuzz/<target> <file>, adding FZ_TRACE=1 to see the calls it makes.
# FUZZ_FLAGS adds libFuzzer options (e.g. FUZZ_FLAGS=-jobs=4).

FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CI_SECONDS ?= 20
FUZZ_TIMEOUT ?= 10
FUZZ_FLAGS ?=

FUZZ_DIR := $(O)/fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
FUZZ_CFLAGS := -std=gnu11 -O1 -g -Wall -Wextra -Werror -MMD -MP \
	-D_GNU_SOURCE -DIVMC_FUZZ_SHM -Iinclude -Isrc -Itests $(FUZZ_SAN) \
	-fsanitize=fuzzer-no-link
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz-*.c))
FUZZ_TARGETS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_DIR)/%)
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_DIR)/obj/%.o)
# fuzz-ctl-daemon and fuzz-guest-link link the daemon's own objects too (and
# what the tools share in tools/common).
FUZZ_IVMCD_OBJS := $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(sort \
	$(wildcard tools/ivmcd/*.c) $(wildcard tools/common/*.c)))
FUZZ_OBJS := $(FUZZ_LIB_OBJS) $(FUZZ_SRCS:%.c=$(FUZZ_DIR)/obj/%.o) \
	$(FUZZ_IVMCD_OBJS)
FUZZ_STAMP := $(FUZZ_DIR)/.build-flags

# Largest input per target (libFuzzer's -max_len).
FUZZ_MAX_LEN_fuzz-chan-consumer := 2048
FUZZ_MAX_LEN_fuzz-rendezvous := 128
FUZZ_MAX_LEN_fuzz-region-header := 4097
FUZZ_MAX_LEN_fuzz-policy := 4096
FUZZ_MAX_LEN_fuzz-ctl-daemon := 8192
FUZZ_MAX_LEN_fuzz-guest-link := 6144

# fuzz-ctl-daemon, fuzz-guest-link: ivmcd's objects, with main() renamed
# (each target sets up the daemon's state itself and drives it: through
# client_event(), or guest_init() and guest_tick()).
$(FUZZ_DIR)/obj/tools/ivmcd/main.o: FUZZ_DEFS := -Dmain=ivmcd_main
# clang warns inside <linux/netlink.h>'s NLMSG_OK() given an int length,
# which kfacts.c uses on purpose (NLMSG_NEXT cannot wrap it); gcc does not.
$(FUZZ_DIR)/obj/tools/ivmcd/kfacts.o: FUZZ_DEFS := -Wno-sign-compare
$(FUZZ_DIR)/fuzz-ctl-daemon $(FUZZ_DIR)/fuzz-guest-link: $(FUZZ_IVMCD_OBJS)

.PHONY: fuzz fuzz-ci fuzz-build

fuzz-build: $(FUZZ_TARGETS)

$(FUZZ_STAMP): FORCE
	@command -v $(FUZZ_CC) > /dev/null || { echo "fuzz: $(FUZZ_CC) not \
found (Debian: apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
	@mkdir -p $(@D)
	@echo '$(FUZZ_CC) | $(FUZZ_CFLAGS)' | cmp -s - $@ || \
		echo '$(FUZZ_CC) | $(FUZZ_CFLAGS)' > $@

$(FUZZ_DIR)/obj/%.o: %.c $(FUZZ_STAMP)
	@mkdir -p $(@D)
	$(msg) FUZZ-CC $@
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_DEFS) -c -o $@ $<

$(FUZZ_TARGETS): $(FUZZ_DIR)/%: $(FUZZ_DIR)/obj/tests/fuzz/%.o $(FUZZ_LIB_OBJS)
	$(msg) FUZZ-LD $@
	$(Q)$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ -lpthread

fuzz_max_len = $(or $(FUZZ_MAX_LEN_$(notdir $(1))),4096)

# Run every target for $(1) seconds; report execs, execs/s and coverage;
# fail at the end if any target failed (each one runs regardless).
define fuzz_run
	@rc=0; for spec in $(foreach t,$(FUZZ_TARGETS),$(t):$(call fuzz_max_len,$(t))); do \
		t=$${spec%:*}; n=$${t##*/}; work=$(FUZZ_DIR)/corpus/$$n; \
		art=$(FUZZ_DIR)/artifacts/$$n; log=$(FUZZ_DIR)/$$n.log; \
		rm -rf "$$work"; mkdir -p "$$work" "$$art"; touch "$$art/.run"; \
		cp tests/fuzz/corpus/$$n/* "$$work"/ 2> /dev/null || :; \
		echo "  FUZZ    $$n ($(1) s, log $$log)"; \
		ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=1} \
		UBSAN_OPTIONS=$${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
		"$$t" -max_total_time=$(1) -timeout=$(FUZZ_TIMEOUT) \
			-max_len=$${spec##*:} -print_final_stats=1 \
			-artifact_prefix="$$art/" $(FUZZ_FLAGS) "$$work" \
			> "$$log" 2>&1; r=$$?; \
		execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' "$$log" | tail -n 1); \
		eps=$$(sed -n 's/^stat::average_exec_per_sec: *//p' "$$log" | tail -n 1); \
		last=$$(grep -E '^#[0-9]+[[:space:]]' "$$log" | tail -n 1); \
		cov=$$(echo "$$last" | grep -oE 'cov: [0-9]+'); \
		ft=$$(echo "$$last" | grep -oE 'ft: [0-9]+'); \
		corp=$$(echo "$$last" | grep -oE 'corp: [0-9]+'); \
		echo "  FUZZ    $$n: $${execs:-?} execs, $${eps:-?} execs/s, $$cov, $$ft, $$corp"; \
		if [ $$r -ne 0 ]; then \
			rc=1; tail -n 60 "$$log"; \
			echo "FAIL $$n (rc=$$r); reproducer(s):"; \
			find "$$art" -type f -newer "$$art/.run" | sed 's/^/    /'; \
			echo "    replay: $$t <file>"; \
		fi; \
	done; exit $$rc
endef

fuzz: $(FUZZ_TARGETS)
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-ci: $(FUZZ_TARGETS)
	$(call fuzz_run,$(FUZZ_CI_SECONDS))

.SECONDARY: $(FUZZ_OBJS)

ifeq ($(filter clean,$(MAKECMDGOALS)),)
-include $(FUZZ_OBJS:.o=.d)
endif
