package main

import (
	"bufio"
	"compress/gzip"
	"context"
	_ "embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// l1Init is L1's /init. It prints the markers in markers.go.
//
//go:embed l1init.sh
var l1Init []byte

// l1Modules are the modules L1 loads, in this order, relative to the
// package's lib/modules/<version>/kernel/. Debian 12 ships them
// uncompressed. kvm-amd needs kvm and ccp; kvm needs irqbypass; tun is for
// guests with a TAP network device.
var l1Modules = []string{
	"virt/lib/irqbypass.ko",
	"drivers/crypto/ccp/ccp.ko",
	"arch/x86/kvm/kvm.ko",
	"arch/x86/kvm/kvm-amd.ko",
	"drivers/net/tun.ko",
	// The multi-host tests put hosts in network namespaces on a bridge.
	"net/llc/llc.ko",
	"net/802/stp.ko",
	"net/bridge/bridge.ko",
	"drivers/net/veth.ko",
}

// Paths inside L1, the contract with the tests (see doc.go).
const (
	l1GvmmBin     = "/gvmm/bin/gvmm"
	l1GuestKernel = "/gvmm/guest/vmlinuz"
	l1GuestInitrd = "/gvmm/guest/initrd.cpio.gz"
)

// guestImage is what a Linux guest (L2) boots: Debian's kernel and the
// initramfs built from tests/guest.
type guestImage struct {
	kernel string
	initrd string
}

// image writes one initramfs file: a cpio archive, optionally gzipped.
type image struct {
	f  *os.File
	bw *bufio.Writer
	gz *gzip.Writer // nil when not compressed
	*cpioWriter
}

func createImage(path string, compress bool) (*image, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	im := &image{f: f, bw: bufio.NewWriterSize(f, 1<<20)}
	var w io.Writer = im.bw
	if compress {
		// Fastest level: the archives hold compressed kernels and Go
		// binaries that gzip hardly shrinks, and it saves seconds per run.
		im.gz, _ = gzip.NewWriterLevel(im.bw, gzip.BestSpeed)
		w = im.gz
	}
	im.cpioWriter = newCPIOWriter(w)
	return im, nil
}

// close finishes the archive; on any earlier error it removes the file.
func (im *image) close(err error) error {
	if err == nil {
		err = im.cpioWriter.Close()
	}
	if err == nil && im.gz != nil {
		err = im.gz.Close()
	}
	if err == nil {
		err = im.bw.Flush()
	}
	if cerr := im.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(im.f.Name())
		return fmt.Errorf("write %s: %w", im.f.Name(), err)
	}
	return nil
}

// hostFile adds the host file src as name.
func (im *image) hostFile(name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return im.FileFrom(name, perm, f, fi.Size())
}

// hostTree adds the host folder src (regular files, folders and symlinks)
// as name.
func (im *image) hostTree(name, src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(name, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(fi.Mode().Perm())
		switch {
		case d.IsDir():
			return im.Dir(dst, perm)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return im.Symlink(dst, target)
		case d.Type().IsRegular():
			return im.hostFile(dst, p, perm)
		}
		return nil // sockets, devices: nothing a test needs
	})
}

// base adds what every initramfs here needs: the folders the inits mount
// on, and /dev/console, without which the kernel starts /init with no
// stdin, stdout or stderr.
func (im *image) base() error {
	for _, d := range []string{"dev", "proc", "sys", "root", "etc", "usr/local/bin"} {
		if err := im.Dir(d, 0o755); err != nil {
			return err
		}
	}
	// For programs that look up the current user (id, Go's os/user).
	if err := im.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return err
	}
	if err := im.File("etc/group", 0o644, []byte("root:x:0:\n")); err != nil {
		return err
	}
	if err := im.Dir("tmp", 0o1777); err != nil {
		return err
	}
	if err := im.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	return im.CharDev("dev/null", 0o666, 1, 3)
}

// busybox adds busybox-static as /bin/busybox and a symlink to it for each
// applet, at the path busybox itself names (bin/sh, sbin/insmod, ...).
func (im *image) busybox(bin string, applets []string) error {
	if err := im.hostFile("bin/busybox", bin, 0o755); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "bin/busybox" {
			continue
		}
		if err := im.Symlink(a, "/bin/busybox"); err != nil {
			return err
		}
	}
	return nil
}

// busyboxApplets asks the (static, host-runnable) busybox for its applets
// and their install paths.
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	out, err := runOutput(ctx, 30*time.Second, "", bin, "--list-full")
	if err != nil {
		return nil, err
	}
	applets := strings.Fields(out)
	if len(applets) < 50 {
		return nil, fmt.Errorf("%s --list-full: only %d applets", bin, len(applets))
	}
	return applets, nil
}

