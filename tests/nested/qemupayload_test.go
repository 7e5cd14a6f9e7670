package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseLdd(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		libs      []sharedLib
		loader    string
		err       string // substring; "" for none
	}{
		{
			name: "debian qemu",
			out: "\tlinux-vdso.so.1 (0x00007ffd1d9f1000)\n" +
				"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f8f40dc5000)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8f3e7ef000)\n" +
				"\t/lib64/ld-linux-x86-64.so.2 (0x00007f8f40df7000)\n",
			libs: []sharedLib{
				{"libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"},
				{"libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"},
			},
			loader: "/lib64/ld-linux-x86-64.so.2",
		},
		{
			name:   "vdso with an empty arrow",
			out:    "\tlinux-vdso.so.1 =>  (0x00007ffd1d9f1000)\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n",
			loader: "/lib64/ld-linux-x86-64.so.2",
		},
		{
			name: "missing library",
			out:  "\tlibfoo.so.1 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n",
			err:  "libfoo.so.1 not found",
		},
		{
			name: "static",
			out:  "\tstatically linked\n",
			err:  "no dynamic loader",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			libs, loader, err := parseLdd(tc.out)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(libs, tc.libs) || loader != tc.loader {
				t.Errorf("got %q, %q; want %q, %q", libs, loader, tc.libs, tc.loader)
			}
		})
	}
}

func TestQemuPayloadAdd(t *testing.T) {
	dir := t.TempDir()
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	real := write("libz.so.1.2.13")
	link := filepath.Join(dir, "libz.so.1")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	q := qemuPayload{
		bin:      write("qemu"),
		loader:   write("ld.so"),
		libs:     []sharedLib{{"libz.so.1", link}},
		firmware: []string{write("bios-256k.bin")},
	}
	path := filepath.Join(dir, "out.cpio")
	im, err := createImage(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := im.close(q.add(im)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range readNewc(t, b) {
		got[e.name] = e.data
	}
	for name, data := range map[string]string{
		"gvmm/qemu/qemu-system-x86_64":    "qemu",
		"gvmm/qemu/lib/libz.so.1":         "libz.so.1.2.13", // the link's target, under the link's name
		"gvmm/qemu/share/bios-256k.bin":   "bios-256k.bin",
		strings.TrimPrefix(q.loader, "/"): "ld.so",
	} {
		if got[name] != data {
			t.Errorf("%s: %q, want %q", name, got[name], data)
		}
	}
}
