package virtio_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gvmm/gvmm/virtio"
	"github.com/gvmm/gvmm/virtio/rng"
	"github.com/gvmm/gvmm/virtio/virtiotest"
)

// runningRNG sets up virtio-rng with MSI-X and one completed request.
func runningRNG(t *testing.T, mem *virtiotest.Memory) (fn, *fakeIRQ, *virtiotest.Driver, uint64) {
	t.Helper()
	f, irq, _ := newFn(t, mem)
	d := virtiotest.NewDriver(mem, 16)
	buf := d.Alloc(32)
	f.bw(barMSIX+16, 8, 0xfee0_0000)
	f.bw(barMSIX+16+8, 4, 0x4041)
	f.bw(barMSIX+16+12, 4, 0)
	f.cw(0x98+2, 2, 0x8000)
	f.negotiate(virtio.FVersion1 | virtio.FEventIdx)
	f.setupQueue(0, d, 1)
	f.bw(ccConfigVec, 2, 0)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	// A driver notifies after adding a buffer; without it the chain is
	// seen only if the worker's first drain comes after AddChain.
	f.pci.Notify(0)
	waitUsed(t, d, 1)
	return f, irq, d, buf
}

// TestStateRoundTrip quiesces a running function, moves its state through
// JSON into a new function over the same memory, and checks the new one
// takes the next request, interrupts on the same vector, and that a
// notification sent while quiesced is not lost on the old one.
func TestStateRoundTrip(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, _, d, buf := runningRNG(t, mem)
	ctx := context.Background()
	if _, err := f.pci.SaveState(); err == nil {
		t.Fatal("SaveState of a running device succeeded")
	}
	if err := f.pci.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	// A request made while quiesced waits.
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	f.bw(0x3000, 2, 0)
	st, err := f.pci.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.Queues[0].Used != 1 || st.Queues[0].NextAvail != 1 || st.Status&virtio.StatusDriverOK == 0 {
		t.Fatalf("saved queue %+v status %#x", st.Queues[0], st.Status)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back virtio.PCIState
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}

	// The destination: a new function on the same memory.
	g, irq2, _ := newFn(t, mem)
	if err := g.pci.RestoreState(back); err != nil {
		t.Fatal(err)
	}
	if g.status() != f.status() || g.br(ccConfigVec, 2) != 0 || g.cr(0x98+2, 2)&0x8000 == 0 {
		t.Fatalf("restored registers: status %#x, config vector %d, MSI-X control %#x", g.status(), g.br(ccConfigVec, 2), g.cr(0x98+2, 2))
	}
	// The pending request is taken by the restored device, and it
	// interrupts on vector 1 with the saved message.
	waitUsed(t, d, 2)
	waitVector(t, irq2, 1)
	if m := irq2.msgs[0]; m.Addr != 0xfee0_0000 || m.Data != 0x4041 {
		t.Fatalf("restored MSI-X message %+v", m)
	}
	// Restoring into a function in use is refused.
	if err := g.pci.RestoreState(back); err == nil {
		t.Fatal("restore into a running function succeeded")
	}
}

// TestUnquiesceDeliversPending: a notification that arrives while quiesced
// is acted on when the device goes on.
func TestUnquiesceDeliversPending(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, _, d, buf := runningRNG(t, mem)
	ctx := context.Background()
	if err := f.pci.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.pci.Quiesce(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	f.bw(0x3000, 2, 0)
	if got := d.UsedIdx(); got != 1 {
		t.Fatalf("a quiesced device completed a request (used %d)", got)
	}
	f.pci.Unquiesce()
	waitUsed(t, d, 2)
}

func TestRestoreRefusesHostileState(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	f, _, _, _ := runningRNG(t, mem)
	if err := f.pci.Quiesce(context.Background()); err != nil {
		t.Fatal(err)
	}
	good, err := f.pci.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(*virtio.PCIState)
		want string
	}{
		{"device type", func(s *virtio.PCIState) { s.DeviceType = virtio.TypeBlock }, "device type"},
		{"offered", func(s *virtio.PCIState) { s.Offered |= 1 << 50 }, "offered"},
		{"negotiated beyond offered", func(s *virtio.PCIState) { s.DrvFeatures |= 1 << 3 }, "beyond"},
		{"device config", func(s *virtio.PCIState) { s.DeviceConfig = s.DeviceConfig[:3] }, "configuration differs"},
		{"config space short", func(s *virtio.PCIState) { s.Config = s.Config[:255] }, "configuration space"},
		{"config space missing", func(s *virtio.PCIState) { s.Config = nil }, "configuration space"},
		{"status bits", func(s *virtio.PCIState) { s.Status |= 0x20 }, "status bits"},
		{"driver ok without features ok", func(s *virtio.PCIState) { s.Status &^= virtio.StatusFeaturesOK }, "FEATURES_OK"},
		{"MSI-X table size", func(s *virtio.PCIState) { s.MSIXTable = s.MSIXTable[:16] }, "MSI-X table"},
		{"MSI-X reserved", func(s *virtio.PCIState) { s.MSIXTable[12] = 0x80 }, "reserved"},
		{"PBA bits", func(s *virtio.PCIState) { s.PBA[0] = 1 << 40 }, "PBA"},
		{"ISR", func(s *virtio.PCIState) { s.ISR = 0x80 }, "ISR"},
		{"config vector", func(s *virtio.PCIState) { s.ConfigVector = 77 }, "vector"},
		{"queue count", func(s *virtio.PCIState) { s.Queues = append(s.Queues, s.Queues[0]) }, "queues"},
		{"queue size", func(s *virtio.PCIState) { s.Queues[0].Size = 12 }, "size"},
		{"queue too big", func(s *virtio.PCIState) { s.Queues[0].Size = 1024 }, "size"},
		{"queue vector", func(s *virtio.PCIState) { s.Queues[0].Vector = 9 }, "vector"},
		{"ring outside memory", func(s *virtio.PCIState) { s.Queues[0].Desc = 1 << 60 }, "queue 0"},
		{"indices differ", func(s *virtio.PCIState) { s.Queues[0].NextAvail = 5 }, "differs"},
		{"used index not in memory", func(s *virtio.PCIState) { s.Queues[0].Used, s.Queues[0].NextAvail = 9, 9 }, "guest memory"},
		{"disabled queue with indices", func(s *virtio.PCIState) { s.Queues[0].Enabled = false }, "disabled"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := json.Marshal(good)
			var st virtio.PCIState
			json.Unmarshal(b, &st)
			tc.edit(&st)
			g, _, _ := newFn(t, mem)
			err := g.pci.RestoreState(st)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want an error with %q", err, tc.want)
			}
			if g.status() != 0 {
				t.Fatalf("a refused restore left status %#x", g.status())
			}
		})
	}
}

