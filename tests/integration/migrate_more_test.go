package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// privateBridge moves the calling goroutine's thread, locked for good, to
// a fresh network namespace (so nothing can leave it; gvmm processes this
// goroutine starts are born there) with lo up and a bridge br0 at
// 10.0.2.1/24 that gvmm attaches its TAPs to: the source's and the
// destination's TAPs on one link, as two hosts' TAPs on one LAN.
func privateBridge(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Fatalf("needs /dev/net/tun: %v", err)
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare network namespace: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bring lo up: %v", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge: %v", err)
	}
	addr, _ := netlink.ParseAddr("10.0.2.1/24")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatalf("address the bridge: %v", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatalf("bring the bridge up: %v", err)
	}
}

// waitListening waits until the receiving gvmm listens on addr, looking at
// /proc/thread-self/net/tcp rather than connecting (a probe connection is
// one the receiver has to drop). It reads the calling thread's network
// namespace: /proc/net/tcp is the main thread's, and a test that locked
// its goroutine to the main thread and moved it to a namespace of its own
// leaves the main thread there for good.
func waitListening(t *testing.T, addr string, v *vm) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-v.done:
			t.Fatalf("gvmm receive exited early (%v): %s", v.err, v.errors())
		default:
		}
		b, _ := os.ReadFile("/proc/thread-self/net/tcp")
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("gvmm receive did not listen on %s", addr)
}

var (
	migratedLine = regexp.MustCompile(`migrated: total ([\d.]+) ms, downtime ([\d.]+) ms`)
	throttleLine = regexp.MustCompile(`throttle up to (\d+)%`)
	hbLine       = regexp.MustCompile(`gvmm-hb (\d+) (\d+) (\d+)\r?\n`)
)

// heartbeats are the guest agent's heartbeat lines (agent heartbeat) on
// some consoles, by sequence number: [guest monotonic ms, realtime ms].
func heartbeats(consoles ...string) map[int][2]int64 {
	hb := map[int][2]int64{}
	for _, c := range consoles {
		for _, m := range hbLine.FindAllStringSubmatch(c, -1) {
			seq, _ := strconv.Atoi(m[1])
			mono, _ := strconv.ParseInt(m[2], 10, 64)
			real, _ := strconv.ParseInt(m[3], 10, 64)
			hb[seq] = [2]int64{mono, real}
		}
	}
	return hb
}

// checkGuestClock checks the guest's clocks across a migration whose
// downtime the VMM reported: between any two consecutive heartbeats the
// monotonic clock moved forward by no more than the downtime plus margin,
// the wall clock moved with it, and beats were seen on both sides.
func checkGuestClock(t *testing.T, downtimeMs float64, margin time.Duration, src, dst string) {
	t.Helper()
	before, after := heartbeats(src), heartbeats(dst)
	if len(before) < 5 || len(after) < 5 {
		t.Fatalf("heartbeats: %d on the source, %d on the destination; want some on both", len(before), len(after))
	}
	all := heartbeats(src, dst)
	var worst, pairs int64
	for seq, a := range all {
		b, ok := all[seq+1]
		if !ok {
			continue
		}
		pairs++
		dm, dr := b[0]-a[0], b[1]-a[1]
		if dm < 0 {
			t.Errorf("guest monotonic clock went back %d ms between heartbeats %d and %d", -dm, seq, seq+1)
		}
		if d := dr - dm; d > 100 || d < -100 {
			t.Errorf("guest wall clock moved %d ms while its monotonic clock moved %d ms (heartbeats %d, %d)", dr, dm, seq, seq+1)
		}
		worst = max(worst, dm)
	}
	limit := int64(downtimeMs) + margin.Milliseconds()
	t.Logf("guest clock: longest step between %d heartbeat pairs %d ms; reported downtime %.1f ms; limit %d ms", pairs, worst, downtimeMs, limit)
	if worst > limit {
		t.Errorf("guest clock jumped %d ms between two heartbeats, more than the downtime %.1f ms plus %v", worst, downtimeMs, margin)
	}
}

