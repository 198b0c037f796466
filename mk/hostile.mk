# SPDX-License-Identifier: MIT
#
# Description: the hostile peer program (tests/hostile/*.c -> $(O)/tests/
# hostile/NAME), built with the tests but not run as one: tests/sec-*.c
# start it. Included by the Makefile.

HOSTILE_SRCS := $(sort $(wildcard tests/hostile/*.c))
HOSTILE_BINS := $(HOSTILE_SRCS:tests/hostile/%.c=$(O)/tests/hostile/%)

tests: $(HOSTILE_BINS)

$(O)/tests/hostile/%: $(O)/obj/tests/hostile/%.o $(O)/obj/tests/helpers.o $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

.SECONDARY: $(HOSTILE_SRCS:%.c=$(O)/obj/%.o)
-include $(HOSTILE_SRCS:%.c=$(O)/obj/%.d)