// buildGuest compiles the guest agent and memguard-guest and writes the guest initramfs into
// dir, with the kernel modules of guestModuleGroups (modules.go). The
// guest kernel is Debian's vmlinuz, used where it lies.
func buildGuest(ctx context.Context, g goTool, d debPackages, applets []string, dir string) (guestImage, error) {
	gi := guestImage{kernel: d.vmlinuz(), initrd: filepath.Join(dir, "guest-initrd.cpio.gz")}
	agent := filepath.Join(dir, "agent")
	if err := g.build(ctx, agent, "./tests/guest/agent"); err != nil {
		return gi, err
	}
	mgGuest := filepath.Join(dir, "memguard-guest")
	if err := g.build(ctx, mgGuest, "./tests/guest/memguard"); err != nil {
		return gi, err
	}
	guestDir := filepath.Join(g.repo, "tests", "guest")
	im, err := createImage(gi.initrd, true)
	if err != nil {
		return gi, err
	}
	err = im.base()
	if err == nil {
		err = im.busybox(d.busyboxBin(), applets)
	}
	if err == nil {
		err = im.hostFile("init", filepath.Join(guestDir, "init"), 0o755)
	}
	if err == nil {
		err = im.hostFile("bin/agent", agent, 0o755)
	}
	if err == nil {
		err = im.hostFile("bin/memguard-guest", mgGuest, 0o755)
	}
	if err == nil {
		err = im.hostFile("etc/shrc", filepath.Join(guestDir, "shrc"), 0o644)
	}
	if err == nil {
		err = im.hostFile(guestModScript, filepath.Join(guestDir, "modules"), 0o755)
	}
	if err == nil {
		_, err = im.guestModules(d, guestModuleGroups)
	}
	return gi, im.close(err)
}

// l1Plan says what L1's /init does; it becomes /gvmm/plan.sh.
type l1Plan struct {
	mode        string        // "test", "demo", "bench" or "shell"
	tests       []testPkg     // test mode: packages with a binary
	testTimeout time.Duration // test mode: -test.timeout of each binary
	testRun     string        // test mode: -test.run of each binary, if set
	testBench   string        // test mode: -test.bench of each binary (run once each), if set
	benchMem    string        // test mode: GVMM_BENCH_MEM for the benchmarks, if set
	demoArgs    []string      // demo mode: the gvmm command line
	benchArgs   []string      // bench mode: the bootbench command line; none: no boot timing
	bootbench   string        // bench mode: host path of bootbench, put at l1BootBench
	ioArgs      []string      // bench mode: the iobench command line; none: no I/O benchmark
	iobench     string        // bench mode: host path of iobench, put at l1IOBench
	migArgs     []string      // bench mode: the migbench command line; none: no migration benchmark
	migbench    string        // bench mode: host path of migbench, put at l1MigBench
	qemu        *qemuPayload  // bench mode: QEMU to compare with; nil: none
	heartbeat   int           // seconds between heartbeats; 0: none
	kvmArgs     []string      // insmod arguments of kvm.ko (NAME=VALUE)
	kvmAMDArgs  []string      // insmod arguments of kvm-amd.ko
	kvmTrace    int           // lines of L1's KVM trace to print after a guest shutdown; 0: no tracing
}