// TestLiveMigrationSMPNet migrates a 2-vCPU guest with a disk and a
// virtio-net device on a bridge, holding an open TCP connection to the
// host and a heartbeat: afterwards the connection carries data both ways
// without a reconnect, both vCPUs are there, the RAM file, disk pattern
// and background loop check out, and the guest's clock did not jump more
// than the downtime plus a margin.
func TestLiveMigrationSMPNet(t *testing.T) {
	env := requireKVM(t, true)
	privateBridge(t)
	dir := t.TempDir()
	// Any temporary file either side made would land here.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	srcSock, dstSock := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock")
	key := migrationKey(t)
	img := diskImage(t)
	const mac = "52:54:00:12:34:57"
	src, off := bootVirtio(t, env, "--cpus", "2", "--api-socket", srcSock, "--disk", img,
		"--net", "tap=msrc0,bridge=br0,mac="+mac)
	if got, o := src.ask(off, "nproc"); got != "2" {
		t.Fatalf("nproc on the source: %q", got)
	} else {
		off = o
	}
	src.send("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up\n")
	if got, o := src.ask(off, "ping -c 2 -W 10 10.0.2.1 | grep -c 'bytes from'"); got != "2" {
		t.Fatalf("guest ping before migration: %q", got)
	} else {
		off = o
	}
	ln, err := net.Listen("tcp", "10.0.2.1:5002")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	src.send("agent tcpecho 10.0.2.1:5002 &\n")
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(commandTimeout))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("no connection from the guest: %v", err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	echo := func(what string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(commandTimeout))
		if _, err := fmt.Fprintf(conn, "%s\n", what); err != nil {
			t.Fatalf("TCP to the guest (%s): %v", what, err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != "echo "+what+"\n" {
			t.Fatalf("TCP answer to %q: %q, %v", what, got, err)
		}
	}
	echo("before migration")
	src.send("agent heartbeat 50 &\n")
	sum, _ := guestWorkload(t, src, off)

	addr := "127.0.0.1:7411"
	dst := startGvmm(t, env.bin, "receive", "--listen", addr, "--insecure-key", key, "--api-socket", dstSock,
		"--disk", img, "--net", "tap=mdst0,bridge=br0,mac="+mac)
	waitListening(t, addr, dst)
	out, code := gvmmCmd(t, env.bin, 5*time.Minute, "migrate", "--api-socket", srcSock, "--to", addr, "--insecure-key", key)
	if code != 0 {
		t.Fatalf("gvmm migrate exited %d:\n%s\nsource stderr:\n%s\ndestination stderr:\n%s", code, out, src.errors(), dst.errors())
	}
	m := migratedLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("gvmm migrate printed no figures:\n%s", out)
	}
	downtime, _ := strconv.ParseFloat(m[2], 64)
	checkNoFiles(t, dst.cmd.Process.Pid, tmp, img)
	if c := src.wait(exitTimeout); c != 0 {
		t.Fatalf("source gvmm exited %d after the handover, want 0; stderr:\n%s", c, src.errors())
	}
	echo("after migration") // the same connection, no reconnect
	dst.send("\n")
	_, doff := dst.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
	doff = checkWorkload(t, dst, doff, sum)
	if got, o := dst.ask(doff, "nproc"); got != "2" {
		t.Fatalf("nproc on the destination: %q", got)
	} else {
		doff = o
	}
	echo("still there")
	// Under nested emulation a heartbeat can be late for reasons of its
	// own; two seconds of margin still catches a clock that jumps by the
	// time the guest spent paused or by the wall-clock time since boot.
	checkGuestClock(t, downtime, 2*time.Second, src.console(), dst.console())
	powerOff(t, dst)
}

