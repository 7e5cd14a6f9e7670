package integration

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// migrationKey writes a fresh 32-byte pre-shared key file.
func migrationKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "migration.key")
	if err := os.WriteFile(path, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// freePort returns a loopback address nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// gvmmCmd runs a gvmm client command to completion and returns its
// output and exit status.
func gvmmCmd(t *testing.T, bin string, timeout time.Duration, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("gvmm %s did not finish within %v; output:\n%s", args[0], timeout, out.String())
	}
	t.Logf("gvmm %s:\n%s", strings.Join(args, " "), out.String())
	return out.String(), cmd.ProcessState.ExitCode()
}

// guestWorkload starts what the migration tests check on the far side: a
// 8 MiB file of random bytes in the guest's RAM (tmpfs) whose checksum is
// returned, a pattern written to the disk, and a counter the guest keeps
// incrementing in the background (so memory is dirtied during pre-copy).
func guestWorkload(t *testing.T, v *vm, off int) (sum string, _ int) {
	t.Helper()
	sum, off = v.ask(off, "dd if=/dev/urandom of=/tmp/blob bs=1M count=8 2>/dev/null; md5sum /tmp/blob | cut -d' ' -f1")
	if len(sum) != 32 {
		t.Fatalf("guest md5sum gave %q", sum)
	}
	if got, o := v.ask(off, "echo gvmm-migration-pattern | dd of=/dev/vda bs=512 seek=2048 conv=fsync 2>/dev/null; echo ok"); got != "ok" {
		t.Fatalf("guest disk write: %q", got)
	} else {
		off = o
	}
	// The counter is replaced by a rename, so a reader never sees it
	// truncated half way through a write.
	v.send("(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; done) &\n")
	time.Sleep(2 * time.Second)
	return sum, off
}

// checkWorkload checks on the destination that the guest's RAM file, its
// disk pattern and its counter all survived, and that the counter moves.
func checkWorkload(t *testing.T, v *vm, off int, sum string) int {
	t.Helper()
	got, off := v.ask(off, "echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 22")
	if got != "gvmm-migration-pattern" {
		t.Fatalf("disk pattern after migration: %q", got)
	}
	return checkRAMAndCounter(t, v, off, sum)
}

// checkRAMAndCounter checks the guest's RAM file and that its counter moves.
func checkRAMAndCounter(t *testing.T, v *vm, off int, sum string) int {
	t.Helper()
	got, off := v.ask(off, "md5sum /tmp/blob | cut -d' ' -f1")
	if got != sum {
		t.Fatalf("guest RAM file checksum %q after migration, %q before", got, sum)
	}
	c1, off := v.ask(off, "cat /tmp/counter")
	time.Sleep(time.Second)
	c2, off := v.ask(off, "cat /tmp/counter")
	var n1, n2 int
	fmt.Sscan(c1, &n1)
	fmt.Sscan(c2, &n2)
	if n1 <= 0 || n2 <= n1 {
		t.Fatalf("guest counter %q then %q: the guest's background work did not carry on", c1, c2)
	}
	return off
}

// handedOver checks a migration that must have succeeded: gvmm migrate
// exited 0 and printed each of wants, the source exited 0, and the
// destination's shell answers; it returns the destination's console offset.
func handedOver(t *testing.T, out string, code int, src, dst *vm, wants ...string) int {
	t.Helper()
	if code != 0 {
		t.Fatalf("gvmm migrate exited %d:\n%s\nsource stderr:\n%s\ndestination stderr:\n%s", code, out, src.errors(), dst.errors())
	}
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("gvmm migrate output lacks %q", want)
		}
	}
	if c := src.wait(exitTimeout); c != 0 {
		t.Fatalf("source gvmm exited %d after the handover, want 0; stderr:\n%s", c, src.errors())
	}
	dst.send("\n")
	_, off := dst.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
	return off
}

func diskImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestLiveMigration moves a running guest with a disk, a busy
// background loop and data in RAM to a gvmm receive on the same host. The
// source exits 0 after the handover; on the destination the RAM file's
// checksum, the disk pattern and the shell are intact and the loop goes on.
func TestLiveMigration(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	srcSock, dstSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock")
	key := migrationKey(t)
	img := diskImage(t)
	src, off := bootVirtio(t, env, "--api-socket", srcSock, "--disk", img)
	sum, _ := guestWorkload(t, src, off)

	addr := freePort(t)
	dst := startGvmm(t, env.bin, "receive", "--listen", addr, "--insecure-key", key, "--api-socket", dstSock, "--disk", img)
	waitListening(t, addr, dst)
	out, code := gvmmCmd(t, env.bin, 5*time.Minute, "migrate", "--api-socket", srcSock, "--to", addr, "--insecure-key", key)
	doff := handedOver(t, out, code, src, dst, "downtime", "passes", "pages sent")
	doff = checkWorkload(t, dst, doff, sum)
	if got, _ := dst.ask(doff, "nproc"); got != "1" {
		t.Fatalf("nproc on the destination: %q", got)
	}
	powerOff(t, dst)
}

// TestMigrationFailureKeepsSource: a migration to a host where nobody
// listens, and one to a receiver holding another key, both fail with a
// reason, and the source guest keeps running and answering.
func TestMigrationFailureKeepsSource(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	sock := filepath.Join(dir, "src.sock")
	key := migrationKey(t)
	src, off := bootVirtio(t, env, "--api-socket", sock)

	out, code := gvmmCmd(t, env.bin, time.Minute, "migrate", "--api-socket", sock, "--to", freePort(t), "--insecure-key", key)
	if code == 0 || !strings.Contains(out, "keeps running") {
		t.Fatalf("migration to nobody: exit %d, output %q", code, out)
	}
	if got, o := src.ask(off, "expr 6 \\* 7"); got != "42" {
		t.Fatalf("source guest after a failed migration answered %q", got)
	} else {
		off = o
	}

	addr := freePort(t)
	dst := startGvmm(t, env.bin, "receive", "--listen", addr, "--insecure-key", migrationKey(t))
	waitListening(t, addr, dst)
	out, code = gvmmCmd(t, env.bin, 5*time.Minute, "migrate", "--api-socket", sock, "--to", addr, "--insecure-key", key)
	if code == 0 {
		t.Fatalf("migration with the wrong key succeeded:\n%s", out)
	}
	if !strings.Contains(out, "destination closed the connection") || !strings.Contains(out, "different key") {
		t.Errorf("gvmm migrate to a receiver with another key does not point at the key: %s", out)
	}
	if c := dst.wait(exitTimeout); c == 0 {
		t.Fatalf("receiver with the wrong key exited 0; stderr:\n%s", dst.errors())
	}
	if !strings.Contains(dst.errors(), "authentication") {
		t.Errorf("receiver's error does not name the authentication failure: %s", dst.errors())
	}
	if got, _ := src.ask(off, "expr 6 \\* 7"); got != "42" {
		t.Fatalf("source guest after a refused migration answered %q", got)
	}
	powerOff(t, src)
}

// TestSnapshotRestore snapshots a running guest, stops it, and starts it
// again from the file: the shell, the RAM file, the disk pattern and the
// background loop all carry on.
func TestSnapshotRestore(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	snap := filepath.Join(dir, "vm.snap")
	img := diskImage(t)
	src, off := bootVirtio(t, env, "--api-socket", sock, "--disk", img)
	sum, _ := guestWorkload(t, src, off)
	out, code := gvmmCmd(t, env.bin, 2*time.Minute, "snapshot", "--api-socket", sock, "--to", snap)
	if code != 0 {
		t.Fatalf("gvmm snapshot exited %d: %s", code, out)
	}
	if out, code := gvmmCmd(t, env.bin, time.Minute, "snapshot", "--api-socket", sock, "--to", snap); code == 0 {
		t.Fatalf("a second snapshot over an existing file succeeded: %s", out)
	}
	// The source runs on after a snapshot; stop it hard, as a crash would.
	if got, _ := src.ask(off, "echo alive"); got != "alive" {
		t.Fatalf("guest after snapshot: %q", got)
	}
	src.cmd.Process.Kill()
	<-src.done

	t.Setenv("GVMM_LOG", "info") // the restored gvmm says how long reading took
	r := startVM(t, env.bin, "--restore", snap)
	r.send("\n")
	// Reading and checking the file takes a while under nested TCG.
	_, roff := r.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
	roff = checkWorkload(t, r, roff, sum)
	powerOff(t, r)
}
