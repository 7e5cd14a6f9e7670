package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeModule writes a minimal relocatable ELF file with a .modinfo section
// holding info (key=value strings, NUL-separated as the kernel does).
func fakeModule(t *testing.T, path string, info ...string) {
	t.Helper()
	modinfo := []byte(strings.Join(info, "\x00") + "\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	shoff := ehsize + len(modinfo) + len(shstrtab)
	shoff += (8 - shoff%8) % 8
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: uint64(shoff), Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(modinfo)
	b.Write(shstrtab)
	b.Write(make([]byte, shoff-b.Len()))
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: ehsize, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: uint64(ehsize + len(modinfo)), Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, sh)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeKernel lays out modules (file under kernel/ -> depends=) with the
// name the file name gives, and returns the package.
func fakeKernel(t *testing.T, mods map[string]string) debPackages {
	t.Helper()
	d := debPackages{kernel: t.TempDir(), kver: "6.1.0-1-amd64"}
	for rel, deps := range mods {
		fakeModule(t, d.module(rel), "license=GPL", "depends="+deps, "alias=x", "name="+modName(rel), "vermagic=6.1")
	}
	return d
}

func TestModinfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.ko")
	fakeModule(t, p, "license=GPL", "depends=a,b", "name=m", "parm=x:int")
	info, err := modinfo(p)
	if err != nil {
		t.Fatal(err)
	}
	if info["depends"] != "a,b" || info["name"] != "m" || info["parm"] != "x:int" {
		t.Fatalf("modinfo = %q", info)
	}
	if err := os.WriteFile(p, []byte("not ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := modinfo(p); err == nil {
		t.Fatal("modinfo of a non-ELF file: no error")
	}
}

func TestResolveModules(t *testing.T) {
	d := fakeKernel(t, map[string]string{
		"drivers/virtio/virtio_ring.ko":           "",
		"drivers/virtio/virtio.ko":                "virtio_ring",
		"drivers/virtio/virtio_pci.ko":            "virtio_ring,virtio_pci_modern_dev,virtio",
		"drivers/virtio/virtio_pci_modern_dev.ko": "",
		"drivers/char/hw_random/virtio-rng.ko":    "virtio,virtio_ring",
		"fs/ext4/ext4.ko":                         "jbd2,virtio_ring",
		"fs/jbd2/jbd2.ko":                         "",
		"cycle/a.ko":                              "b",
		"cycle/b.ko":                              "a",
		"broken/needs-missing.ko":                 "missing",
	})
	idx, err := moduleIndex(d)
	if err != nil {
		t.Fatal(err)
	}
	names := func(ms []kmod) []string {
		var n []string
		for _, m := range ms {
			n = append(n, m.name)
		}
		return n
	}
	got, err := resolveModules(idx, []string{"virtio_pci", "virtio_rng"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio_pci_modern_dev", "virtio", "virtio_pci", "virtio_rng"}
	if !slices.Equal(names(got), want) {
		t.Errorf("order %q, want %q", names(got), want)
	}
	if got[4].path != d.module("drivers/char/hw_random/virtio-rng.ko") {
		t.Errorf("virtio_rng from %s", got[4].path)
	}
	// What an earlier group loads is left out.
	got, err = resolveModules(idx, []string{"ext4"}, map[string]bool{"virtio_ring": true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"jbd2", "ext4"}; !slices.Equal(names(got), want) {
		t.Errorf("order %q, want %q", names(got), want)
	}
	for _, tt := range []struct{ root, want string }{
		{"a", "cycle: a -> b -> a"},
		{"needs_missing", "missing (needs_missing -> missing) is not in the kernel package"},
		{"nosuch", "nosuch (nosuch) is not"},
	} {
		if _, err := resolveModules(idx, []string{tt.root}, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("resolve %s: %v, want an error with %q", tt.root, err, tt.want)
		}
	}

	// A module whose .modinfo name disagrees with its file name.
	fakeModule(t, d.module("odd/odd.ko"), "depends=", "name=even")
	idx["odd"] = d.module("odd/odd.ko")
	if _, err := resolveModules(idx, []string{"odd"}, nil); err == nil || !strings.Contains(err.Error(), "name=even") {
		t.Errorf("resolve odd: %v", err)
	}
}

func TestGuestModules(t *testing.T) {
	d := fakeKernel(t, map[string]string{
		"drivers/virtio/virtio_ring.ko":        "",
		"drivers/virtio/virtio.ko":             "virtio_ring",
		"drivers/block/virtio_blk.ko":          "virtio,virtio_ring",
		"drivers/char/hw_random/virtio-rng.ko": "virtio,virtio_ring",
		"fs/ext4/ext4.ko":                      "jbd2",
		"fs/jbd2/jbd2.ko":                      "",
	})
	out := filepath.Join(t.TempDir(), "g.cpio")
	im, err := createImage(out, false)
	if err != nil {
		t.Fatal(err)
	}
	orders, err := im.guestModules(d, []guestModuleGroup{
		{"boot", []string{"virtio_blk", "virtio_rng"}},
		{"fs", []string{"ext4", "virtio_blk"}},
	})
	if err := im.close(err); err != nil {
		t.Fatal(err)
	}
	wantBoot := []string{"virtio_ring", "virtio", "virtio_blk", "virtio_rng"}
	if !slices.Equal(orders["boot"], wantBoot) || !slices.Equal(orders["fs"], []string{"jbd2", "ext4"}) {
		t.Fatalf("orders %q", orders)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]newcEntry{}
	for _, e := range readNewc(t, b) {
		got[e.name] = e
	}
	if e := got["lib/modules/gvmm/boot.order"]; e.data != strings.Join(wantBoot, "\n")+"\n" {
		t.Errorf("boot.order %q", e.data)
	}
	if e := got["lib/modules/gvmm/fs.order"]; e.data != "jbd2\next4\n" {
		t.Errorf("fs.order %q", e.data)
	}
	src, _ := os.ReadFile(d.module("drivers/char/hw_random/virtio-rng.ko"))
	if e, ok := got["lib/modules/gvmm/virtio_rng.ko"]; !ok || e.data != string(src) {
		t.Errorf("virtio_rng.ko missing or not the package's file")
	}
}

// TestGuestModuleScripts has the host's sh parse the guest scripts that
// load the modules.
func TestGuestModuleScripts(t *testing.T) {
	for _, f := range []string{"init", "modules"} {
		b, err := os.ReadFile(filepath.Join("..", "guest", f))
		if err != nil {
			t.Fatal(err)
		}
		checkShell(t, string(b))
	}
}