// checkNoFiles checks that a migration left no guest memory on disk on
// the destination (pid): its TMPDIR (tmp) is empty and the only regular
// files it holds open on a file system are allowed (the disk image).
func checkNoFiles(t *testing.T, pid int, tmp string, allowed ...string) {
	t.Helper()
	if ents, err := os.ReadDir(tmp); err != nil || len(ents) > 0 {
		t.Errorf("TMPDIR after the migration: %d entries, %v; want none", len(ents), err)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("destination's open files: %v", err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "/dev/") {
			continue // sockets, pipes, anon inodes, devices
		}
		ok := false
		for _, a := range allowed {
			ok = ok || target == a
		}
		if !ok {
			t.Errorf("destination holds %s open (fd %s): guest memory may be on disk", target, fd.Name())
		}
	}
}

// rssKiB is the resident set of process pid, in KiB (0 if unreadable).
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// syncBuf is an output buffer that can be read while a process writes it.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// migrateAsync starts gvmm migrate; out shows its output so far, and done
// gets its whole output and exit status.
func migrateAsync(t *testing.T, bin string, args ...string) (out *syncBuf, done <-chan [2]string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"migrate"}, args...)...)
	out = &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan [2]string, 1)
	go func() {
		cmd.Wait()
		ch <- [2]string{out.String(), strconv.Itoa(cmd.ProcessState.ExitCode())}
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	return out, ch
}

// beatsSince counts the heartbeat lines on v's console after offset from.
func beatsSince(v *vm, from int) int {
	c := v.console()
	return strings.Count(c[min(from, len(c)):], "gvmm-hb ")
}

// sourceAlive checks that the source guest answers and that its heartbeat
// moves on.
func sourceAlive(t *testing.T, v *vm, off int, when string) int {
	t.Helper()
	got, off := v.ask(off, "expr 6 \\* 7")
	if got != "42" {
		t.Fatalf("source guest %s answered %q", when, got)
	}
	deadline := time.Now().Add(commandTimeout)
	for beatsSince(v, off) < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("source guest's heartbeat stopped %s", when)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return off
}

