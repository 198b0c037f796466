# SPDX-License-Identifier: MIT
#
# Description: the tests between real QEMU guests (tests/vm-*.sh, docs/vm.md),
# included by the Makefile. They boot VMs and take minutes, so they are not
# part of make check; CI runs them in a stage of their own.
#
#   make vm         $(O)/vm/: the static guest program vm-chan, vm-lib.sh
#                   and the test scripts (tests/vm-NAME.sh -> vm-NAME); the
#                   host's ivmc-vmd and ivmcctl they drive ($(O)/bin); for
#                   vm-preload, what it copies into its guests: ivmcd,
#                   ivmc-run, libivmc-preload.so and vm-chan-dyn (vm-chan
#                   linked dynamically, so that ivmc-run can preload it)
#   make check-vm   run them through tests/run.sh (IVMC_TEST_TIMEOUT,
#                   default 600 s each)

VM_DIR := $(O)/vm
VM_SCRIPTS := $(sort $(wildcard tests/vm-*.sh))
VM_TESTS := $(VM_SCRIPTS:tests/%.sh=$(VM_DIR)/%)
VM_CHAN := $(VM_DIR)/vm-chan
VM_CHAN_DYN := $(VM_DIR)/vm-chan-dyn

.PHONY: vm check-vm

vm: $(VM_CHAN) $(VM_DIR)/vm-lib.sh $(VM_DIR)/vm-preload-guest.sh $(VM_TESTS) $(O)/bin/ivmc-vmd \
	$(O)/bin/ivmcctl $(O)/bin/ivmcd $(O)/bin/ivmc-run $(PRELOAD_SO) \
	$(VM_CHAN_DYN)

# Static: it runs in a busybox initramfs with no libc beside it.
$(VM_CHAN): $(O)/obj/tests/vm/vm-chan.o $(O)/obj/tests/helpers.o $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -static -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

# The same program as a dynamic executable: LD_PRELOAD (ivmc-run) has no
# effect on a static one. vm-lib.sh copies its libraries into the guest.
$(VM_CHAN_DYN): $(O)/obj/tests/vm/vm-chan.o $(O)/obj/tests/helpers.o $(LIB_A)
	@mkdir -p $(@D)
	$(msg) LD $@
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $(filter %.o,$^) $(LIB_A) $(BIN_LIBS)

$(VM_DIR)/vm-lib.sh: tests/vm/vm-lib.sh
	@mkdir -p $(@D)
	$(Q)install -m 644 $< $@

# vm-preload's guest side, copied into its initramfs (run with sh).
$(VM_DIR)/vm-preload-guest.sh: tests/vm/vm-preload-guest.sh
	@mkdir -p $(@D)
	$(Q)install -m 644 $< $@

$(VM_DIR)/%: tests/%.sh
	@mkdir -p $(@D)
	$(msg) CP $@
	$(Q)install -m 755 $< $@

check-vm: vm
	$(msg) RUN $(VM_DIR)
	$(Q)IVMC_TEST_TIMEOUT=$${IVMC_TEST_TIMEOUT:-600} \
		IVMC_TEST_LOGDIR=$(O)/vm-logs bash tests/run.sh $(VM_DIR) \
		$(notdir $(VM_TESTS))

ifeq ($(filter clean,$(MAKECMDGOALS)),)
-include $(O)/obj/tests/vm/vm-chan.d
endif
