# SPDX-License-Identifier: MIT
#
# Description: the whole build. Plain GNU make + gcc; sources are found by
# wildcard, so adding a file never means editing this Makefile.
#
#   make [O=build] [V=1] [EXTRA_CFLAGS=...]   library, tools, tests, examples
#   make check | check-asan | check-tsan | check-long | check-install
#   make lint | bench | demo | install | uninstall | clean
#
# Everything is built under $(O) (default build/); the source tree is never
# written to.

VERSION := 0.1.0
SOVERSION := 0

O ?= build
# Strip a trailing slash so that "O=foo/" and "O=foo" name the same files.
override O := $(patsubst %/,%,$(O))

CC ?= gcc
ifeq ($(origin CC),default)
CC := gcc
endif
AR ?= ar
ifeq ($(origin AR),default)
AR := ar
endif
OBJCOPY ?= objcopy

# CFLAGS/LDFLAGS from the environment or the command line are kept as given
# (so sub-makes inherit them unchanged) and the project's required flags are
# added around them in ALL_CFLAGS/ALL_LDFLAGS. EXTRA_CFLAGS goes on both the
# compile and the link line (sanitizers need it on both).
CFLAGS ?= -O2 -g
LDFLAGS ?=
EXTRA_CFLAGS ?=
EXTRA_LDFLAGS ?=
ALL_CFLAGS := -std=gnu11 $(CFLAGS) -Wall -Wextra -Werror -fPIC \
	-fvisibility=hidden -MMD -MP -D_GNU_SOURCE -Iinclude -Isrc \
	$(EXTRA_CFLAGS)
ALL_LDFLAGS := $(LDFLAGS) $(EXTRA_CFLAGS) $(EXTRA_LDFLAGS)

LIB_LIBS := -lpthread
BIN_LIBS := -lpthread -lm

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
INSTALL ?= install

# ---- quiet output (V=1 prints the full commands) -------------------------
ifeq ($(V),1)
Q :=
msg = @:
else
Q := @
msg = @printf '  %-7s %s\n'
endif

# ---- sources --------------------------------------------------------------
LIB_SRCS := $(sort $(filter-out src/preload/%,$(wildcard src/*/*.c)))
LIB_OBJS := $(LIB_SRCS:%.c=$(O)/obj/%.o)

# tools/NAME.c -> bin/NAME; tools/NAME/*.c (a multi-file tool) -> bin/NAME;
# tools/common/*.c (what the daemons share) is linked into each
TOOL_SRCS := $(sort $(wildcard tools/*.c))
TOOL_COMMON_OBJS := $(patsubst %.c,$(O)/obj/%.o,$(wildcard tools/common/*.c))
TOOL_DIRS := $(filter-out tools/common,\
	$(sort $(patsubst %/,%,$(dir $(wildcard tools/*/*.c)))))
TOOLS := $(strip $(TOOL_SRCS:tools/%.c=$(O)/bin/%) $(TOOL_DIRS:tools/%=$(O)/bin/%))