// splitKVMParams splits -kvm-params into kvm.ko's and kvm-amd.ko's insmod
// arguments.
func splitKVMParams(s string) (kvm, amd []string, err error) {
	for _, p := range strings.Fields(s) {
		mod, arg, ok := strings.Cut(p, ".")
		name, _, hasValue := strings.Cut(arg, "=")
		if !ok || !hasValue || name == "" || strings.ContainsAny(arg, "'\"\\$`") {
			return nil, nil, fmt.Errorf("%w: -kvm-params: %q is not kvm.NAME=VALUE or kvm_amd.NAME=VALUE", errUsage, p)
		}
		switch mod {
		case "kvm":
			kvm = append(kvm, arg)
		case "kvm_amd":
			amd = append(amd, arg)
		default:
			return nil, nil, fmt.Errorf("%w: -kvm-params: %q: module %q is neither kvm nor kvm_amd", errUsage, p, mod)
		}
	}
	return kvm, amd, nil
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (pl l1Plan) script() string {
	var b strings.Builder
	b.WriteString("# Written by tests/nested for l1init.sh.\n")
	var mods []string
	for _, m := range l1Modules {
		mods = append(mods, filepath.Base(m))
	}
	fmt.Fprintf(&b, "GVMM_MODE=%s\n", shQuote(pl.mode))
	fmt.Fprintf(&b, "GVMM_MODULES=%s\n", shQuote(strings.Join(mods, " ")))
	fmt.Fprintf(&b, "GVMM_TEST_TIMEOUT=%s\n", shQuote(pl.testTimeout.String()))
	fmt.Fprintf(&b, "GVMM_TEST_RUN=%s\n", shQuote(pl.testRun))
	fmt.Fprintf(&b, "GVMM_TEST_BENCH=%s\n", shQuote(pl.testBench))
	fmt.Fprintf(&b, "GVMM_BENCH_MEM=%s\n", shQuote(pl.benchMem))
	fmt.Fprintf(&b, "GVMM_HEARTBEAT=%d\n", pl.heartbeat)
	fmt.Fprintf(&b, "GVMM_KVM_ARGS=%s\n", shQuote(strings.Join(pl.kvmArgs, " ")))
	fmt.Fprintf(&b, "GVMM_KVM_AMD_ARGS=%s\n", shQuote(strings.Join(pl.kvmAMDArgs, " ")))
	fmt.Fprintf(&b, "GVMM_KVM_TRACE=%d\nGVMM_KVM_TRACE_LINES=%d\n", min(pl.kvmTrace, 1), pl.kvmTrace)
	fmt.Fprintf(&b, "gvmm_demo() {\n\t%s\n}\n", shCommand(pl.demoArgs))
	fmt.Fprintf(&b, "GVMM_BENCH_BOOT=%d\n", min(len(pl.benchArgs), 1))
	fmt.Fprintf(&b, "GVMM_BENCH_IO=%d\n", min(len(pl.ioArgs), 1))
	fmt.Fprintf(&b, "gvmm_bench() {\n\t%s\n}\n", shCommand(pl.benchArgs))
	fmt.Fprintf(&b, "gvmm_iobench() {\n\t%s\n}\n", shCommand(pl.ioArgs))
	fmt.Fprintf(&b, "GVMM_BENCH_MIG=%d\n", min(len(pl.migArgs), 1))
	fmt.Fprintf(&b, "gvmm_migbench() {\n\t%s\n}\n", shCommand(pl.migArgs))
	return b.String()
}

// shCommand quotes args as one shell command; none gives "return 1".
func shCommand(args []string) string {
	if len(args) == 0 {
		return "return 1"
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shQuote(a)
	}
	return strings.Join(q, " ")
}

// testsList is /gvmm/tests.list: one "name package" line per binary.
func (pl l1Plan) testsList() string {
	var b strings.Builder
	for _, t := range pl.tests {
		fmt.Fprintf(&b, "%s %s\n", t.name, t.pkg)
	}
	return b.String()
}

// buildL1 writes L1's initramfs: busybox, l1init.sh as /init, the modules,
// gvmm (if built), bootbench, iobench and QEMU (bench mode), the guest image, the test binaries with their testdata,
// and the plan. It is left uncompressed unless compress is set: under TCG
// the kernel would spend seconds inflating it, more than QEMU spends
// reading the larger file.
func buildL1(d debPackages, applets []string, gvmmBin string, guest guestImage, pl l1Plan, path string, compress bool) error {
	im, err := createImage(path, compress)
	if err != nil {
		return err
	}
	err = im.base()
	if err == nil {
		err = im.busybox(d.busyboxBin(), applets)
	}
	if err == nil {
		err = im.File("init", 0o755, l1Init)
	}
	for _, m := range l1Modules {
		if err == nil {
			err = im.hostFile("gvmm/modules/"+filepath.Base(m), d.module(m), 0o644)
		}
	}
	if err == nil && gvmmBin != "" {
		err = im.hostFile(l1GvmmBin, gvmmBin, 0o755)
	}
	if err == nil && pl.bootbench != "" {
		err = im.hostFile(l1BootBench, pl.bootbench, 0o755)
	}
	if err == nil && pl.iobench != "" {
		err = im.hostFile(l1IOBench, pl.iobench, 0o755)
	}
	if err == nil && pl.migbench != "" {
		err = im.hostFile(l1MigBench, pl.migbench, 0o755)
	}
	if err == nil && pl.qemu != nil {
		err = pl.qemu.add(im)
	}
	if err == nil {
		err = im.hostFile(l1GuestKernel, guest.kernel, 0o644)
	}
	if err == nil {
		err = im.hostFile(l1GuestInitrd, guest.initrd, 0o644)
	}
	for _, t := range pl.tests {
		dir := "gvmm/tests/" + t.name
		if err == nil {
			err = im.hostFile(dir+"/"+t.name+".test", t.bin, 0o755)
		}
		if err == nil && t.testdata != "" {
			err = im.hostTree(dir+"/testdata", t.testdata)
		}
		if err == nil {
			err = im.Dir(dir, 0o755) // the working directory, even without testdata
		}
	}
	if err == nil {
		err = im.File("gvmm/plan.sh", 0o644, []byte(pl.script()))
	}
	if err == nil {
		err = im.File("gvmm/tests.list", 0o644, []byte(pl.testsList()))
	}
	return im.close(err)
}
