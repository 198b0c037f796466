# SPDX-License-Identifier: MIT
#
# Description: the spin models of the wake, bell and switch protocols
# (model/README.md), included by the Makefile.
#
#   make model           every model verifies exhaustively (assertions,
#                        deadlocks, non-progress cycles); fails on any error
#   make model-mutants   every BUG_ variant of the models is caught; fails if
#                        spin misses one
#
# Needs spin (Debian: apt-get install spin). Scratch files (pan.c, pan,
# logs, trails) go to $(O)/model/ and $(O)/model-mutants/ only.
# MODEL_CC compiles the verifiers (default gcc: the build's CC may carry
# sanitizer flags).

MODEL_CC ?= gcc
SPIN ?= spin

.PHONY: model model-mutants

model:
	$(Q)SPIN='$(SPIN)' MODEL_CC='$(MODEL_CC)' model/check.sh $(O)/model

model-mutants:
	$(Q)SPIN='$(SPIN)' MODEL_CC='$(MODEL_CC)' model/check.sh --mutants $(O)/model-mutants
