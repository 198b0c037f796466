# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# Description: boot small QEMU guests for tests: a Debian cloud kernel fetched
# by package name (never installed into /), a busybox initramfs whose /init
# runs what the kernel command line says, and guests under TCG (KVM where
# /dev/kvm works), each bounded by timeout(1), serial console to a log file.
#
# Sourced by tests; every function returns non-zero with a reason in
# $VM_REASON instead of exiting. The caller sets a trap calling vm_cleanup.
#
#   vm_need_pkgs                 qemu-system-x86, busybox-static, cpio
#   vm_need_cmd CMD PKG          CMD on the host, else apt-get install PKG
#   vm_kernel                    sets VM_KERNEL (vmlinuz) and VM_MODDIR
#   vm_initramfs OUT MODS BIN... cpio.gz: busybox, BINs in /bin, the modules
#                                MODS (space separated names, deps added),
#                                and the extras below (none unless asked)
#   vm_extra_file SRC DEST       opt-in extra: SRC at DEST in the guest
#   vm_extra_prog PROG DEST      a dynamically linked PROG at DEST, with
#                                every library ldd lists (at the path it
#                                lists, under the soname the loader looks
#                                for) and the loader itself
#   vm_extra_net_etc             /etc/services, /etc/protocols (the
#                                host's) and a minimal nsswitch.conf, hosts
#   vm_boot NAME LOG SECS KARGS QEMU_ARGS...   start a guest in the
#                                background; VM_PIDS gains its pid
#   vm_wait_all                  wait for every guest; 0 if each printed
#                                "IVMC-RESULT: ok" before it powered off;
#                                forget them (another round may boot)
#   vm_alive NAME                is that guest's QEMU still running?
#   vm_dead NAME                 has it started (pid file) and ended?
#   vm_kill NAME                 SIGKILL that guest's QEMU (not its timeout
#                                wrapper) and forget it
#   vm_vmd_start BINDIR          start the host's ivmc-vmd (config and run
#                                directory in VM_TMP); IVMC_VM_SOCKET set
#   vm_qemu_args BINDIR NAME [--iommu]  VM_QARGS: what "ivmcctl qemu-args NAME"
#                                prints, word by word
#
# Guest command line (read by /init from /proc/cmdline):
#   ivmc.mod=NAME        insmod NAME (and what it depends on, in order)
#   ivmc.ip=DEV,A/N      ip address add A/N dev DEV; link up
#   ivmc.run=CMD,ARG,... a step: commas become spaces; steps run in order,
#                        each must exit 0. A step is words, not a shell
#                        line (no quotes, pipes or &): a test that needs
#                        a shell puts its script in as an extra file and
#                        runs "ivmc.run=sh,/PATH/SCRIPT,ARG"
# /init prints "IVMC-RESULT: ok" or "IVMC-RESULT: fail rc=N step=CMD", then
# powers off at once.
#
# Environment: IVMC_VM_CACHE (default /var/cache/ivmc-vm) holds the
# extracted kernel package, reused while its name is current, and the KVM
# probe's verdict; IVMC_VM_ACCEL (kvm or tcg) forces an accelerator.

VM_CACHE=${IVMC_VM_CACHE:-/var/cache/ivmc-vm}
VM_PIDS=()
VM_NAMES=()
VM_LOGS=()
VM_TMP=
VM_REASON=
VM_KERNEL=
VM_MODDIR=
VM_VMD_PID=
VM_VMD_RUN=
# shellcheck disable=SC2034 # VM_QARGS is read by the caller
VM_QARGS=()
# vm_extra_*: what vm_initramfs adds, source and destination paths
VM_EXTRA_SRC=()
VM_EXTRA_DST=()

# shellcheck disable=SC2034 # VM_REASON is read by the caller
vm_fail() {
	VM_REASON=$*
	return 1
}

# A scratch directory removed by vm_cleanup.
vm_tmpdir() {
	[ -n "$VM_TMP" ] || VM_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ivmc-vm.XXXXXX")
}

# Kill every guest we started (by pid), then our ivmc-vmd, and remove the
# scratch directory.
vm_cleanup() {
	local pid

	for pid in "${VM_PIDS[@]}"; do
		kill "$pid" 2> /dev/null
	done
	for pid in "${VM_PIDS[@]}"; do
		wait "$pid" 2> /dev/null
	done
	VM_PIDS=()
	if [ -n "$VM_VMD_PID" ]; then
		kill "$VM_VMD_PID" 2> /dev/null
		wait "$VM_VMD_PID" 2> /dev/null
		VM_VMD_PID=
	fi
	[ -n "$VM_TMP" ] && rm -rf "$VM_TMP"
	VM_TMP=
}

