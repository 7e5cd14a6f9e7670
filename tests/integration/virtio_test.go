package integration

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// modulesLine is what tests/guest/init prints after loading the virtio
// modules: "gvmm-guest: modules loaded", or "... modules failed: ...".
var modulesLine = regexp.MustCompile(`gvmm-guest: modules (loaded|failed: [^\r\n]*)`)

// bootVirtio boots the test guest with extra gvmm run arguments, waits
// for its shell and checks the virtio modules loaded; it returns the
// console offset after the prompt.
func bootVirtio(t *testing.T, env testEnv, extra ...string) (*vm, int) {
	t.Helper()
	args := append([]string{"--kernel", env.kernel, "--initrd", env.initrd,
		"--memory", "256M", "--cmdline", testCmdline}, extra...)
	start := time.Now()
	v := startVM(t, env.bin, args...)
	_, off := v.waitFor(regexp.MustCompile(regexp.QuoteMeta(userspaceUp)), 0, bootTimeout)
	m, off := v.waitFor(modulesLine, off, commandTimeout)
	if m[1] != "loaded" {
		t.Fatalf("guest: modules %s", m[1])
	}
	_, off = v.waitFor(regexp.MustCompile(`guest# `), off, commandTimeout)
	t.Logf("guest shell after %v", time.Since(start).Round(time.Millisecond))
	mods, off := v.ask(off, "cut -d' ' -f1 /proc/modules | tr '\\n' ' '")
	t.Logf("guest modules: %s", mods)
	for _, want := range []string{"virtio_pci", "virtio_blk", "virtio_rng"} {
		if !strings.Contains(" "+mods+" ", " "+want+" ") {
			t.Errorf("guest /proc/modules lacks %s", want)
		}
	}
	return v, off
}

// powerOff ends the guest and expects gvmm to exit with status 0.
func powerOff(t *testing.T, v *vm) {
	t.Helper()
	v.send("poweroff\n")
	if code := v.wait(exitTimeout); code != 0 {
		t.Fatalf("gvmm exited with %d after guest poweroff, want 0; stderr: %s", code, v.errors())
	}
}

