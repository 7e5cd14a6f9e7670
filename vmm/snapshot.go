package vmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdnet "net"
	"strconv"
	"strings"
	"time"

	"github.com/gvmm/gvmm/kvm"
	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/virtio"
)

const kvmClockRealtime = kvm.ClockRealtime

// StateComponent is one piece of a machine's saved state under a stable
// id: "machine", "vcpu/<n>", "kvm/vm", "serial/com1", "virtio/<device>",
// "memguard".
// Data is the component's versioned encoding; it is opaque to the
// snapshot and migration layers that carry it.
type StateComponent struct {
	ID   string
	Data []byte
}

// stateVersion is the version of every component's encoding. A later
// version keeps decoding the earlier ones (oldestStateVersion on). Version
// 2 writes the LAPIC and irqchip register pages and virtio's PCI
// configuration space as base64 instead of arrays of numbers (packages kvm
// and virtio read both). Version 3 writes the vCPUs and the VM-wide kernel
// state in binary (statebin.go); the other components stay JSON. Version
// 4 adds each vCPU's TSC offset (statebin.go, tsc.go).
const (
	stateVersion       = 4
	oldestStateVersion = 1
)

// Size limits for decoding components: far above what a real machine
// produces (a vCPU is about 40 KB of JSON, 10 KB in binary), far below
// what could hurt.
const (
	maxComponentBytes = 4 << 20
	maxComponents     = 4 * MaxCPUs
)

// envelope wraps every component's state with its encoding version.
type envelope struct {
	V int             `json:"v"`
	S json.RawMessage `json:"s"`
}

func encodeComponent(id string, v any) (StateComponent, error) {
	if bv, ok := v.(binaryState); ok {
		return encodeBinary(id, bv)
	}
	s, err := json.Marshal(v)
	if err != nil {
		return StateComponent{}, fmt.Errorf("encode %s: %w", id, err)
	}
	// The envelope by hand: json.Marshal would scan and compact s, a
	// component's kilobytes of base64, once more on the switchover's path.
	b := make([]byte, 0, len(s)+32)
	b = fmt.Appendf(b, `{"v":%d,"s":`, stateVersion)
	b = append(append(b, s...), '}')
	return StateComponent{ID: id, Data: b}, nil
}

// decodeComponent decodes c into v strictly: bounded size, known version,
// no unknown fields, nothing after the value.
func decodeComponent(c StateComponent, v any) error {
	if len(c.Data) > maxComponentBytes {
		return fmt.Errorf("state %s: %d bytes, at most %d", c.ID, len(c.Data), maxComponentBytes)
	}
	if bytes.HasPrefix(c.Data, binMagic) {
		return decodeBinary(c, v)
	}
	env, ok := canonicalEnvelope(c.Data)
	if !ok {
		// Any other spelling of the envelope: the general decoder.
		if err := strictJSON(c.Data, &env); err != nil {
			return fmt.Errorf("state %s: %w", c.ID, err)
		}
	}
	if env.V < oldestStateVersion || env.V > stateVersion {
		return fmt.Errorf("state %s: encoding version %d, this gvmm reads %d to %d", c.ID, env.V, oldestStateVersion, stateVersion)
	}
	if err := strictJSON(env.S, v); err != nil {
		return fmt.Errorf("state %s: %w", c.ID, err)
	}
	return nil
}

// canonicalEnvelope splits an envelope spelled as encodeComponent writes
// it, {"v":N,"s":S}, without scanning S (strictJSON does, once).
func canonicalEnvelope(b []byte) (envelope, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`{"v":`))
	if !ok {
		return envelope{}, false
	}
	i := bytes.IndexByte(rest, ',')
	if i < 1 || i > 3 {
		return envelope{}, false
	}
	v, err := strconv.Atoi(string(rest[:i]))
	if err != nil || v < 0 || string(rest[:i]) != strconv.Itoa(v) {
		return envelope{}, false
	}
	sv, ok := bytes.CutPrefix(rest[i:], []byte(`,"s":`))
	if !ok || len(sv) < 2 || sv[len(sv)-1] != '}' {
		return envelope{}, false
	}
	return envelope{V: v, S: sv[:len(sv)-1]}, true
}

