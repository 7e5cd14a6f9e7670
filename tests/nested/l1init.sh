#!/bin/sh
# /init of the L1 machine that tests/nested boots under QEMU/TCG with an
# SVM-capable CPU model. It loads kvm-amd so that /dev/kvm exists, then runs
# the test binaries, the demo or the benchmark that /gvmm/plan.sh names,
# and powers off.
# The "=== GVMM-NESTED" lines are parsed by the harness (markers.go); keep
# them in step.
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
echo "=== GVMM-NESTED L1 UP"
ip link set lo up

. /gvmm/plan.sh

for m in $GVMM_MODULES; do
	case $m in
	kvm.ko) args=$GVMM_KVM_ARGS ;;
	kvm-amd.ko) args=$GVMM_KVM_AMD_ARGS ;;
	*) args= ;;
	esac
	# $args unquoted: one word per NAME=VALUE.
	insmod "/gvmm/modules/$m" $args || echo "=== GVMM-NESTED ERROR insmod $m $args failed"
done
[ -z "$GVMM_KVM_ARGS$GVMM_KVM_AMD_ARGS" ] || echo "L1 KVM module parameters: kvm $GVMM_KVM_ARGS; kvm_amd $GVMM_KVM_AMD_ARGS"

[ -e /dev/kvm ] || mknod /dev/kvm c 10 232
if [ -e /sys/class/misc/kvm ]; then
	echo "=== GVMM-NESTED KVM READY"
else
	echo "=== GVMM-NESTED ERROR no /dev/kvm in L1: kvm-amd did not register it"
fi
if [ ! -e /dev/net/tun ]; then
	mkdir -p /dev/net
	mknod /dev/net/tun c 10 200
fi

# A heartbeat on the second serial port, which QEMU writes to a file the
# harness watches: a healthy L1 whose tests are quiet still shows life; a
# wedged one stops this too. It is kept off the console, where it would
# split lines that others write piecewise (a guest's console relayed by gvmm).
hb=
if [ "$GVMM_HEARTBEAT" -gt 0 ] && [ -e /dev/ttyS1 ]; then
	(while sleep "$GVMM_HEARTBEAT"; do echo alive; done >/dev/ttyS1) &
	hb=$!
fi

# With -kvm-trace, L1's KVM traces every exit of its guests (and what it
# injects) into a ring buffer that stops at the first shutdown exit (a
# guest triple fault, SVM exit code 0x7f); after each test package the
# buffer's tail is printed if it stopped, and tracing starts again.
T=/sys/kernel/tracing
if [ "$GVMM_KVM_TRACE" = 1 ]; then
	mount -t tracefs tracefs $T
	echo 8192 >$T/buffer_size_kb
	for e in kvm_exit kvm_inj_exception kvm_inj_virq kvm_page_fault kvm_nested_vmexit kvm_apic_accept_irq kvm_msr kvm_set_irq kvm_userspace_exit; do
		echo 1 >$T/events/kvm/$e/enable || echo "kvm-trace: no event $e"
	done
	echo 'traceoff if exit_reason == 127' >$T/events/kvm/kvm_exit/trigger || echo "kvm-trace: no trigger"
	echo 1 >$T/tracing_on
fi
kvm_trace_dump() {
	[ "$GVMM_KVM_TRACE" = 1 ] && [ "$(cat $T/tracing_on)" = 0 ] || return 0
	echo "kvm-trace: a guest shut down; the last $GVMM_KVM_TRACE_LINES events before it:"
	tail -n "$GVMM_KVM_TRACE_LINES" $T/trace | sed 's/^/kvmtrace| /'
	echo >$T/trace
	echo 1 >$T/tracing_on
}

export GVMM_REQUIRE_KVM=1
export GVMM_BIN=/gvmm/bin/gvmm
export GVMM_GUEST_KERNEL=/gvmm/guest/vmlinuz
export GVMM_GUEST_INITRD=/gvmm/guest/initrd.cpio.gz

# run_tests runs the test binaries of /gvmm/tests.list (test mode; demo
# mode for its story) between BEGIN and END markers.
run_tests() {
	set -- -test.v -test.timeout="$GVMM_TEST_TIMEOUT"
	[ -n "$GVMM_TEST_RUN" ] && set -- "$@" -test.run="$GVMM_TEST_RUN"
	[ -n "$GVMM_TEST_BENCH" ] && set -- "$@" -test.bench="$GVMM_TEST_BENCH" -test.benchtime=1x
	[ -n "$GVMM_BENCH_MEM" ] && export GVMM_BENCH_MEM
	while read -r dir pkg; do
		echo "=== GVMM-NESTED BEGIN $pkg"
		(cd "/gvmm/tests/$dir" && exec "./$dir.test" "$@") </dev/null 2>&1
		echo "=== GVMM-NESTED END $pkg rc=$?"
		kvm_trace_dump
	done </gvmm/tests.list
}

case "$GVMM_MODE" in
test)
	run_tests
	;;
demo)
	if [ -x "$GVMM_BIN" ]; then
		# setsid + cttyhack: the console becomes gvmm's controlling tty.
		setsid cttyhack sh -c '. /gvmm/plan.sh; gvmm_demo'
		echo "=== GVMM-NESTED DEMO rc=$?"
		# The story (issue 6's personal cloud), when the plan has one.
		[ -s /gvmm/tests.list ] && run_tests
	else
		echo "=== GVMM-NESTED ERROR $GVMM_BIN is missing"
	fi
	;;
bench)
	# bootbench (tests/nested/bootbench) times gvmm and QEMU booting the
	# guest and prints one BENCH RESULT line per boot; iobench
	# (tests/nested/iobench) measures their virtio-blk and virtio-net
	# throughput and prints one IOBENCH RESULT line per transfer.
	if [ "$GVMM_BENCH_BOOT" = 1 ]; then
		gvmm_bench </dev/null 2>&1
		echo "=== GVMM-NESTED BENCH DONE rc=$?"
	fi
	if [ "$GVMM_BENCH_IO" = 1 ]; then
		gvmm_iobench </dev/null 2>&1
		echo "=== GVMM-NESTED IOBENCH DONE rc=$?"
	fi
	# migbench (tests/nested/migbench) live-migrates an idle guest with
	# gvmm and with QEMU; one MIGBENCH RESULT line per migration.
	if [ "$GVMM_BENCH_MIG" = 1 ]; then
		gvmm_migbench </dev/null 2>&1
		echo "=== GVMM-NESTED MIGBENCH DONE rc=$?"
	fi
	;;
shell)
	echo "L1 shell: /dev/kvm is ready, gvmm and the guest image are in /gvmm. Type poweroff to leave."
	# Busybox ash runs its poweroff applet before PATH; a function wins.
	echo 'poweroff() { /bin/busybox poweroff -f; }; reboot() { poweroff; }' >/etc/shrc
	PS1='L1# ' ENV=/etc/shrc setsid cttyhack sh -i
	;;
*)
	echo "=== GVMM-NESTED ERROR unknown mode $GVMM_MODE"
	;;
esac

[ -n "$hb" ] && kill "$hb"
echo "=== GVMM-NESTED DONE"
poweroff -f