// TestVirtioBlk attaches a writable raw image and a read-only one. The
// guest formats the first half of the writable disk as ext2 and writes a
// file there, writes a pattern with dd further on and reads it back past
// the page cache; it reads the read-only disk's contents (written by the
// host) and fails to write to it. After poweroff the host finds the
// guest's writes in the image file and the read-only image unchanged.
func TestVirtioBlk(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	const (
		diskSize = 32 << 20
		fsKiB    = 16 << 10 // ext2 on the first 16 MiB
		patBlock = 4096
		patSkip  = 6144 // the pattern at 24 MiB, in patBlock units
		patLen   = 64 << 10
		roSize   = 4 << 20
	)
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}
	// The read-only disk: a pattern no two 512-byte sectors share.
	roDisk := filepath.Join(dir, "ro.img")
	ro := make([]byte, roSize)
	for i := 0; i < len(ro); i += 8 {
		binary.LittleEndian.PutUint64(ro[i:], uint64(i)*0x9e3779b97f4a7c15)
	}
	if err := os.WriteFile(roDisk, ro, 0o644); err != nil {
		t.Fatal(err)
	}
	roSum := fmt.Sprintf("%x", md5.Sum(ro))

	nonce := fmt.Sprintf("%d", time.Now().UnixNano())
	line := "gvmm-virtio-blk-pattern-" + nonce + "\n"
	pattern := []byte(strings.Repeat(line, patLen/len(line)+1)[:patLen])
	patSum := fmt.Sprintf("%x", md5.Sum(pattern))
	fileText := "gvmm-virtio-blk-file-" + nonce

	v, off := bootVirtio(t, env, "--disk", disk, "--disk", roDisk+",readonly")
	ask := func(cmd string) string {
		t.Helper()
		var a string
		a, off = v.ask(off, cmd)
		return a
	}
	// Both disks, in --disk order, with their sizes (512-byte sectors).
	if got, want := ask("cat /sys/block/vda/size /sys/block/vdb/size | tr '\\n' ' '"), fmt.Sprintf("%d %d", diskSize/512, roSize/512); got != want {
		t.Fatalf("guest disk sizes %q, want %q", got, want)
	}
	if got := ask("cat /sys/block/vda/ro /sys/block/vdb/ro | tr '\\n' ' '"); got != "0 1" {
		t.Errorf("guest vda, vdb read-only flags %q, want \"0 1\"", got)
	}

	// ext2 (busybox mke2fs; the guest's ext4 module mounts it).
	if got := ask("gvmm-modules ext4 2>&1 && mke2fs -F /dev/vda " + fmt.Sprint(fsKiB) + " >/dev/null 2>&1 && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt && echo " + fileText + " >/mnt/hello.txt && umount /mnt && echo formatted"); got != "formatted" {
		t.Errorf("guest mke2fs, mount, write, umount: %q", got)
	} else if got := ask("mount -t ext2 -o ro /dev/vda /mnt && cat /mnt/hello.txt; umount /mnt"); got != fileText {
		t.Errorf("guest read back %q from ext2, want %q", got, fileText)
	}

	// The pattern with dd, then read back from the device, not the page cache.
	if got := ask(fmt.Sprintf("yes %s | dd of=/tmp/pat bs=%d count=%d iflag=fullblock 2>/dev/null && md5sum </tmp/pat | cut -d' ' -f1",
		strings.TrimSuffix(line, "\n"), patBlock, patLen/patBlock)); got != patSum {
		t.Fatalf("guest pattern md5 %q, host's %q: the shell builds another pattern", got, patSum)
	}
	if got := ask(fmt.Sprintf("dd if=/tmp/pat of=/dev/vda bs=%d seek=%d conv=fsync 2>/dev/null && sync && echo 3 >/proc/sys/vm/drop_caches && echo written", patBlock, patSkip)); got != "written" {
		t.Fatalf("guest dd to /dev/vda: %q", got)
	}
	if got := ask(fmt.Sprintf("dd if=/dev/vda bs=%d skip=%d count=%d 2>/dev/null | md5sum | cut -d' ' -f1", patBlock, patSkip, patLen/patBlock)); got != patSum {
		t.Errorf("guest read back md5 %q from /dev/vda, want %q", got, patSum)
	}

	// The read-only disk: the host's contents, and writes refused.
	if got := ask("md5sum </dev/vdb | cut -d' ' -f1"); got != roSum {
		t.Errorf("guest /dev/vdb md5 %q, host image %q", got, roSum)
	}
	if got := ask("dd if=/tmp/pat of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null && echo wrote || echo refused"); got != "refused" {
		t.Errorf("guest write to read-only /dev/vdb: %q, want refused", got)
	}
	if got := ask("echo x 2>/dev/null >/dev/vdb && echo wrote || echo refused"); got != "refused" {
		t.Errorf("guest echo to read-only /dev/vdb: %q, want refused", got)
	}
	powerOff(t, v)

	img, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != diskSize {
		t.Errorf("disk image is %d bytes, want %d", len(img), diskSize)
	}
	at := patSkip * patBlock
	if len(img) < at+patLen || !bytes.Equal(img[at:at+patLen], pattern) {
		if i := bytes.Index(img, []byte(line)); i >= 0 {
			t.Errorf("guest's pattern is at offset %d of the image, want %d", i, at)
		} else {
			t.Errorf("guest's pattern is not in the image")
		}
	}
	// ext2: the superblock magic 0xEF53 at 1024+56, and the file's text
	// in the file system's part of the disk.
	if len(img) < fsKiB<<10 || binary.LittleEndian.Uint16(img[1080:]) != 0xef53 {
		t.Errorf("no ext2 superblock at the start of the image")
	} else if !bytes.Contains(img[:fsKiB<<10], []byte(fileText+"\n")) {
		t.Errorf("the file's text is not in the image's ext2 part")
	}
	after, err := os.ReadFile(roDisk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, ro) {
		t.Errorf("the read-only image changed")
	}
}

// TestVirtioRNG reads entropy from the guest's /dev/hwrng, which the
// virtio-rng device (always attached) backs.
func TestVirtioRNG(t *testing.T) {
	env := requireKVM(t, true)
	v, off := bootVirtio(t, env)
	cur, off := v.ask(off, "cat /sys/class/misc/hw_random/rng_current")
	if !strings.HasPrefix(cur, "virtio_rng") {
		avail, _ := v.ask(off, "cat /sys/class/misc/hw_random/rng_available")
		t.Fatalf("guest rng_current = %q (available: %q), want virtio_rng.N", cur, avail)
	}
	hex := regexp.MustCompile(`^[0-9a-f]{128}$`)
	var reads []string
	for i := 0; i < 2; i++ {
		var got string
		got, off = v.ask(off, "dd if=/dev/hwrng bs=64 count=1 iflag=fullblock 2>/dev/null | od -An -tx1 | tr -d ' \\n'")
		if !hex.MatchString(got) {
			t.Fatalf("64 bytes from guest /dev/hwrng: %q, want 128 hex digits", got)
		}
		if strings.Count(got, got[:2]) == 64 {
			t.Errorf("64 bytes from guest /dev/hwrng are all 0x%s", got[:2])
		}
		reads = append(reads, got)
	}
	if reads[0] == reads[1] {
		t.Errorf("two reads of guest /dev/hwrng gave the same 64 bytes %s", reads[0])
	}
	powerOff(t, v)
}