// strictJSON decodes b, one JSON value and nothing else, into v, refusing
// unknown fields.
func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if len(bytes.TrimSpace(b[d.InputOffset():])) != 0 {
		return errors.New("trailing data")
	}
	return nil
}

// Description is what a destination needs to build a machine that can
// take a saved state: the machine's shape and its devices, in bus order.
type Description struct {
	CPUs        int
	MemoryBytes uint64
	Devices     []DeviceDescription
}

// DeviceDescription names one device and its host backing on the source.
// A destination may back it differently (another TAP, another path to the
// same disk) but must offer the same device at the same place.
type DeviceDescription struct {
	Name     string // "virtio-blk0", "virtio-net0", "virtio-console", "virtio-rng"
	Disk     string `json:",omitempty"`
	ReadOnly bool   `json:",omitempty"`
	TAP      string `json:",omitempty"`
	Bridge   string `json:",omitempty"`
	MAC      string `json:",omitempty"`
	Channel  string `json:",omitempty"`
}

// describe derives a Description from the Config a machine was built with;
// the device names and order are openDevices'.
func describe(cfg *Config) Description {
	d := Description{CPUs: cfg.CPUs, MemoryBytes: cfg.MemoryBytes}
	for i, disk := range cfg.Disks {
		d.Devices = append(d.Devices, DeviceDescription{Name: fmt.Sprintf("virtio-blk%d", i), Disk: disk.Path, ReadOnly: disk.ReadOnly})
	}
	for i, n := range cfg.Nets {
		dd := DeviceDescription{Name: fmt.Sprintf("virtio-net%d", i), TAP: n.TAP, Bridge: n.Bridge}
		if n.MAC != nil {
			dd.MAC = n.MAC.String()
		}
		d.Devices = append(d.Devices, dd)
	}
	if cfg.Channel != "" {
		d.Devices = append(d.Devices, DeviceDescription{Name: "virtio-console", Channel: cfg.Channel})
	}
	d.Devices = append(d.Devices, DeviceDescription{Name: "virtio-rng"})
	return d
}

// Description returns the machine's shape and devices.
func (m *Machine) Description() Description { return m.desc }

// sameShape reports why a saved machine's description cannot be restored
// into this one, or nil. Host backings (paths, TAP names) may differ.
func (d Description) sameShape(o Description) error {
	if d.CPUs != o.CPUs {
		return fmt.Errorf("saved machine has %d vCPUs, this one %d", o.CPUs, d.CPUs)
	}
	if d.MemoryBytes != o.MemoryBytes {
		return fmt.Errorf("saved machine has %s of memory, this one %s", FormatSize(o.MemoryBytes), FormatSize(d.MemoryBytes))
	}
	if len(d.Devices) != len(o.Devices) {
		return fmt.Errorf("saved machine has %d devices (%s), this one %d (%s)",
			len(o.Devices), deviceNames(o.Devices), len(d.Devices), deviceNames(d.Devices))
	}
	for i := range d.Devices {
		if d.Devices[i].Name != o.Devices[i].Name {
			return fmt.Errorf("saved machine has %s at position %d, this one %s", o.Devices[i].Name, i, d.Devices[i].Name)
		}
	}
	return nil
}

func deviceNames(ds []DeviceDescription) string {
	var n []string
	for _, d := range ds {
		n = append(n, d.Name)
	}
	return strings.Join(n, ", ")
}

// Config returns a Config that builds a machine of this shape to restore
// into, with the source's host backings; the caller may replace them.
func (d Description) Config() (Config, error) {
	if d.CPUs < 1 || d.CPUs > MaxCPUs {
		return Config{}, fmt.Errorf("description: cpus %d is outside 1..%d", d.CPUs, MaxCPUs)
	}
	cfg := Config{CPUs: d.CPUs, MemoryBytes: d.MemoryBytes, Incoming: true}
	for _, dev := range d.Devices {
		switch kind, idx := splitDeviceName(dev.Name); kind {
		case "virtio-blk":
			if idx != len(cfg.Disks) {
				return Config{}, fmt.Errorf("description: %s out of order", dev.Name)
			}
			cfg.Disks = append(cfg.Disks, DiskConfig{Path: dev.Disk, ReadOnly: dev.ReadOnly})
		case "virtio-net":
			if idx != len(cfg.Nets) {
				return Config{}, fmt.Errorf("description: %s out of order", dev.Name)
			}
			n := NetConfig{TAP: dev.TAP, Bridge: dev.Bridge}
			if dev.MAC != "" {
				mac, err := stdnet.ParseMAC(dev.MAC)
				if err != nil {
					return Config{}, fmt.Errorf("description: %s: %w", dev.Name, err)
				}
				n.MAC = mac
			}
			cfg.Nets = append(cfg.Nets, n)
		case "virtio-console":
			cfg.Channel = dev.Channel
		case "virtio-rng":
		default:
			return Config{}, fmt.Errorf("description: unknown device %q", dev.Name)
		}
	}
	return cfg, nil
}

