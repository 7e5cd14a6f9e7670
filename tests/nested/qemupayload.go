package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Where the bench mode puts QEMU inside L1, to compare gvmm with it there.
const (
	l1QemuBin   = "/gvmm/qemu/qemu-system-x86_64"
	l1QemuLib   = "/gvmm/qemu/lib"   // its shared libraries (LD_LIBRARY_PATH)
	l1QemuData  = "/gvmm/qemu/share" // its firmware (-L)
	l1BootBench = "/gvmm/bin/bootbench"
	l1IOBench   = "/gvmm/bin/iobench"
	l1MigBench  = "/gvmm/bin/migbench"
)

// qemuFirmware are the files QEMU reads from its data folders to boot a
// Linux kernel with -kernel: qboot for -M microvm; SeaBIOS, the
// linuxboot option ROM and the kvmvapic ROM for -M pc (pvh and multiboot
// for kernels booted those ways). With -nodefaults and -vga none no VGA
// or network ROM is asked for.
var qemuFirmware = []string{
	"bios-microvm.bin", "bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin",
	"pvh.bin", "multiboot_dma.bin",
}

// qemuFirmwareDirs are Debian's QEMU firmware path (qemu-system-data,
// seabios, ipxe-qemu).
var qemuFirmwareDirs = []string{"/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"}

// sharedLib is one line of ldd's output that names a file.
type sharedLib struct {
	soname string // the name the binary asks for, e.g. libz.so.1
	path   string // where the loader found it
}

// parseLdd reads ldd's output: the libraries with their paths and the
// dynamic loader (whose path is the binary's PT_INTERP). A library that
// was not found is an error; the vDSO has no file and is left out.
func parseLdd(out string) (libs []sharedLib, loader string, err error) {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.Contains(line, "statically linked") {
			continue
		}
		// Drop the load address: "... (0x00007f...)".
		if i := strings.LastIndex(line, " (0x"); i >= 0 {
			line = line[:i]
		}
		name, path, arrow := strings.Cut(line, " => ")
		switch {
		case arrow && strings.TrimSpace(path) == "not found":
			return nil, "", fmt.Errorf("ldd: %s not found", name)
		case arrow && strings.HasPrefix(path, "/"):
			libs = append(libs, sharedLib{soname: name, path: path})
		case arrow:
			// "linux-vdso.so.1 => " on some ldd versions: no file.
		case strings.HasPrefix(name, "/"):
			loader = name
		}
	}
	if loader == "" {
		return nil, "", fmt.Errorf("ldd named no dynamic loader")
	}
	return libs, loader, nil
}

// qemuPayload is QEMU and what it needs to run in L1's bare initramfs.
type qemuPayload struct {
	bin      string      // host path of qemu-system-x86_64
	libs     []sharedLib // its shared libraries
	loader   string      // the dynamic loader, put at the same path in L1
	firmware []string    // host paths of the qemuFirmware files found
	missing  []string    // qemuFirmware files found in none of the folders
}

// findQemuPayload collects the host's QEMU, its libraries and firmware.
func findQemuPayload(ctx context.Context) (qemuPayload, error) {
	var q qemuPayload
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return q, fmt.Errorf("bench compares with QEMU: apt-get install qemu-system-x86 (listed in .ci/apt-packages): %w", err)
	}
	if q.bin, err = filepath.EvalSymlinks(bin); err != nil {
		return q, err
	}
	out, err := runOutput(ctx, time.Minute, "", "ldd", q.bin)
	if err != nil {
		return q, fmt.Errorf("ldd %s: %w", q.bin, err)
	}
	if q.libs, q.loader, err = parseLdd(out); err != nil {
		return q, fmt.Errorf("%s: %w", q.bin, err)
	}
	for _, name := range qemuFirmware {
		found := ""
		for _, d := range qemuFirmwareDirs {
			if _, err := os.Stat(filepath.Join(d, name)); err == nil {
				found = filepath.Join(d, name)
				break
			}
		}
		if found == "" {
			q.missing = append(q.missing, name)
			continue
		}
		q.firmware = append(q.firmware, found)
	}
	return q, nil
}

// add puts the payload into an L1 image: QEMU at l1QemuBin, its libraries
// under l1QemuLib by the names it asks for, the loader at its own path,
// the firmware under l1QemuData. Symbolic links are followed.
func (q qemuPayload) add(im *image) error {
	if err := im.hostFile(l1QemuBin, q.bin, 0o755); err != nil {
		return err
	}
	if err := im.hostFile(q.loader, q.loader, 0o755); err != nil {
		return err
	}
	for _, l := range q.libs {
		if err := im.hostFile(filepath.Join(l1QemuLib, l.soname), l.path, 0o755); err != nil {
			return err
		}
	}
	if err := im.Dir(l1QemuData, 0o755); err != nil {
		return err
	}
	for _, f := range q.firmware {
		if err := im.hostFile(filepath.Join(l1QemuData, filepath.Base(f)), f, 0o644); err != nil {
			return err
		}
	}
	return nil
}