// TestMigrationFaults runs, on one source guest that dirties its memory
// fast and keeps a heartbeat, the migrations that must fail or must
// struggle, in turn:
//
//   - a guest dirtying faster than the link allows for a 1 ms downtime
//     budget, with a 30 s timeout: it either converges through
//     auto-converge throttling (and then the destination carries on, and
//     the rest runs from there), or is cancelled at the timeout with the
//     source still running; the test says which;
//   - the destination killed (SIGKILL) mid-pre-copy, once pages arrive;
//   - the destination killed mid-switchover, once the source guest is
//     paused (its heartbeat stops) for the final pass.
//
// Each failure leaves the source guest running, answering and beating,
// with a message that says the source keeps the VM.
func TestMigrationFaults(t *testing.T) {
	env := requireKVM(t, true)
	dir := t.TempDir()
	key := migrationKey(t)
	sock := filepath.Join(dir, "src.sock")
	src, off := bootVirtio(t, env, "--api-socket", sock)
	src.send("agent heartbeat 10 &\n")
	src.send("agent dirty 48 0 >/dev/null &\n")
	time.Sleep(3 * time.Second)
	off = sourceAlive(t, src, off, "before migrating")

	receiver := func(name string, extra ...string) (*vm, string) {
		addr := freePort(t)
		args := append([]string{"receive", "--listen", addr, "--insecure-key", key, "--api-socket", filepath.Join(dir, name+".sock")}, extra...)
		v := startGvmm(t, env.bin, args...)
		waitListening(t, addr, v)
		return v, addr
	}

	t.Run("faster-than-link", func(t *testing.T) {
		dst, addr := receiver("fast")
		out, code := gvmmCmd(t, env.bin, 3*time.Minute, "migrate", "--api-socket", sock, "--to", addr, "--insecure-key", key,
			"--downtime", "1", "--timeout", "30")
		if code == 0 {
			m := throttleLine.FindStringSubmatch(out)
			if m == nil || m[1] == "0" {
				t.Fatalf("migration converged without throttling a guest dirtying at full speed:\n%s", out)
			}
			t.Logf("outcome: converged through auto-converge (throttle up to %s%%)", m[1])
			if c := src.wait(exitTimeout); c != 0 {
				t.Fatalf("source gvmm exited %d after the handover", c)
			}
			// The rest of the test runs on the destination.
			src, sock = dst, filepath.Join(dir, "fast.sock")
			src.send("\n")
			_, off = src.waitFor(regexp.MustCompile(`guest# `), 0, bootTimeout)
			off = sourceAlive(t, src, off, "after converging")
			return
		}
		if !regexp.MustCompile(`timed out|does not converge`).MatchString(out) || !strings.Contains(out, "keeps running") {
			t.Fatalf("migrate exited %d without a timeout (or no-convergence) and keeps-running message:\n%s", code, out)
		}
		t.Logf("outcome: cancelled (timeout or no convergence), source kept the VM")
		if c := dst.wait(exitTimeout); c == 0 {
			t.Fatalf("receiver of a cancelled migration exited 0")
		}
		off = sourceAlive(t, src, off, "after a timed-out migration")
	})

	t.Run("dst-killed-mid-precopy", func(t *testing.T) {
		dst, addr := receiver("precopy")
		base := rssKiB(dst.cmd.Process.Pid)
		_, done := migrateAsync(t, env.bin, "--api-socket", sock, "--to", addr, "--insecure-key", key,
			"--downtime", "1", "--timeout", "300")
		deadline := time.Now().Add(2 * time.Minute)
		for rssKiB(dst.cmd.Process.Pid) < base+24<<10 {
			select {
			case r := <-done:
				t.Fatalf("migration ended (%s) before pages arrived:\n%s", r[1], r[0])
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("no pages arrived at the receiver within 2 minutes")
			}
			time.Sleep(20 * time.Millisecond)
		}
		dst.cmd.Process.Signal(syscall.SIGKILL)
		var r [2]string
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("gvmm migrate did not end after its destination was killed")
		}
		t.Logf("gvmm migrate after the kill (exit %s):\n%s", r[1], r[0])
		if r[1] == "0" || !strings.Contains(r[0], "keeps running") || !strings.Contains(r[0], "destination closed the connection") {
			t.Fatalf("migrate exited %s without the destination-closed and keeps-running messages", r[1])
		}
		off = sourceAlive(t, src, off, "after its destination died mid-pre-copy")
	})

	t.Run("dst-killed-mid-switchover", func(t *testing.T) {
		// A budget of 20 s: soon after the full pass the source pauses
		// and sends what the dirtier dirtied meanwhile (tens of MiB, over
		// a second here) in one final pass. gvmm migrate says
		// "switchover" once that pass is queued, before it is on the
		// wire and before the state is saved: the kill follows that line.
		dst, addr := receiver("switch")
		out, done := migrateAsync(t, env.bin, "--api-socket", sock, "--to", addr, "--insecure-key", key,
			"--downtime", "20000", "--timeout", "300")
		deadline := time.Now().Add(3 * time.Minute)
		for !strings.Contains(out.String(), "switchover:") {
			select {
			case r := <-done:
				t.Fatalf("migration ended (exit %s) before its switchover was reported:\n%s", r[1], r[0])
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatal("no switchover within 3 minutes")
			}
		}
		dst.cmd.Process.Signal(syscall.SIGKILL)
		var r [2]string
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("gvmm migrate did not end after its destination was killed")
		}
		t.Logf("gvmm migrate after the kill (exit %s):\n%s", r[1], r[0])
		if r[1] == "0" {
			t.Fatalf("migration succeeded although its destination was killed at the switchover: the kill came too late")
		}
		if !strings.Contains(r[0], "keeps running") || !strings.Contains(r[0], "destination closed the connection") {
			t.Fatalf("migrate exited %s without the destination-closed and keeps-running messages", r[1])
		}
		if !regexp.MustCompile(`final pass|save state|send state|manifest|await ack|finish`).MatchString(r[0]) {
			t.Fatalf("the kill did not land in the switchover")
		}
		off = sourceAlive(t, src, off, "after its destination died mid-switchover")
	})
	powerOff(t, src)
}