vm_have_pkgs() {
	command -v qemu-system-x86_64 > /dev/null && command -v cpio > /dev/null &&
		[ -x /bin/busybox ] && ! ldd /bin/busybox > /dev/null 2>&1
}

# Install what is missing with apt-get (root only).
vm_need_pkgs() {
	vm_have_pkgs && return 0
	[ "$(id -u)" -eq 0 ] || vm_fail "qemu-system-x86, busybox-static or cpio missing (not root: cannot apt-get)" || return
	echo "vm-lib: installing qemu-system-x86 busybox-static cpio" >&2
	DEBIAN_FRONTEND=noninteractive apt-get update -q > /dev/null 2>&1
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		qemu-system-x86 busybox-static cpio > /dev/null 2>&1 ||
		vm_fail "apt-get install qemu-system-x86 busybox-static cpio failed" || return
	vm_have_pkgs || vm_fail "packages installed but qemu, a static busybox or cpio still missing"
}

# vm_need_cmd CMD PKG: CMD on the host, or apt-get install PKG (root only).
vm_need_cmd() {
	command -v "$1" > /dev/null && return 0
	[ "$(id -u)" -eq 0 ] || vm_fail "$1 missing (not root: cannot apt-get install $2)" || return
	echo "vm-lib: installing $2" >&2
	DEBIAN_FRONTEND=noninteractive apt-get update -q > /dev/null 2>&1
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"$2" > /dev/null 2>&1 || vm_fail "apt-get install $2 failed" || return
	command -v "$1" > /dev/null || vm_fail "$2 installed but $1 still missing"
}

