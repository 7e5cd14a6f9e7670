package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeDeb lays out the files buildL1 takes from the packages.
func fakeDeb(t *testing.T) debPackages {
	t.Helper()
	root := t.TempDir()
	d := debPackages{kernel: filepath.Join(root, "k"), kver: "6.1.0-1-amd64", busybox: filepath.Join(root, "bb")}
	files := []string{d.vmlinuz(), d.busyboxBin()}
	for _, m := range l1Modules {
		files = append(files, d.module(m))
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(filepath.Base(f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestBuildL1(t *testing.T) {
	d := fakeDeb(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	guest := guestImage{kernel: d.vmlinuz(), initrd: write("guest.cpio.gz", "guest")}
	testdata := filepath.Dir(write("src/testdata/sub/x.txt", "x"))
	pl := l1Plan{
		mode:        "test",
		testTimeout: 5 * time.Minute,
		heartbeat:   20,
		tests: []testPkg{
			{pkg: "./kvm", name: "01-kvm", bin: write("01-kvm.test", "bin1")},
			{pkg: "./odd dir", name: "02-odd_dir", bin: write("02.test", "bin2"), testdata: filepath.Dir(testdata)},
		},
	}
	out := filepath.Join(dir, "l1.cpio")
	if err := buildL1(d, []string{"bin/sh", "sbin/insmod", "bin/busybox"}, write("gvmm", "gvmm"), guest, pl, out, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]newcEntry{}
	var modules []string
	for _, e := range readNewc(t, b) {
		got[e.name] = e
		if strings.HasPrefix(e.name, "gvmm/modules/") {
			modules = append(modules, strings.TrimPrefix(e.name, "gvmm/modules/"))
		}
	}
	for name, data := range map[string]string{
		"init":                                  string(l1Init),
		"bin/sh":                                "/bin/busybox",
		"bin/busybox":                           "busybox",
		"gvmm/bin/gvmm":                         "gvmm",
		"gvmm/guest/vmlinuz":                    "vmlinuz-6.1.0-1-amd64",
		"gvmm/guest/initrd.cpio.gz":             "guest",
		"gvmm/tests/01-kvm/01-kvm.test":         "bin1",
		"gvmm/tests/02-odd_dir/02-odd_dir.test": "bin2",
		"gvmm/tests/02-odd_dir/testdata/sub/x.txt": "x",
		"gvmm/tests.list":                          "01-kvm ./kvm\n02-odd_dir ./odd dir\n",
	} {
		e, ok := got[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if e.data != data {
			t.Errorf("%s: %q, want %q", name, e.data, data)
		}
	}
	for _, name := range []string{"dev/console", "dev/null", "tmp", "gvmm/tests/01-kvm", "proc", "sys"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	if want := []string{"irqbypass.ko", "ccp.ko", "kvm.ko", "kvm-amd.ko", "tun.ko", "llc.ko", "stp.ko", "bridge.ko", "veth.ko"}; !slices.Equal(modules, want) {
		t.Errorf("modules in order %q, want %q", modules, want)
	}
	if got["tmp"].mode != 0o041777 {
		t.Errorf("tmp mode %o", got["tmp"].mode)
	}
	checkShell(t, got["gvmm/plan.sh"].data)
	checkShell(t, string(l1Init))
}

// checkShell has the host's sh parse a script without running it.
func checkShell(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command("sh", "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s\n%s", err, out, script)
	}
}

func TestPlanScript(t *testing.T) {
	args := []string{"/gvmm/bin/gvmm", "run", "--cmdline", "console=ttyS0 it's \"quoted\" $HOME `x` \\n"}
	// A demo command of printf shows the arguments the shell passes on.
	pl := l1Plan{mode: "demo", demoArgs: append([]string{"printf", "%s\n"}, args...)}
	out, err := exec.Command("sh", "-c", pl.script()+"\ngvmm_demo\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); !slices.Equal(got, args) {
		t.Fatalf("arguments after the shell: %q, want %q", got, args)
	}
	checkShell(t, l1Plan{mode: "test"}.script()) // an empty gvmm_demo body is a syntax error

	pl = l1Plan{mode: "bench", benchArgs: append([]string{"printf", "%s\n"}, args...)}
	out, err = exec.Command("sh", "-c", pl.script()+"\ngvmm_bench\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n"); !slices.Equal(got, args) {
		t.Fatalf("bench arguments after the shell: %q, want %q", got, args)
	}
}

func TestSplitKVMParams(t *testing.T) {
	tests := []struct {
		in       string
		kvm, amd []string
		bad      bool
	}{
		{"", nil, nil, false},
		{"kvm.tdp_mmu=0", []string{"tdp_mmu=0"}, nil, false},
		{" kvm_amd.vgif=0  kvm.eager_page_split=N ", []string{"eager_page_split=N"}, []string{"vgif=0"}, false},
		{"tdp_mmu=0", nil, nil, true},
		{"kvm.tdp_mmu", nil, nil, true},
		{"kvm.=1", nil, nil, true},
		{"kvm_intel.ept=0", nil, nil, true},
		{"kvm.x=$(reboot)", nil, nil, true},
		{"kvm.x='", nil, nil, true},
	}
	for _, tt := range tests {
		kvm, amd, err := splitKVMParams(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("splitKVMParams(%q) = %q, %q; want an error", tt.in, kvm, amd)
			}
			continue
		}
		if err != nil || !slices.Equal(kvm, tt.kvm) || !slices.Equal(amd, tt.amd) {
			t.Errorf("splitKVMParams(%q) = %q, %q, %v; want %q, %q", tt.in, kvm, amd, err, tt.kvm, tt.amd)
		}
	}
	pl := l1Plan{mode: "test", kvmArgs: []string{"tdp_mmu=0"}, kvmAMDArgs: []string{"vgif=0", "npt=1"}}
	out, err := exec.Command("sh", "-c", pl.script()+"\nprintf '%s\\n' $GVMM_KVM_ARGS $GVMM_KVM_AMD_ARGS\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(out)), []string{"tdp_mmu=0", "vgif=0", "npt=1"}; !slices.Equal(got, want) {
		t.Errorf("insmod arguments after the shell: %q, want %q", got, want)
	}
}