// splitDeviceName splits "virtio-blk3" into ("virtio-blk", 3); names
// without an index give -1.
func splitDeviceName(name string) (string, int) {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	if i == len(name) || len(name)-i > 3 {
		return name, -1
	}
	n, _ := strconv.Atoi(name[i:])
	return name[:i], n
}

// vmState is the "kvm/vm" component.
type vmState = VMState

// SaveState captures the whole machine: its description, every vCPU, the
// serial port, every virtio device, the protected-memory registry (owner
// bindings, modes and measurements; the pages' contents travel with RAM),
// then the in-kernel irqchip, PIT and kvmclock (read last, as late as
// possible). The machine must be paused
// with its devices quiesced (Quiesce); it stays paused.
func (m *Machine) SaveState(ctx context.Context) ([]StateComponent, error) {
	if err := m.requirePaused(); err != nil {
		return nil, err
	}
	if !m.isQuiesced() {
		return nil, errors.New("save state: devices are not quiesced")
	}
	var out []StateComponent
	add := func(id string, v any) error {
		c, err := encodeComponent(id, v)
		if err == nil {
			out = append(out, c)
		}
		return err
	}
	if err := add("machine", m.desc); err != nil {
		return nil, err
	}
	t0 := time.Now()
	vcpus, err := m.SaveVCPUs(ctx)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	for i := range vcpus {
		if err := add(fmt.Sprintf("vcpu/%d", vcpus[i].ID), &vcpus[i]); err != nil {
			return nil, err
		}
	}
	if err := add("serial/com1", m.serial.save()); err != nil {
		return nil, err
	}
	for _, d := range m.virtio {
		st, err := d.pci.SaveState()
		if err != nil {
			return nil, fmt.Errorf("save %s: %w", d.name, err)
		}
		if err := add("virtio/"+d.name, st); err != nil {
			return nil, err
		}
	}
	t2 := time.Now()
	gs, err := m.guard.Load().Save()
	if err != nil {
		return nil, fmt.Errorf("save memguard: %w", err)
	}
	if err := add("memguard", gs); err != nil {
		return nil, err
	}
	vm, err := m.SaveVM()
	if err != nil {
		return nil, fmt.Errorf("save VM state: %w", err)
	}
	if err := add("kvm/vm", vm); err != nil {
		return nil, err
	}
	m.log.Debug("save timing", "vcpus", t1.Sub(t0), "devices", t2.Sub(t1), "vm", time.Since(t2))
	return out, nil
}

// RestoreOptions tune RestoreState.
type RestoreOptions struct {
	// AdvanceClock lets KVM move kvmclock forward by the real time that
	// passed since the source read it (KVM_CLOCK_REALTIME), as a live
	// migration between hosts with synchronised clocks wants. A snapshot
	// restored later leaves it off: the guest carries on from where its
	// clock stopped.
	AdvanceClock bool
}