# The exact package linux-image-cloud-amd64 depends on now, e.g.
# linux-image-6.1.0-57-cloud-amd64 (a wildcard download would fetch every
# version).
vm_kernel_pkg() {
	apt-cache depends linux-image-cloud-amd64 2> /dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Point VM_KERNEL and VM_MODDIR at an extracted package directory.
vm_kernel_use() {
	local dir=$1 k

	k=$(find "$dir/boot" -maxdepth 1 -name 'vmlinuz-*' 2> /dev/null | head -n 1)
	[ -n "$k" ] || return 1
	VM_KERNEL=$k
	VM_MODDIR=$(find "$dir/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
	[ -n "$VM_MODDIR" ]
}

# Download and extract pkg into the cache (atomically: a half-extracted
# directory is never used).
vm_kernel_fetch() {
	local pkg=$1 dl

	mkdir -p "$VM_CACHE" || vm_fail "cannot create the kernel cache $VM_CACHE (IVMC_VM_CACHE)" || return
	dl=$(mktemp -d "$VM_CACHE/.dl.XXXXXX") || vm_fail "cannot write $VM_CACHE" || return
	chmod 755 "$dl" # apt-get download runs as _apt where it can
	echo "vm-lib: downloading $pkg into $VM_CACHE" >&2
	if ! (cd "$dl" && apt-get download -q "$pkg" > download.log 2>&1); then
		rm -rf "$dl"
		vm_fail "apt-get download $pkg failed"
		return
	fi
	if ! dpkg -x "$dl"/*.deb "$dl/root"; then
		rm -rf "$dl"
		vm_fail "dpkg -x of $pkg failed"
		return
	fi
	rm -rf "${VM_CACHE:?}/$pkg"
	mv "$dl/root" "$VM_CACHE/$pkg" && rm -rf "$dl"
}

# Sets VM_KERNEL and VM_MODDIR: the current cloud kernel, from the cache or
# downloaded. Offline, the newest one already cached does.
vm_kernel() {
	local pkg dir

	pkg=$(vm_kernel_pkg)
	if [ -z "$pkg" ]; then
		dir=$(find "$VM_CACHE" -mindepth 1 -maxdepth 1 -name 'linux-image-*' 2> /dev/null |
			sort -V | tail -n 1)
		[ -n "$dir" ] && vm_kernel_use "$dir" && return 0
		vm_fail "no package for linux-image-cloud-amd64 (apt-get update?) and none cached in $VM_CACHE"
		return
	fi
	vm_kernel_use "$VM_CACHE/$pkg" && return 0
	vm_kernel_fetch "$pkg" || return
	vm_kernel_use "$VM_CACHE/$pkg" || vm_fail "$pkg: no vmlinuz or modules inside"
}

# The .ko path of module name (- and _ are the same), or nothing.
vm_mod_path() {
	local n=${1//-/_}

	find "$VM_MODDIR/kernel" \( -name "$n.ko" -o -name "${n//_/-}.ko" \) | head -n 1
}

# Print name's dependencies first, then name (each once; $1: seen list).
vm_mod_order() {
	local name=$1 path deps d

	case " $VM_MOD_SEEN " in *" $name "*) return 0 ;; esac
	VM_MOD_SEEN="$VM_MOD_SEEN $name"
	path=$(vm_mod_path "$name")
	[ -n "$path" ] || vm_fail "kernel module $name not found in $VM_MODDIR" || return
	# The .modinfo section, read without kmod: "depends=a,b".
	deps=$(tr '\0' '\n' < "$path" | sed -n 's/^depends=//p' | head -n 1)
	for d in ${deps//,/ }; do
		vm_mod_order "$d" || return
	done
	echo "$path"
}

# The guest's /init (busybox sh). Instructions come from /proc/cmdline.
vm_write_init() {
	cat > "$1" << 'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
exec < /dev/console > /dev/console 2>&1
result() {
	echo "IVMC-RESULT: $*"
	sync
	poweroff -f
}
for w in $(cat /proc/cmdline); do
	case "$w" in
	ivmc.mod=*)
		for m in $(cat "/mods/${w#ivmc.mod=}.order" 2>/dev/null); do
			insmod "/mods/$m" 2>/dev/null || grep -q "^${m%.ko} " /proc/modules ||
				result "fail rc=1 step=insmod-$m"
		done ;;
	ivmc.ip=*)
		a=${w#ivmc.ip=}
		dev=${a%%,*}
		i=0
		while ! ip link show "$dev" >/dev/null 2>&1 && [ $i -lt 50 ]; do
			sleep 0.1; i=$((i + 1))
		done
		ip link set lo up
		ip addr add "${a#*,}" dev "$dev" && ip link set "$dev" up ||
			result "fail rc=1 step=ip-$a" ;;
	esac
done
for w in $(cat /proc/cmdline); do
	case "$w" in
	ivmc.run=*)
		step=$(echo "${w#ivmc.run=}" | tr , ' ')
		echo "ivmc-init: run $step"
		$step
		rc=$?
		[ $rc -eq 0 ] || result "fail rc=$rc step=$step" ;;
	esac
done
result ok
EOF
	chmod 755 "$1"
}

# vm_extra_file SRC DEST: SRC (symlinks followed) at DEST in the next
# initramfs.
vm_extra_file() {
	[ -r "$1" ] || vm_fail "$1: not readable" || return
	VM_EXTRA_SRC+=("$1")
	VM_EXTRA_DST+=("$2")
}

# vm_extra_prog PROG DEST: PROG at DEST and what the loader needs to run
# it: each library at the path ldd prints (named by its soname, which is
# what the loader looks for; the file behind any symlink is copied), and
# the loader at its own path (/lib64/ld-linux-x86-64.so.2), which the
# program names. Works for a shared library too (a preload). The guest has
# no ld.so.cache: the loader's built-in paths (/lib/x86_64-linux-gnu, /lib,
# /usr/lib...) are searched.
vm_extra_prog() {
	local prog=$1 dest=$2 out line lib

	vm_extra_file "$prog" "$dest" || return
	out=$(ldd "$prog" 2>&1) || {
		# Not dynamic (static, or a script): nothing else to add.
		case "$out" in *"not a dynamic"* | *"statically linked"*) return 0 ;; esac
		vm_fail "ldd $prog: $out"
		return
	}
	while read -r line; do
		case "$line" in
		*"=> not found"*) vm_fail "$prog: ${line%% *} not found" || return ;;
		*" => /"*) lib=${line#* => } ;; # libc.so.6 => /lib/.../libc.so.6 (0x..)
		/*) lib=$line ;;                # the loader: /lib64/ld-linux-x86-64.so.2 (0x..)
		*) continue ;;                  # linux-vdso.so.1 (0x..): in the kernel
		esac
		lib=${lib%% (*}
		vm_extra_file "$lib" "$lib" || return
	done <<< "$out"
}

# vm_extra_net_etc: what libc's name services read for numeric addresses
# and port or protocol names: the host's /etc/services and /etc/protocols,
# and a minimal nsswitch.conf and hosts (the host's may name modules and
# hosts the guest does not have).
vm_extra_net_etc() {
	local f

	vm_tmpdir
	for f in /etc/services /etc/protocols; do
		[ -r "$f" ] && { vm_extra_file "$f" "$f" || return; }
	done
	printf 'passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n' \
		> "$VM_TMP/nsswitch.conf"
	printf '127.0.0.1 localhost\n::1 localhost\n' > "$VM_TMP/hosts"
	printf 'root:x:0:0:root:/:/bin/sh\n' > "$VM_TMP/passwd"
	printf 'root:x:0:\n' > "$VM_TMP/group"
	for f in nsswitch.conf hosts passwd group; do
		vm_extra_file "$VM_TMP/$f" "/etc/$f" || return
	done
}

# vm_initramfs OUT "MODS" BIN...: build a gzipped newc cpio.
vm_initramfs() {
	local out=$1 mods=$2 root m list b i
	shift 2

	vm_tmpdir
	root=$(mktemp -d "$VM_TMP/root.XXXXXX")
	mkdir -p "$root/bin" "$root/mods" || return
	cp /bin/busybox "$root/bin/busybox" || vm_fail "cannot copy busybox" || return
	for b in "$@"; do
		cp "$b" "$root/bin/" || vm_fail "cannot copy $b" || return
	done
	for m in $mods; do
		VM_MOD_SEEN=
		list=$(vm_mod_order "$m") ||
			vm_fail "kernel module $m or one it depends on not in $VM_MODDIR" || return
		for b in $list; do
			cp -n "$b" "$root/mods/"
			basename "$b" >> "$root/mods/$m.order"
		done
	done
	for i in "${!VM_EXTRA_SRC[@]}"; do
		mkdir -p "$root/$(dirname "${VM_EXTRA_DST[$i]}")" &&
			cp -L "${VM_EXTRA_SRC[$i]}" "$root/${VM_EXTRA_DST[$i]}" ||
			vm_fail "cannot copy ${VM_EXTRA_SRC[$i]} to ${VM_EXTRA_DST[$i]}" || return
	done
	vm_write_init "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out" ||
		vm_fail "cpio of the initramfs failed"
}

# Which accelerator: IVMC_VM_ACCEL if set; else kvm where /dev/kvm opens
# and a probe guest boots under it; else tcg. A /dev/kvm that opens is not
# enough: nested under another hypervisor it may hang the guest at its first
# instructions. The probe's verdict is kept in VM_CACHE for this host boot.
vm_accel() {
	local id cached

	if [ -n "${IVMC_VM_ACCEL:-}" ]; then
		echo "$IVMC_VM_ACCEL"
		return
	fi
	if ! [ -r /dev/kvm ] || ! [ -w /dev/kvm ]; then
		echo tcg
		return
	fi
	id=$(cat /proc/sys/kernel/random/boot_id 2> /dev/null)
	cached=$VM_CACHE/kvm-probe.$id
	if [ ! -s "$cached" ]; then
		vm_kvm_probe > "$cached.tmp" 2> /dev/null && mv "$cached.tmp" "$cached"
		rm -f "$cached.tmp"
	fi
	cat "$cached" 2> /dev/null || echo tcg
}

# Boot VM_INITRD under KVM with nothing to run: prints kvm if it powers off
# with "IVMC-RESULT: ok" within 20 s, else tcg.
vm_kvm_probe() {
	local log

	vm_tmpdir
	log=$VM_TMP/kvm-probe.log
	timeout -k 2 20 qemu-system-x86_64 -accel kvm -m 256 -smp 1 \
		-nographic -no-reboot -nodefaults -serial stdio -monitor none \
		-kernel "$VM_KERNEL" -initrd "$VM_INITRD" \
		-append 'console=ttyS0 quiet panic=-1' < /dev/null > "$log" 2>&1
	if grep -aq '^IVMC-RESULT: ok' "$log"; then
		echo kvm
	else
		echo tcg
	fi
}

# vm_boot NAME LOG SECS "KARGS" QEMU_ARGS...: one guest, in the background,
# killed by timeout(1) after SECS. Needs VM_KERNEL and VM_INITRD.
vm_boot() {
	local name=$1 log=$2 secs=$3 kargs=$4 accel
	shift 4

	accel=$(vm_accel)
	rm -f "$VM_TMP/$name.pid" # an earlier boot's: vm_dead() must not see it
	echo "vm-lib: $name: booting under $accel" >&2
	timeout -k 5 "$secs" qemu-system-x86_64 -name "$name" -accel "$accel" \
		-pidfile "$VM_TMP/$name.pid" \
		-m 256 -smp 1 -nographic -no-reboot -nodefaults -serial stdio \
		-monitor none -kernel "$VM_KERNEL" -initrd "$VM_INITRD" \
		-append "console=ttyS0 quiet panic=-1 $kargs" "$@" \
		< /dev/null > "$log" 2>&1 &
	VM_PIDS+=($!)
	VM_NAMES+=("$name")
	VM_LOGS+=("$log")
}

# Wait for every guest; print each one's verdict and boot time. Returns 0
# if every guest printed "IVMC-RESULT: ok".
vm_wait_all() {
	local i rc=0 st

	for i in "${!VM_PIDS[@]}"; do
		wait "${VM_PIDS[$i]}"
		st=$?
		if grep -q '^IVMC-RESULT: ok' "${VM_LOGS[$i]}"; then
			echo "vm-lib: ${VM_NAMES[$i]}: ok (qemu exit $st)"
		else
			echo "vm-lib: ${VM_NAMES[$i]}: FAILED (qemu exit $st$([ $st -eq 124 ] && echo ', timed out'))"
			grep -a 'IVMC-RESULT' "${VM_LOGS[$i]}" || tail -n 20 "${VM_LOGS[$i]}"
			rc=1
		fi
	done
	# All waited for: forgotten, so that a second round of boots starts
	# with the arrays in step.
	VM_PIDS=()
	VM_NAMES=()
	VM_LOGS=()
	return $rc
}

# vm_alive NAME: its QEMU runs (by its pid file; the timeout(1) wrapper is
# our child and stays a zombie until waited for, so it cannot tell).
vm_alive() {
	local qpid

	qpid=$(cat "$VM_TMP/$1.pid" 2> /dev/null) && [ -n "$qpid" ] &&
		kill -0 "$qpid" 2> /dev/null &&
		grep -q qemu "/proc/$qpid/comm" 2> /dev/null
}

# vm_dead NAME: the guest's QEMU has started (its pid file) and is gone.
vm_dead() {
	[ -s "$VM_TMP/$1.pid" ] && ! vm_alive "$1"
}

# vm_kill NAME: SIGKILL the guest's QEMU itself (its pid file), as a crash
# would, wait for its timeout(1) wrapper and forget the guest.
vm_kill() {
	local i qpid

	for i in "${!VM_NAMES[@]}"; do
		[ "${VM_NAMES[$i]}" = "$1" ] || continue
		qpid=$(cat "$VM_TMP/$1.pid" 2> /dev/null)
		[ -n "$qpid" ] && kill -KILL "$qpid"
		wait "${VM_PIDS[$i]}" 2> /dev/null
		unset "VM_PIDS[$i]" "VM_NAMES[$i]" "VM_LOGS[$i]"
		VM_PIDS=("${VM_PIDS[@]}")
		VM_NAMES=("${VM_NAMES[@]}")
		VM_LOGS=("${VM_LOGS[@]}")
		[ -n "$qpid" ]
		return
	done
	vm_fail "no guest $1"
}

# vm_vmd_start BINDIR: the host's ivshmem server, with a fresh
# configuration and run directory in VM_TMP, log in VM_TMP/ivmc-vmd.log.
# Exports IVMC_VM_SOCKET for ivmcctl. QEMU needs it listening first.
vm_vmd_start() {
	local bin=$1 i

	vm_tmpdir
	VM_VMD_RUN=$VM_TMP/run
	"$bin/ivmc-vmd" -c "$VM_TMP/vms.conf" -r "$VM_VMD_RUN" -l debug \
		-L "$VM_TMP/ivmc-vmd.log" &
	VM_VMD_PID=$!
	export IVMC_VM_SOCKET=$VM_VMD_RUN/ivmc-vmd.sock
	for i in $(seq 100); do
		[ -S "$IVMC_VM_SOCKET" ] && return 0
		kill -0 "$VM_VMD_PID" 2> /dev/null || break
		sleep 0.05
	done
	vm_fail "ivmc-vmd did not start ($(tail -n 3 "$VM_TMP/ivmc-vmd.log" 2> /dev/null))"
}

# vm_qemu_args BIN NAME [--iommu]: VM_QARGS gets the words "ivmcctl
# qemu-args NAME [--iommu]" prints (a shell-quoted line, read back by the
# shell itself).
vm_qemu_args() {
	local line bin=$1

	shift
	line=$("$bin/ivmcctl" qemu-args "$@") || vm_fail "ivmcctl qemu-args $* failed" || return
	eval "VM_QARGS=($line)"
}
