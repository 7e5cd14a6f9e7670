// Command nested runs gvmm's KVM test binaries and demo where /dev/kvm
// exists, and builds a machine that has one where it does not.
//
// Usage (from the repository root):
//
//	go run ./tests/nested test [flags] PKG...   run PKG's tests under KVM
//	go run ./tests/nested demo [flags]          boot a Linux guest with gvmm
//	go run ./tests/nested shell [flags]         a shell in L1, for debugging
//	go run ./tests/nested bench [flags]         boot time and virtio I/O: gvmm vs QEMU
//
// When the host has a usable /dev/kvm (one backed by kvm_intel or kvm_amd;
// not kvm_pvm, which some sandboxes offer and which runs only PVM guest
// kernels), the compiled test binaries (and the demo) run directly on it.
// Otherwise the harness builds an "L1" machine:
// QEMU with the TCG emulator and an AMD CPU model with SVM, booting
// Debian's kernel with an initramfs that loads kvm-amd (so /dev/kvm exists
// inside L1), then runs the same binaries there and powers off. Results
// come back over L1's serial console, framed by marker lines:
//
//	=== GVMM-NESTED BEGIN <pkg>
//	... go test -test.v output ...
//	=== GVMM-NESTED END <pkg> rc=<exit status>
//	=== GVMM-NESTED DONE
//
// A package passes when its END marker says rc=0 and its output has no
// "--- SKIP" line: inside L1, /dev/kvm is promised, so a test that skips
// for lack of KVM is a failure. L1 also writes a heartbeat every 20 s to
// its second serial port, which QEMU writes to a file; under this emulation
// L1 now and then wedges with both vCPUs spinning and no timer firing,
// which stops the heartbeat too. Neither output nor heartbeat for -silence
// (L1's soft-lockup and RCU stall reports, which a wedged L1 may go on
// printing, do not count as output) means such a wedge: the harness kills QEMU, says so, and retries the whole
// L1 run once. So does a soft-lockup report of a CPU stuck for -silence or
// longer while the other CPU still sends heartbeats (seen once: a gvmm
// spinning in L1's kernel for ten minutes held up the tests).
//
// L1's kernel itself sometimes panics under TCG's emulated SVM (a host
// interrupt taken right after VMRUN, with the guest's GS loaded). Then a
// fresh L1 runs only the tests that had not finished, as the test binaries
// list them, up to five times (resume.go); and every test that failed gets
// one rerun in a fresh L1 (retryFailures), said out loud with whether its
// output showed a known nested instability (a guest triple fault or
// stall). A test whose failures all showed one gets a second rerun.
//
// L1's kvm-amd gets npt=0 under QEMU before 10 and its defaults (nested
// paging on) under QEMU 10 or newer (-kvm-params auto, the default; see
// autoKVMParams): each QEMU's TCG fails L2 guests on the other path.
// .ci/install-deps installs QEMU 10 (on Debian 12 from bookworm-backports).
// -kvm-params passes other module parameters to L1's kvm and kvm-amd (""
// for none), to try L1's KVM in other configurations when chasing a nested
// failure; L1 prints them when it loads the modules.
// -kvm-trace N has L1's KVM trace its guests' exits and injections into a
// ring buffer that stops at the first guest shutdown (a triple fault); the
// last N events before it are printed after the test package, prefixed
// "kvmtrace| ". The exit before a shutdown says what the guest was doing:
// its intr_info is the event being delivered when the guest died.
//
// GVMM_NESTED=force takes the nested path even with /dev/kvm (to test the
// harness itself); GVMM_NESTED=off runs directly even without it.
//
// Every test binary gets this environment (paths inside L1, or on the host
// when running directly):
//
//	GVMM_REQUIRE_KVM=1          a missing /dev/kvm is a failure, not a skip
//	GVMM_BIN                    the gvmm binary
//	GVMM_GUEST_KERNEL           Debian's vmlinuz, for Linux guests (L2)
//	GVMM_GUEST_INITRD           the guest initramfs (see tests/guest)
//
// The guest image is Debian's kernel and an initramfs written here (newc
// cpio, gzip) holding busybox-static, tests/guest/init as /init, the shell
// functions in tests/guest/shrc, the static agent from tests/guest/agent,
// memguard-guest from tests/guest/memguard (as /bin/memguard-guest),
// and the kernel package's virtio modules (and ext4, loaded on demand), in
// the load order their .modinfo depends= fields give (modules.go;
// tests/guest/modules loads them).
//
// testdata/selftest checks the harness itself without gvmm:
//
//	GVMM_NESTED=force go run ./tests/nested test -no-gvmm ./tests/nested/testdata/selftest
//
// The bench mode (make bench) builds tests/nested/bootbench and runs it
// where /dev/kvm is: in L1 it finds a copy of the host's
// qemu-system-x86_64 with every shared library ldd names (under
// /gvmm/qemu/lib, the loader at its own path) and the firmware it boots
// Linux with (/gvmm/qemu/share: qboot for microvm, SeaBIOS, linuxboot_dma
// and kvmvapic for pc). For n rounds (-n, default 5) bootbench boots the
// guest image once with each VMM in turn (-vmms), same memory and vCPUs,
// "gvmm.demo=auto" on the command line so the guest powers off by itself,
// and times with L1's monotonic clock the process start to the guest's
// "gvmm-guest: userspace up" on the VMM's output, and to its exit. It
// prints one "=== GVMM-NESTED BENCH RESULT" line per boot (format in
// internal/benchfmt), with the peak RSS from wait4 and, for gvmm, the
// overhead from gvmm run --stats. The harness prints the median, min and
// max per VMM, every failed boot with its reason, gvmm's median memory
// overhead, and whether the targets are met. A failed or missing
// boot makes the mode fail; no figure is ever asserted by a test.
//
// In the same L1 run the bench mode then runs tests/nested/iobench: for
// -io-n rounds (default 3) it boots the guest once with gvmm and once with
// QEMU -M pc, each with a fresh 64 MiB sparse raw image in L1's /tmp as
// virtio-blk (gvmm opens it without O_DIRECT, so QEMU gets
// cache=writeback,aio=threads) and a TAP as virtio-net (QEMU with
// vhost=off: both serve the queues in user space), and drives the guest's
// shell over the console: "agent disk write|read /dev/vda 64" (O_DIRECT,
// 1 MiB transfers; timed in the guest) and "agent tcpsend" of 64 MiB to a
// receiver in L1 on the TAP (timed by the receiver). One "=== GVMM-NESTED
// IOBENCH RESULT" line per transfer; the harness prints median, min and
// max MiB/s per test side by side with the gvmm/QEMU ratio. Beside each
// net-tx transfer iobench logs the VMM's CPU split (vCPU threads, guest
// time, the rest; kernel and user time; the busiest threads and the
// system calls they sit in), L1's KVM counters for its VM per MiB (exits by kind,
// interrupts injected; from L1's debugfs) and the guest NIC's packets per
// MiB, which say where two VMMs with the same guest differ. The sizes
// (-disk-mib, -net-mib) keep a transfer to seconds under this emulation;
// -n 0 or -io-n 0 leaves out the boot or the I/O part. Under emulation
// the figures scale with the host CPU time L1 gets; a second nested run on
// the same 2-core host moved single transfers by 2-20x, so the mode ends
// with the host's load averages, and only runs on an otherwise idle host
// compare well.
//
// Last, tests/nested/migbench live-migrates, -mig-n rounds (default 3),
// the same idle guest (256 MiB, the serial console only) over loopback in
// L1: with "gvmm migrate" to a "gvmm receive" (encrypted, its defaults),
// and with QEMU -M pc to a second QEMU started with -incoming, over QMP
// (plaintext, its defaults but max-bandwidth lifted), then the same over
// TLS with a pre-shared key ("qemu-tls": encrypted like gvmm, so the fair
// reference under TCG, where both encryptions are emulated). The guest runs
// "agent heartbeat 20" (a numbered, timestamped line every 20 ms); the
// benchmark timestamps each line on arrival from either VMM's console.
// One "=== GVMM-NESTED MIGBENCH RESULT" line per migration gives total
// time and downtime as the VMM reports them, the longest heartbeat gap
// (the downtime the guest's console saw, the same measurement for both
// VMMs, up to one period more than the pause) and how far the guest's
// clock moved across it; the harness prints the medians side by side and
// the verdicts on the targets. -mig-n 0 leaves this part out.
//
// Downloads (apt-get download, unpacked with dpkg -x) are cached under
// $GVMM_CACHE (default <repo>/.cache/gvmm), one folder per package version.
// Each run builds into its own folder under $GVMM_CACHE/build, removed at the
// end unless -keep is given (and by a later run once a day old).
package main