// RestoreState puts a saved state into this machine, which must have been
// built with Config.Incoming from the same Description shape, and still be
// paused (Run starts an incoming machine paused). Every component is
// decoded and checked before anything is restored; a component missing,
// duplicated or unknown is an error ("memguard" may be missing: states
// from before it have none). Guest RAM must be in place already: the
// protected regions are checked against it (owner page tables, digests)
// before anything is restored, and their slot layout is applied last. On
// error the machine must be discarded.
func (m *Machine) RestoreState(ctx context.Context, comps []StateComponent, opts RestoreOptions) error {
	start := time.Now()
	if err := m.requirePaused(); err != nil {
		return err
	}
	if len(comps) > maxComponents {
		return fmt.Errorf("restore: %d state components, at most %d", len(comps), maxComponents)
	}
	byID := make(map[string]StateComponent, len(comps))
	for _, c := range comps {
		if _, dup := byID[c.ID]; dup {
			return fmt.Errorf("restore: state component %q appears twice", c.ID)
		}
		byID[c.ID] = c
	}
	take := func(id string, v any) error {
		c, ok := byID[id]
		if !ok {
			return fmt.Errorf("restore: state component %q is missing", id)
		}
		delete(byID, id)
		return decodeComponent(c, v)
	}
	var desc Description
	if err := take("machine", &desc); err != nil {
		return err
	}
	if err := m.desc.sameShape(desc); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	vcpus := make([]VCPUState, len(m.vcpus))
	for i := range vcpus {
		if err := take(fmt.Sprintf("vcpu/%d", i), &vcpus[i]); err != nil {
			return err
		}
	}
	var ser serialState
	if err := take("serial/com1", &ser); err != nil {
		return err
	}
	devs := make([]virtio.PCIState, len(m.virtio))
	for i, d := range m.virtio {
		if err := take("virtio/"+d.name, &devs[i]); err != nil {
			return err
		}
	}
	var guard *memguard.Guard
	if _, ok := byID["memguard"]; ok {
		var gs memguard.State
		if err := take("memguard", &gs); err != nil {
			return err
		}
		g, err := memguard.Restore(m.guardCfg, gs)
		if err != nil {
			return fmt.Errorf("restore memguard: %w", err)
		}
		guard = g
	}
	var vm vmState
	if err := take("kvm/vm", &vm); err != nil {
		return err
	}
	for id := range byID {
		return fmt.Errorf("restore: unknown state component %q", id)
	}
	// VM-wide state first (irqchips, PIT, clock), then the vCPUs, whose
	// LAPICs and pending events refer to it, then the devices.
	srcClock := vm.Clock
	advance := opts.AdvanceClock && vm.Clock.Flags&kvmClockRealtime != 0
	if advance {
		vm.Clock.Flags = kvmClockRealtime
	} else {
		vm.Clock.Flags = 0
	}
	t0 := time.Now()
	if err := m.RestoreVM(&vm); err != nil {
		return fmt.Errorf("restore VM state: %w", err)
	}
	t1 := time.Now()
	if err := m.RestoreVCPUs(ctx, vcpus); err != nil {
		return err
	}
	if advance {
		// kvmclock moved on by the time the guest was away: the TSCs too.
		if err := m.advanceTSCs(ctx, vcpus, srcClock); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	t2 := time.Now()
	m.guestCPUID = vcpus[0].CPUID
	if err := m.serial.restore(ser); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	for i, d := range m.virtio {
		if err := d.pci.RestoreState(devs[i]); err != nil {
			return fmt.Errorf("restore %s: %w", d.name, err)
		}
	}
	if guard != nil {
		m.guard.Store(guard)
		if err := m.applyLayout(nil); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	m.log.Debug("restore timing", "decode", t0.Sub(start), "vm", t1.Sub(t0), "vcpus", t2.Sub(t1), "devices", time.Since(t2))
	return nil
}

// Quiesce stops every device taking new requests and waits until what
// they took is complete, so guest memory and device state hold still
// while the machine is paused. Call it after Pause; Resume undoes it.
func (m *Machine) Quiesce(ctx context.Context) error {
	if err := m.requirePaused(); err != nil {
		return err
	}
	for _, d := range m.virtio {
		if err := d.pci.Quiesce(ctx); err != nil {
			m.unquiesce()
			return fmt.Errorf("quiesce %s: %w", d.name, err)
		}
	}
	m.serial.Flush()
	m.pauseMu.Lock()
	m.quiesced = true
	m.pauseMu.Unlock()
	return nil
}

// Unquiesce lets quiesced devices take requests again without resuming
// the vCPUs (after a snapshot of a machine the user had paused).
func (m *Machine) Unquiesce() { m.unquiesce() }

// unquiesce lets every device take requests again.
func (m *Machine) unquiesce() {
	for _, d := range m.virtio {
		d.pci.Unquiesce()
	}
	m.pauseMu.Lock()
	m.quiesced = false
	m.pauseMu.Unlock()
}

func (m *Machine) isQuiesced() bool {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	return m.quiesced
}