TEST_HELPERS := tests/helpers.c
TEST_SRCS := $(sort $(filter-out $(TEST_HELPERS),$(wildcard tests/*.c)))
# tests/NAME.sh: a test that drives real programs (copied, run like the rest;
# tests/vm-*.sh boot VMs for minutes: make check-vm, mk/vm.mk)
TEST_SCRIPTS := $(sort $(filter-out tests/vm-%.sh,$(wildcard tests/*.sh)))
TESTS := $(TEST_SRCS:tests/%.c=$(O)/tests/%) \
	$(filter-out $(O)/tests/run,$(TEST_SCRIPTS:tests/%.sh=$(O)/tests/%))

# libivmc-preload.so: src/preload/*.c over the library's objects, and the
# ivmc-run launcher beside the tools.
PRELOAD_SRCS := $(sort $(wildcard src/preload/*.c))
PRELOAD_OBJS := $(PRELOAD_SRCS:%.c=$(O)/obj/%.o)
# The library's objects as linked into the preload: their socket calls
# renamed to the preload's direct ones (src/preload/direct.syms).
PRELOAD_LIB_OBJS := $(LIB_OBJS:$(O)/obj/%=$(O)/obj-preload/%)
ifneq ($(PRELOAD_SRCS),)
PRELOAD_SO := $(O)/lib/libivmc-preload.so
endif

EXAMPLE_SRCS := $(sort $(wildcard examples/*.c))
EXAMPLES := $(EXAMPLE_SRCS:examples/%.c=$(O)/examples/%)

MANPAGES := $(sort $(wildcard man/*.[1-8]))
LIB_MAP := src/libivmc.map

# The library is optional while src/ is empty: everything else still builds
# and links without it.
ifneq ($(LIB_SRCS),)
LIB_SO := $(O)/libivmc.so.$(SOVERSION)
LIB_SO_LINK := $(O)/libivmc.so
LIB_A := $(O)/libivmc.a
LIBS_BUILT := $(LIB_A) $(LIB_SO) $(LIB_SO_LINK)
endif

ALL_SRCS := $(LIB_SRCS) $(TOOL_SRCS) $(wildcard tools/*/*.c) \
	$(TEST_HELPERS) $(TEST_SRCS) $(EXAMPLE_SRCS) $(PRELOAD_SRCS)
ALL_OBJS := $(ALL_SRCS:%.c=$(O)/obj/%.o)
DEPS := $(ALL_OBJS:.o=.d)

# Rebuild everything when the compiler or the flags change (e.g. a second
# "make EXTRA_CFLAGS=-fsanitize=..." into the same O=).
FLAGS_STAMP := $(O)/.build-flags
BUILD_FLAGS := $(CC) | $(ALL_CFLAGS) | $(ALL_LDFLAGS)

# ---- top-level targets ----------------------------------------------------
.DEFAULT_GOAL := all
.PHONY: all lib tools tests examples check check-asan check-tsan check-long \
	check-install bench demo install uninstall clean lint FORCE

all: lib tools tests examples
lib: $(LIBS_BUILT) $(PRELOAD_SO)
tools: $(TOOLS)
tests: $(TESTS)
examples: $(EXAMPLES)

# ---- compile ----------------------------------------------------------------
$(FLAGS_STAMP): FORCE
	@mkdir -p $(@D)
	@echo '$(subst ','\'',$(BUILD_FLAGS))' | cmp -s - $@ || \
		echo '$(subst ','\'',$(BUILD_FLAGS))' > $@

$(O)/obj/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(@D)
	$(msg) CC $@
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# ---- library ----------------------------------------------------------------
$(LIB_A): $(LIB_OBJS)
	$(msg) AR $@
	$(Q)rm -f $@ && $(AR) rcs $@ $^

# The export list is src/libivmc.map. Until it exists the library links
# without it (exports are then whatever the code marks visibility default).
ifneq ($(wildcard $(LIB_MAP)),)
LIB_MAP_DEP := $(LIB_MAP)
LIB_MAP_FLAG := -Wl,--version-script=$(LIB_MAP)
endif

$(LIB_SO): $(LIB_OBJS) $(LIB_MAP_DEP)
	$(if $(LIB_MAP_DEP),,@echo "  WARNING $(LIB_MAP) missing: $@ linked without an export map" >&2)
	$(msg) LD $@
	$(Q)$(CC) -shared -Wl,-z,defs $(LIB_MAP_FLAG) \
		-Wl,-soname,libivmc.so.$(SOVERSION) $(ALL_LDFLAGS) \
		-o $@ $(LIB_OBJS) $(LIB_LIBS)

$(LIB_SO_LINK): $(LIB_SO)
	$(Q)ln -sf $(notdir $<) $@

# Everything it needs inside (no libivmc.so beside it); only the
# interposed libc calls are exported (src/preload/preload.map).
$(O)/obj-preload/%.o: $(O)/obj/%.o src/preload/direct.syms
	@mkdir -p $(@D)
	$(msg) OBJCOPY $@
	$(Q)$(OBJCOPY) --redefine-syms=src/preload/direct.syms $< $@

$(PRELOAD_SO): $(PRELOAD_OBJS) $(PRELOAD_LIB_OBJS) src/preload/preload.map
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) -shared -Wl,-z,defs -Wl,--version-script=src/preload/preload.map \
		$(ALL_LDFLAGS) -o $@ $(PRELOAD_OBJS) $(PRELOAD_LIB_OBJS) \
		$(LIB_LIBS) -ldl

