package net_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	stdnet "net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gvmm/gvmm/virtio"
	virtionet "github.com/gvmm/gvmm/virtio/net"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

// inNewNetns skips (or fails, with GVMM_REQUIRE_TUN=1) where TAPs cannot
// be made, and otherwise moves the test's goroutine, locked to its thread
// for good, into a fresh network namespace, so every link the test makes
// lives there and dies with it. Tests using it must not call t.Run or
// t.Parallel: subtests run on other threads.
func inNewNetns(t *testing.T) {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("GVMM_REQUIRE_TUN") == "1" {
		skip = t.Fatalf
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		skip("TAP tests need /dev/net/tun: %v", err)
	}
	if os.Geteuid() != 0 {
		skip("TAP tests need root (CAP_NET_ADMIN)")
	}
	// Never unlocked: the thread ends with the goroutine, and the
	// namespace with its last link.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		skip("TAP tests need a network namespace: unshare(CLONE_NEWNET): %v", err)
	}
}

func addLink(t *testing.T, l netlink.Link) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add %s %q: %v", l.Type(), l.Attrs().Name, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("delete %q: %v", l.Attrs().Name, err)
		}
	})
	got, err := netlink.LinkByName(l.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestOpenTAPCreates(t *testing.T) {
	inNewNetns(t)
	tap, err := virtionet.OpenTAP("gvmmtap0", virtionet.TAPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tap.Created() {
		t.Fatal("Created = false for a new TAP")
	}
	l, err := netlink.LinkByName("gvmmtap0")
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP || tt.Flags&netlink.TUNTAP_VNET_HDR == 0 {
		t.Fatalf("link %#v is not a vnet-hdr TAP", l)
	}
	if l.Attrs().Flags&stdnet.FlagUp == 0 {
		t.Fatal("TAP is not up")
	}
	if got := tap.Offloads() & (virtionet.FCsum | virtionet.FHostTSO4); got == 0 {
		t.Fatalf("offloads %#x lack host offloads", tap.Offloads())
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	var nf netlink.LinkNotFoundError
	if _, err := netlink.LinkByName("gvmmtap0"); !errors.As(err, &nf) {
		t.Fatalf("created TAP still there after Close: %v", err)
	}
}

func TestOpenTAPReusesExisting(t *testing.T) {
	inNewNetns(t)
	addLink(t, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "gvmmtap1"}, Mode: netlink.TUNTAP_MODE_TAP})
	tap, err := virtionet.OpenTAP("gvmmtap1", virtionet.TAPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tap.Created() {
		t.Fatal("Created = true for an existing TAP")
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("gvmmtap1"); err != nil {
		t.Fatalf("existing TAP gone after Close: %v", err)
	}
	// Reused twice in a row: Close released it.
	tap, err = virtionet.OpenTAP("gvmmtap1", virtionet.TAPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()
}

func TestOpenTAPRefuses(t *testing.T) {
	inNewNetns(t)
	addLink(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gvmmveth"}, PeerName: "gvmmpeer"})
	addLink(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gvmmbr"}})
	addLink(t, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "gvmmtun"}, Mode: netlink.TUNTAP_MODE_TUN})
	tests := []struct {
		name, tap, bridge, want string
	}{
		{"veth", "gvmmveth", "", `"gvmmveth" exists as a veth link, not a TAP`},
		{"bridge", "gvmmbr", "", `"gvmmbr" exists as a bridge link, not a TAP`},
		{"tun", "gvmmtun", "", `"gvmmtun" exists as a tun link, not a TAP`},
		{"name too long", "gvmm-name-too-long", "", "must be 1 to 15 bytes"},
		{"empty name", "", "", "must be 1 to 15 bytes"},
		{"bridge missing", "gvmmtap2", "nosuchbr", `bridge "nosuchbr" does not exist`},
		{"bridge is a veth", "gvmmtap2", "gvmmveth", `"gvmmveth" is a veth link, not a bridge`},
	}
	for _, tc := range tests {
		tap, err := virtionet.OpenTAP(tc.tap, virtionet.TAPOptions{Bridge: tc.bridge})
		if err == nil {
			tap.Close()
			t.Errorf("%s: OpenTAP succeeded", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q, want one line containing %q", tc.name, err, tc.want)
		}
	}
	var nf netlink.LinkNotFoundError
	if _, err := netlink.LinkByName("gvmmtap2"); !errors.As(err, &nf) {
		t.Fatalf("a refused OpenTAP left gvmmtap2 behind: %v", err)
	}
}

func TestOpenTAPNoPermission(t *testing.T) {
	inNewNetns(t)
	// Drop to nobody on this thread only (a raw setresuid, not the
	// all-threads syscall.Setresuid); the thread is never reused.
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
		t.Skipf("setresuid: %v", e)
	}
	_, err := virtionet.OpenTAP("gvmmtap3", virtionet.TAPOptions{})
	if err == nil || !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "no permission") {
		t.Fatalf("OpenTAP as nobody = %v, want a permission error", err)
	}
	if testing.Verbose() {
		t.Log(err)
	}
}

func TestOpenTAPBridge(t *testing.T) {
	inNewNetns(t)
	br := addLink(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gvmmbr0"}})
	addLink(t, &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "gvmmtap5"}, Mode: netlink.TUNTAP_MODE_TAP})
	for _, name := range []string{"gvmmtap4", "gvmmtap5"} { // created, reused
		tap, err := virtionet.OpenTAP(name, virtionet.TAPOptions{Bridge: "gvmmbr0"})
		if err != nil {
			t.Fatal(err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("%s: master index %d, want bridge's %d", name, l.Attrs().MasterIndex, br.Attrs().Index)
		}
		tap.Close()
	}
}

// TestTAPTraffic sends an ARP request from the guest through the device
// and the TAP to the kernel, and receives the kernel's reply into a guest
// buffer, with offloads negotiated: with a goroutine per queue.
func TestTAPTraffic(t *testing.T) { tapTraffic(t, "gvmmtap6", false) }

// TestTAPTrafficEventLoop is TestTAPTraffic with queue doorbells, so the
// device's event loop serves the TAP, with mergeable receive buffers.
func TestTAPTrafficEventLoop(t *testing.T) { tapTraffic(t, "gvmmtap7", true) }

func tapTraffic(t *testing.T, name string, doorbells bool) {
	inNewNetns(t)
	tap, err := virtionet.OpenTAP(name, virtionet.TAPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.9.0.1/24")
	if err := netlink.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	guestMAC, _ := stdnet.ParseMAC("52:54:00:00:00:02")
	dev, err := virtionet.New(tap, virtionet.Options{MAC: guestMAC})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	e := newEnv()
	const nbuf = 16
	var bufs []uint64
	for range nbuf {
		a := e.alloc(1526)
		bufs = append(bufs, a)
		e.rx.AddChain(virtiotest.Buf{Addr: a, Len: 1526, Write: true})
	}
	arp := make([]byte, 60)
	copy(arp[0:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(arp[6:], guestMAC)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	copy(arp[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1}) // Ethernet/IPv4, request
	copy(arp[22:], guestMAC)
	copy(arp[28:], []byte{10, 9, 0, 2})
	copy(arp[38:], []byte{10, 9, 0, 1})
	e.tx.AddChain(put(e, make([]byte, virtionet.HeaderLen)), put(e, arp))

	features := baseFeatures | virtio.FEventIdx | dev.Features()&virtionet.OffloadFeatures
	var h *virtiotest.Harness
	if doorbells {
		var bells []*virtio.Doorbell
		for range 2 {
			db, err := virtio.NewDoorbell()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() }) // after dev.Close and Reset
			bells = append(bells, db)
		}
		features |= virtionet.FMrgRxbuf
		if h, err = virtiotest.ActivateDoorbells(dev, e.mem, features, bells, e.rx, e.tx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(dev.Reset)
	} else {
		h = activate(t, dev, e, features)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := h.Failure(); err != nil {
			t.Fatal(err)
		}
		for _, u := range e.rx.TakeUsed() {
			p := e.mem.GuestRead(bufs[u.ID], uint64(u.Len))
			if u.Len < 12+42 || binary.LittleEndian.Uint16(p[10:]) != 1 {
				t.Fatalf("received %d bytes % x", u.Len, p)
			}
			f := p[12:]
			if binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 {
				if !bytes.Equal(f[0:6], guestMAC) || !bytes.Equal(f[28:32], []byte{10, 9, 0, 1}) {
					t.Fatalf("ARP reply % x", f)
				}
				if st := dev.Stats(); st.TxPackets != 1 || st.RxPackets == 0 {
					t.Fatalf("stats %+v", st)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ARP reply; stats %+v", dev.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
