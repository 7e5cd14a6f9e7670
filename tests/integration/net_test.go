package integration

import (
	"crypto/md5"
	"encoding/hex"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestVirtioNet gives the guest a virtio-net device on a TAP that gvmm
// creates inside a network namespace this test makes for itself (so no
// traffic can leave it), then exchanges traffic with the guest: ping, and a
// 4 MiB TCP transfer from the guest whose MD5 both sides compare.
func TestVirtioNet(t *testing.T) {
	env := requireKVM(t, true)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		if os.Getenv("GVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("needs /dev/net/tun: %v", err)
		}
		t.Skipf("needs /dev/net/tun: %v", err)
	}
	// This goroutine's thread moves to a fresh network namespace and stays
	// locked to it; gvmm, forked from it, creates its TAP there, and the
	// test's sockets are made there. The thread is discarded at the end.
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

	const tap, hostIP, guestIP = "gvmmtap0", "10.0.2.1", "10.0.2.15"
	v, off := bootVirtio(t, env, "--net", "tap="+tap+",mac=52:54:00:12:34:56")
	link, err := netlink.LinkByName(tap)
	if err != nil {
		t.Fatalf("gvmm's TAP is not in the namespace: %v", err)
	}
	if link.Type() != "tuntap" || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("%s is %s, flags %v; want an up tuntap", tap, link.Type(), link.Attrs().Flags)
	}
	addr, _ := netlink.ParseAddr(hostIP + "/24")
	if err := netlink.AddrAdd(link, addr); err != nil {
		t.Fatalf("address the TAP: %v", err)
	}

	mac, off := v.ask(off, "cat /sys/class/net/eth0/address")
	if mac != "52:54:00:12:34:56" {
		t.Errorf("guest eth0 MAC %q", mac)
	}
	v.send("ip addr add " + guestIP + "/24 dev eth0 && ip link set eth0 up\n")
	ping, off := v.ask(off, "ping -c 3 -W 10 "+hostIP+" | grep 'packets received'")
	if !strings.Contains(ping, "3 packets received") {
		t.Fatalf("guest ping: %q", ping)
	}

	ln, err := net.Listen("tcp", hostIP+":5001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 4 << 20
	type result struct {
		sum string
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * commandTimeout))
		h := md5.New()
		n, err := io.CopyN(h, c, size)
		got <- result{hex.EncodeToString(h.Sum(nil)), n, err}
	}()
	sum, off := v.ask(off, "dd if=/dev/urandom of=/tmp/blob bs=1M count=4 2>/dev/null; md5sum /tmp/blob | cut -d' ' -f1")
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(sum) {
		t.Fatalf("guest md5sum: %q", sum)
	}
	start := time.Now()
	v.send("nc " + hostIP + " 5001 < /tmp/blob; echo NC-\"DONE\"\n")
	var r result
	select {
	case r = <-got:
	case <-time.After(2 * commandTimeout):
		t.Fatal("no TCP transfer from the guest")
	}
	if r.err != nil || r.n != size {
		t.Fatalf("received %d bytes: %v", r.n, r.err)
	}
	if r.sum != sum {
		t.Fatalf("MD5 on the host %s, in the guest %s", r.sum, sum)
	}
	t.Logf("4 MiB guest to host in %v", time.Since(start).Round(time.Millisecond))
	_, _ = v.waitFor(regexp.MustCompile(`NC-DONE`), off, commandTimeout)
	powerOff(t, v)
}