// TestSaveNeverStarted: a function the driver never touched saves and
// restores as such (virtio-rng on a guest without the driver).
func TestSaveNeverStarted(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	dev := rng.New(nil)
	p, err := virtio.NewPCI(dev, mem, &fakeIRQ{}, virtio.PCIOptions{BARAddr: 0xe000_0000})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Quiesce(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := p.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewPCI(rng.New(nil), mem, &fakeIRQ{}, virtio.PCIOptions{BARAddr: 0xe000_0000})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if q.Status() != 0 {
		t.Fatalf("status %#x", q.Status())
	}
}

// stuckDevice is virtio-rng whose Reset blocks until released, as a device
// stuck in a host system call would.
type stuckDevice struct {
	*rng.Device
	release chan struct{}
}

func (d *stuckDevice) Reset() {
	<-d.release
	d.Device.Reset()
}

// TestQuiesceBoundedByContext: a device that does not stop makes Quiesce
// fail when its context ends, without blocking notifications; once it
// stops, Unquiesce starts it again.
func TestQuiesceBoundedByContext(t *testing.T) {
	mem := virtiotest.NewMemory(memBase, memSize)
	mem.SnapshotReads = true
	dev := &stuckDevice{Device: rng.New(nil), release: make(chan struct{})}
	p, err := virtio.NewPCI(dev, mem, &fakeIRQ{}, virtio.PCIOptions{BARAddr: 0xe000_0000})
	if err != nil {
		t.Fatal(err)
	}
	f := fn{t, p}
	d := virtiotest.NewDriver(mem, 16)
	buf := d.Alloc(32)
	f.negotiate(virtio.FVersion1)
	f.setupQueue(0, d, virtio.NoVector)
	f.bw(ccStatus, 1, uint64(f.status()|virtio.StatusDriverOK))
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	// A driver notifies after adding a buffer; without it the chain is
	// seen only if the worker's first drain comes after AddChain.
	p.Notify(0)
	waitUsed(t, d, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Quiesce(ctx); err == nil {
		t.Fatal("Quiesce of a stuck device succeeded")
	}
	notified := make(chan struct{})
	go func() { p.Notify(0); close(notified) }()
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked behind a stuck Quiesce")
	}
	if _, err := p.SaveState(); err == nil {
		t.Fatal("SaveState while the device is still stopping succeeded")
	}
	close(dev.release)
	if err := p.Quiesce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SaveState(); err != nil {
		t.Fatal(err)
	}
	d.AddChain(virtiotest.Buf{Addr: buf, Len: 32, Write: true})
	p.Unquiesce()
	waitUsed(t, d, 2)
	dev.release = make(chan struct{})
	close(dev.release)
	p.Close()
}

// A state saved when Config was an array (written as numbers) decodes
// into today's slice.
func TestStateConfigOldForm(t *testing.T) {
	var old struct{ Config [256]byte }
	old.Config[4], old.Config[255] = 7, 9
	b, _ := json.Marshal(old)
	var st virtio.PCIState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Config) != 256 || st.Config[4] != 7 || st.Config[255] != 9 {
		t.Fatalf("config decoded as %d bytes", len(st.Config))
	}
	b, _ = json.Marshal(st)
	if !strings.Contains(string(b), `"Config":"`) {
		t.Fatalf("config encodes as %.60s, want base64", b)
	}
}