# ---- programs (all link libivmc.a statically: no LD_LIBRARY_PATH) ----------
tool_objs = $(patsubst %.c,$(O)/obj/%.o,$(wildcard tools/$(1).c tools/$(1)/*.c))

.SECONDEXPANSION:
$(O)/bin/%: $$(call tool_objs,$$*) $(TOOL_COMMON_OBJS) $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

$(O)/tests/%: $(O)/obj/tests/%.o $(O)/obj/tests/helpers.o $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

$(O)/tests/%: tests/%.sh $(O)/tests/preload-lib.bash
	@mkdir -p $(@D)
	$(msg) CP $@
	$(Q)install -m 755 $< $@

# Shared by the script tests; not itself a test (not executable).
$(O)/tests/preload-lib.bash: tests/preload-lib.bash
	@mkdir -p $(@D)
	$(Q)install -m 644 $< $@

$(O)/examples/%: $(O)/obj/examples/%.o $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

# ---- tests ------------------------------------------------------------------
# The tests are named, so a stale binary whose source is gone never runs.
RUN_TESTS = IVMC_TEST_LOGDIR=$(O)/test-logs bash tests/run.sh $(O)/tests \
	$(notdir $(TESTS))
SAN_COMMON := -fno-omit-frame-pointer -fno-sanitize-recover=all
ASAN_FLAGS := -fsanitize=address,undefined $(SAN_COMMON)
# gcc warns (-Wtsan) that TSan does not model atomic_thread_fence(); the
# fences in src/ring/atomics.h are deliberate, so the warning is off.
TSAN_FLAGS := -fsanitize=thread $(SAN_COMMON) -Wno-tsan
TSAN_FILTER ?= -thread

check: all
	$(msg) RUN $(O)/tests
	$(Q)$(RUN_TESTS)

check-long: all vm
	$(msg) RUN "$(O)/tests (IVMC_LONG=1)"
	$(Q)IVMC_LONG=1 IVMC_TEST_TIMEOUT=$${IVMC_TEST_TIMEOUT:-900} $(RUN_TESTS)
	$(Q)IVMC_LONG=1 IVMC_TEST_TIMEOUT=$${IVMC_TEST_TIMEOUT:-1800} \
		$(MAKE) --no-print-directory check-vm

# Sanitizer builds live in their own directories so they never mix objects
# with the normal build; the recursive make rebuilds only what changed.
# Sanitizer reports fail the test at once (the options can be overridden).
# Programs run under ivmc-run (tests/preload-*) are not sanitized: the
# ASan runtime goes in front of the sanitized preload (IVMC_PRELOAD_FIRST).
check-asan:
	+IVMC_PRELOAD_FIRST=$$($(CC) -print-file-name=libasan.so) \
	ASAN_OPTIONS=$${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1} \
	UBSAN_OPTIONS=$${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
	$(MAKE) O=build-asan EXTRA_CFLAGS='$(EXTRA_CFLAGS) $(ASAN_FLAGS)' check

check-tsan:
	+TSAN_OPTIONS=$${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1} \
	IVMC_TEST_FILTER='$(TSAN_FILTER)' $(MAKE) O=build-tsan \
		EXTRA_CFLAGS='$(EXTRA_CFLAGS) $(TSAN_FLAGS)' check

bench: all
	@test -x $(O)/bin/ivmc-bench || \
		{ echo "bench: $(O)/bin/ivmc-bench not built (no tools/ivmc-bench.c)" >&2; exit 1; }
	$(O)/bin/ivmc-bench

demo: all
	@test -x $(O)/bin/ivmc-bench || \
		{ echo "demo: $(O)/bin/ivmc-bench not built (no tools/ivmc-bench.c)" >&2; exit 1; }
	$(O)/bin/ivmc-bench --quick
	IVMC_RUN=$(O)/bin/ivmc-run IVMCD=$(O)/bin/ivmcd IVMCCTL=$(O)/bin/ivmcctl \
	IVMC_PRELOAD=$(PRELOAD_SO) bash bench/preload.sh --quick --rounds 2

# Install into a scratch DESTDIR, then build every example against the
# installed header and shared library only (found through pkg-config), the
# way a user outside this tree would.
CI_DEST = $(O)/check-install
check-install: all
	@rm -rf $(CI_DEST)
	+$(MAKE) --no-print-directory install DESTDIR=$(abspath $(CI_DEST))/root
	@set -e; pcdir='$(abspath $(CI_DEST))/root$(PKGCONFIGDIR)'; \
	export PKG_CONFIG_PATH="$$pcdir" PKG_CONFIG_LIBDIR="$$pcdir" \
		PKG_CONFIG_SYSROOT_DIR='$(abspath $(CI_DEST))/root'; \
	pkg-config --exists ivmc || { echo "check-install: ivmc.pc not usable" >&2; exit 1; }; \
	flags="$$(pkg-config --cflags ivmc)"; libs="$$(pkg-config --libs ivmc)"; \
	mkdir -p $(CI_DEST)/examples; n=0; \
	for src in $(EXAMPLE_SRCS); do \
		out=$(CI_DEST)/examples/$$(basename $$src .c); \
		echo "  CC-INST $$out"; \
		$(CC) -std=gnu11 -Wall -Wextra -Werror $$flags -o $$out $$src $$libs || \
			{ echo "check-install: $$src does not build against the installed library" >&2; exit 1; }; \
		n=$$((n + 1)); \
	done; \
	echo "check-install: $$n example(s) built against the installed header and library"

# ---- install ----------------------------------------------------------------
# Regenerated every time: PREFIX/LIBDIR may differ between invocations.
$(O)/ivmc.pc: ivmc.pc.in FORCE
	@mkdir -p $(@D)
	$(msg) GEN $@
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
		$< > $@

install: all $(O)/ivmc.pc
	$(INSTALL) -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(BINDIR)
ifneq ($(wildcard include/ivmc.h),)
	$(INSTALL) -m 644 include/ivmc.h $(DESTDIR)$(INCLUDEDIR)/ivmc.h
endif
ifneq ($(LIB_SRCS),)
	$(INSTALL) -m 755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/libivmc.so.$(SOVERSION)
	ln -sf libivmc.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libivmc.so
	$(INSTALL) -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libivmc.a
endif
ifneq ($(PRELOAD_SO),)
	$(INSTALL) -d $(DESTDIR)$(LIBDIR)/ivmc
	$(INSTALL) -m 755 $(PRELOAD_SO) $(DESTDIR)$(LIBDIR)/ivmc/libivmc-preload.so
endif
	$(INSTALL) -m 644 $(O)/ivmc.pc $(DESTDIR)$(PKGCONFIGDIR)/ivmc.pc
ifneq ($(TOOLS),)
	$(INSTALL) -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)/
endif
	@set -e; for m in $(MANPAGES); do \
		d='$(DESTDIR)$(MANDIR)'/man$${m##*.}; \
		echo "$(INSTALL) -m 644 $$m $$d/"; \
		$(INSTALL) -d "$$d"; $(INSTALL) -m 644 "$$m" "$$d/"; \
	done

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ivmc.h $(DESTDIR)$(PKGCONFIGDIR)/ivmc.pc \
		$(DESTDIR)$(LIBDIR)/libivmc.so $(DESTDIR)$(LIBDIR)/libivmc.so.$(SOVERSION) \
		$(DESTDIR)$(LIBDIR)/libivmc.a $(DESTDIR)$(LIBDIR)/ivmc/libivmc-preload.so \
		$(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(TOOLS)))
	@for m in $(MANPAGES); do \
		rm -f '$(DESTDIR)$(MANDIR)'/man$${m##*.}/$$(basename $$m); \
	done

# ---- lint -------------------------------------------------------------------
LINT_SRCS := $(LIB_SRCS) $(wildcard src/preload/*.c) $(TOOL_SRCS) \
	$(wildcard tools/*/*.c)
LINT_DIRS := $(wildcard src tools)
CPPCHECK ?= cppcheck
CLANG_TIDY ?= clang-tidy

# cppcheck, clang-tidy and the shm-> rule all run, whatever the first found.
lint:
	@rc=0; \
	if [ -z '$(strip $(LINT_SRCS))' ]; then \
		echo "lint: no C sources under src/ or tools/ yet"; \
	else \
		echo "  CPPCHECK $(LINT_DIRS)"; \
		$(CPPCHECK) --enable=warning,performance,portability \
			--error-exitcode=1 --inline-suppr -q -Iinclude -Isrc \
			$(LINT_DIRS) || rc=1; \
		echo "  TIDY    $(words $(LINT_SRCS)) file(s)"; \
		out=$$($(CLANG_TIDY) --quiet $(LINT_SRCS) -- -std=gnu11 \
			-D_GNU_SOURCE -Iinclude -Isrc 2>&1) || rc=1; \
		printf '%s\n' "$$out" | grep -Ev \
			'^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$$' || :; \
	fi; \
	: "STYLE.md: shared memory is read by ring/ and chan/ accessors only"; \
	bad=$$(grep -rn --include='*.[ch]' 'shm->' src 2>/dev/null | \
		grep -v '^src/ring/\|^src/chan/'); \
	if [ -n "$$bad" ]; then \
		echo "lint: shm-> used outside src/ring and src/chan:"; \
		echo "$$bad"; rc=1; \
	fi; \
	exit $$rc

# ---- clean ------------------------------------------------------------------
clean:
	rm -rf $(O) build-asan build-tsan

FORCE:

# Objects reached through pattern rules are kept, not deleted as intermediate.
.SECONDARY: $(ALL_OBJS)

ifeq ($(filter clean,$(MAKECMDGOALS)),)
-include $(DEPS)
endif

# Optional parts (fuzzing, protocol models) each bring a fragment of their own.
-include $(sort $(wildcard mk/*.mk))
