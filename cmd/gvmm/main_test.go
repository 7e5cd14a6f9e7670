package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/vmm/vmmtest"
)

// runGVMM runs the command in-process and returns status, stdout, stderr.
func runGVMM(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	code := realMain(args, devnull, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelp(t *testing.T) {
	code, out, _ := runGVMM(t, "--help")
	if code != 0 || !strings.Contains(out, "run") || !strings.Contains(out, "Usage") {
		t.Fatalf("gvmm --help: status %d, output %q", code, out)
	}
	code, out, _ = runGVMM(t, "run", "--help")
	if code != 0 {
		t.Fatalf("gvmm run --help: status %d", code)
	}
	for _, flag := range []string{"-kernel", "-initrd", "-cmdline", "-memory", "-cpus", "-on-reboot", "-disk", "-net", "-channel", "-api-socket", "Ctrl-A x"} {
		if !strings.Contains(out, flag) {
			t.Errorf("gvmm run --help does not explain %s:\n%s", flag, out)
		}
	}
	if code, _, _ := runGVMM(t); code != 2 {
		t.Errorf("gvmm without a command: status %d, want 2", code)
	}
}

// TestRunBadInput checks that each bad input gives one clear line on
// stderr and a non-zero status, never a panic. None of these needs KVM:
// inputs are checked before /dev/kvm is opened.
func TestRunBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", vmmtest.BzImage(vmmtest.CodePowerOff, 32<<20))
	truncated := write("truncated", vmmtest.BzImage(make([]byte, 8192), 32<<20)[:4000])
	notBz := write("elf", append([]byte("\x7fELF"), make([]byte, 8192)...))
	empty := write("empty", nil)
	bigInitrd := filepath.Join(dir, "big-initrd")
	f, err := os.Create(bigInitrd)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(200 << 20); err != nil { // sparse
		t.Fatal(err)
	}
	f.Close()

	keyOpen := write("key-open", make([]byte, 32)) // mode 0644
	keyShort := filepath.Join(dir, "key-short")
	os.WriteFile(keyShort, []byte("abc"), 0o600)
	key := filepath.Join(dir, "key")
	os.WriteFile(key, make([]byte, 32), 0o600)
	notSnap := write("not-a-snapshot", []byte("hello, this is not a snapshot file at all, not even close"))

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no kernel flag", []string{"run"}, "missing --kernel"},
		{"restore with kernel", []string{"run", "--restore", notSnap, "--kernel", good}, "cannot be given with it"},
		{"restore with memory", []string{"run", "--restore", notSnap, "--memory", "1G"}, "--memory"},
		{"restore missing file", []string{"run", "--restore", filepath.Join(dir, "nope.snap")}, "no such file"},
		{"restore not a snapshot", []string{"run", "--restore", notSnap}, "not a gvmm snapshot"},
		{"snapshot without socket", []string{"snapshot", "--to", "x"}, "missing --api-socket"},
		{"snapshot no such VM", []string{"snapshot", "--api-socket", filepath.Join(dir, "no.sock"), "--to", filepath.Join(dir, "s")}, "no.sock"},
		{"migrate without key", []string{"migrate", "--api-socket", "s", "--to", "h:1"}, "--insecure-key"},
		{"migrate negative connections", []string{"migrate", "--api-socket", "s", "--to", "h:1", "--insecure-key", key, "--connections", "-1"}, "negative"},
		{"migrate unknown compression", []string{"migrate", "--api-socket", "s", "--to", "h:1", "--insecure-key", key, "--compress", "best"}, "want auto, off or always"},
		{"migrate missing key file", []string{"migrate", "--api-socket", "s", "--to", "h:1", "--insecure-key", filepath.Join(dir, "nokey")}, "key file"},
		{"receive without listen", []string{"receive", "--insecure-key", key}, "missing --listen"},
		{"receive key readable by others", []string{"receive", "--listen", "127.0.0.1:0", "--insecure-key", keyOpen}, "readable by others"},
		{"receive short key", []string{"receive", "--listen", "127.0.0.1:0", "--insecure-key", keyShort}, "want 32 bytes"},
		{"receive bad address", []string{"receive", "--listen", "nonsense", "--insecure-key", key}, "listen"},
		{"missing kernel", []string{"run", "--kernel", filepath.Join(dir, "nope")}, "no such file"},
		{"kernel is a directory", []string{"run", "--kernel", dir}, "kernel"},
		{"empty kernel", []string{"run", "--kernel", empty}, "too short"},
		{"truncated kernel", []string{"run", "--kernel", truncated}, "truncated"},
		{"not a bzImage", []string{"run", "--kernel", notBz}, "not a bzImage"},
		{"missing initrd", []string{"run", "--kernel", good, "--initrd", filepath.Join(dir, "nope")}, "initrd"},
		{"initrd does not fit", []string{"run", "--kernel", good, "--initrd", bigInitrd, "--memory", "128M"}, "does not fit"},
		{"memory zero", []string{"run", "--kernel", good, "--memory", "0"}, "too small"},
		{"memory garbage", []string{"run", "--kernel", good, "--memory", "lots"}, "invalid size"},
		{"memory more than host", []string{"run", "--kernel", good, "--memory", "64T"}, "more than this host has"},
		{"cpus zero", []string{"run", "--kernel", good, "--cpus", "0"}, "cpus 0"},
		{"cpus too many", []string{"run", "--kernel", good, "--cpus", "100000"}, "cpus 100000"},
		{"memguard max regions zero", []string{"run", "--kernel", good, "--memguard-max-regions", "0"}, "--memguard-max-regions 0"},
		{"memguard max regions too many", []string{"run", "--kernel", good, "--memguard-max-regions", "5000"}, "memguard max regions 5000 is outside 1..1024"},
		{"unknown flag", []string{"run", "--kernel", good, "--frobnicate"}, "frobnicate"},
		{"stray argument", []string{"run", "--kernel", good, "extra"}, "unexpected argument"},
		{"bad on-reboot", []string{"run", "--kernel", good, "--on-reboot", "dance"}, "on-reboot"},
		{"no KVM", []string{"run", "--kernel", good, "--kvm", filepath.Join(dir, "no-kvm")}, "make demo"},
		{"missing disk", []string{"run", "--kernel", good, "--disk", filepath.Join(dir, "no-disk.img"), "--kvm", filepath.Join(dir, "no-kvm")}, "no-disk.img"},
		{"bad disk option", []string{"run", "--kernel", good, "--disk", good + ",fast"}, "unknown disk option"},
		{"empty disk path", []string{"run", "--kernel", good, "--disk", ",readonly"}, "empty disk path"},
		{"net without tap", []string{"run", "--kernel", good, "--net", "bridge=br0"}, "missing tap=NAME"},
		{"net bad option", []string{"run", "--kernel", good, "--net", "tap=t0,speed=fast"}, "unknown net option"},
		{"net bad mac", []string{"run", "--kernel", good, "--net", "tap=t0,mac=zz"}, "not a 6-byte MAC"},
		{"net multicast mac", []string{"run", "--kernel", good, "--net", "tap=t0,mac=01:00:5e:00:00:01"}, "multicast"},
		{"net not key=value", []string{"run", "--kernel", good, "--net", "t0"}, "not key=value"},
		{"net name taken by another link", []string{"run", "--kernel", good, "--net", "tap=lo", "--kvm", filepath.Join(dir, "no-kvm")}, "not a TAP"},
		{"channel path is a file", []string{"run", "--kernel", good, "--channel", good, "--kvm", filepath.Join(dir, "no-kvm")}, "not a socket"},
		{"unknown command", []string{"fly"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runGVMM(t, tt.args...)
			if code == 0 {
				t.Fatalf("status 0, want non-zero; stderr %q", stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.want)
			}
			if n := strings.Count(strings.TrimRight(stderr, "\n"), "\n"); n != 0 {
				t.Errorf("stderr has %d lines, want one: %q", n+1, stderr)
			}
			if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
				t.Errorf("stderr shows a panic: %q", stderr)
			}
		})
	}
}

// Off a terminal, pass lines come at most once a second, but the
// switchover is always said.
func TestProgressPrinterSwitchover(t *testing.T) {
	var b bytes.Buffer
	p := newProgressPrinter(&b)
	p.update(api.Progress{Phase: "full", Pass: 0, PagesSent: 10, TotalPages: 10})
	p.update(api.Progress{Phase: "dirty", Pass: 1, PagesSent: 12})
	p.update(api.Progress{Phase: "switchover", Pass: 2})
	p.update(api.Progress{Phase: "done", Pass: 2})
	got := b.String()
	if !strings.Contains(got, "migrate: pass 0:") || strings.Contains(got, "pass 1:") ||
		!strings.Contains(got, "migrate: switchover: the VM is paused; its last pages went in pass 2") {
		t.Fatalf("progress output:\n%s", got)
	}
}
