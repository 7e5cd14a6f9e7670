package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lan is a small network of hosts for the multi-host tests: each host is a
// network namespace with one interface (eth0, 10.77.0.N/24) on a bridge
// that lives in a namespace of its own, so nothing the tests do touches the
// namespace the test binary started in (the host's, when /dev/kvm is real).
type lan struct {
	t      *testing.T
	bridge netns.NsHandle
	hosts  []*nsHost
}

// nsHost is one host of a lan.
type nsHost struct {
	Name string
	IP   string
	ns   netns.NsHandle
}

// inNewNS runs f on a thread in a fresh network namespace and returns a
// handle to that namespace. The thread is never unlocked, so Go discards it
// instead of reusing it elsewhere.
func inNewNS(f func() error) (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		if err == nil {
			if err = f(); err != nil {
				h.Close()
			}
		}
		ch <- result{h, err}
	}()
	r := <-ch
	return r.h, r.err
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	return netlink.LinkSetUp(l)
}

// newLAN makes the bridge namespace and one namespace per named host.
func newLAN(t *testing.T, names ...string) *lan {
	t.Helper()
	l := &lan{t: t}
	br, err := inNewNS(func() error {
		if err := linkUp("lo"); err != nil {
			return err
		}
		b := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(b); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		return netlink.LinkSetUp(b)
	})
	if err != nil {
		t.Fatalf("make the LAN's bridge namespace: %v", err)
	}
	l.bridge = br
	t.Cleanup(func() {
		for _, h := range l.hosts {
			h.ns.Close()
		}
		l.bridge.Close()
	})
	bh, err := netlink.NewHandleAt(br, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink in the bridge namespace: %v", err)
	}
	defer bh.Close()
	bridge, err := bh.LinkByName("br0")
	if err != nil {
		t.Fatalf("find br0: %v", err)
	}
	for i, name := range names {
		h := &nsHost{Name: name, IP: fmt.Sprintf("10.77.0.%d", i+1)}
		if h.ns, err = inNewNS(func() error { return linkUp("lo") }); err != nil {
			t.Fatalf("make host %s's namespace: %v", name, err)
		}
		l.hosts = append(l.hosts, h)
		port := fmt.Sprintf("lan%d", i)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MasterIndex: bridge.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(h.ns)}
		if err := bh.LinkAdd(veth); err != nil {
			t.Fatalf("add %s's veth: %v", name, err)
		}
		if err := bh.LinkSetUp(veth); err != nil {
			t.Fatalf("bring %s up: %v", port, err)
		}
		hh, err := netlink.NewHandleAt(h.ns, unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatalf("netlink in %s: %v", name, err)
		}
		eth, err := hh.LinkByName("eth0")
		if err == nil {
			addr, _ := netlink.ParseAddr(h.IP + "/24")
			if err = hh.AddrAdd(eth, addr); err == nil {
				err = hh.LinkSetUp(eth)
			}
		}
		hh.Close()
		if err != nil {
			t.Fatalf("address %s's eth0: %v", name, err)
		}
	}
	return l
}

// host returns the named host.
func (l *lan) host(name string) *nsHost {
	for _, h := range l.hosts {
		if h.Name == name {
			return h
		}
	}
	l.t.Fatalf("no host %q on the LAN", name)
	return nil
}

// Start starts cmd inside the host's namespace: the fork happens on a
// thread that joined the namespace and is then discarded.
func (h *nsHost) Start(cmd *exec.Cmd) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(h.ns); err != nil {
			ch <- fmt.Errorf("enter %s's namespace: %w", h.Name, err)
			return
		}
		ch <- cmd.Start()
	}()
	return <-ch
}

// Listen listens on TCP in the host's namespace.
func (h *nsHost) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.do(func() (err error) { ln, err = net.Listen("tcp", addr); return err })
	return ln, err
}

// Dial connects over TCP from the host's namespace.
func (h *nsHost) Dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 10*time.Second); return err })
	return c, err
}

// do runs f on a thread inside the host's namespace. Sockets keep the
// namespace they were made in.
func (h *nsHost) do(f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(h.ns); err != nil {
			ch <- fmt.Errorf("enter %s's namespace: %w", h.Name, err)
			return
		}
		ch <- f()
	}()
	return <-ch
}

// TestLAN checks the multi-host plumbing itself (no KVM needed, root is):
// hosts reach each other over the bridge by address, and a host's
// namespace is not the test's.
func TestLAN(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	l := newLAN(t, "a", "b")
	a, b := l.host("a"), l.host("b")
	ln, err := b.Listen(b.IP + ":7000")
	if err != nil {
		t.Fatalf("listen on b: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello from b"))
			c.Close()
		}
	}()
	c, err := a.Dial(b.IP + ":7000")
	if err != nil {
		t.Fatalf("a could not reach b: %v", err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello from b" {
		t.Fatalf("a read %q, %v from b", got, err)
	}
	for _, name := range []string{"br0", "lan0", "lan1"} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Fatalf("the LAN's %s is in the test's own namespace", name)
		}
	}
	var out strings.Builder
	cmd := exec.Command("/bin/cat", "/proc/net/dev")
	cmd.Stdout = &out
	if err := a.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "eth0") || strings.Contains(out.String(), "lan0") {
		t.Fatalf("a process started on a sees these interfaces:\n%s", out.String())
	}
}
