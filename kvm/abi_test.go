//go:build cgo

package kvm

import (
	"encoding/binary"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"

	"github.com/gvmm/gvmm/kvm/internal/cabi"
)

// abiTypes maps every generated ABI struct to the C struct it mirrors.
var abiTypes = map[string]any{
	"kvm_regs":                     Regs{},
	"kvm_segment":                  Segment{},
	"kvm_dtable":                   DTable{},
	"kvm_sregs":                    Sregs{},
	"kvm_fpu":                      FPU{},
	"kvm_msr_entry":                MSREntry{},
	"kvm_msrs":                     msrsHeader{},
	"kvm_msr_list":                 msrListHeader{},
	"kvm_cpuid_entry2":             CPUIDEntry{},
	"kvm_cpuid2":                   cpuid2Header{},
	"kvm_userspace_memory_region":  UserspaceMemoryRegion{},
	"kvm_clock_data":               ClockData{},
	"kvm_device_attr":              deviceAttr{},
	"kvm_pic_state":                PICState{},
	"kvm_ioapic_state":             IOAPICState{},
	"kvm_irqchip":                  IRQChip{},
	"kvm_pit_channel_state":        PITChannelState{},
	"kvm_pit_state2":               PITState2{},
	"kvm_pit_config":               pitConfig{},
	"kvm_ioeventfd":                IOEventFD{},
	"kvm_irqfd":                    IRQFD{},
	"kvm_irq_routing_irqchip":      IRQRoutingIRQChip{},
	"kvm_irq_routing_msi":          IRQRoutingMSI{},
	"kvm_irq_routing_entry":        IRQRoutingEntry{},
	"kvm_irq_routing":              irqRoutingHeader{},
	"kvm_msi":                      MSI{},
	"kvm_irq_level":                irqLevel{},
	"kvm_dirty_log":                dirtyLog{},
	"kvm_clear_dirty_log":          clearDirtyLog{},
	"kvm_enable_cap":               enableCap{},
	"kvm_xsave":                    xsaveLegacy{},
	"kvm_xcr":                      XCR{},
	"kvm_xcrs":                     XCRs{},
	"kvm_lapic_state":              LAPICState{},
	"kvm_vcpu_events.exception":    VCPUEventsException{},
	"kvm_vcpu_events.interrupt":    VCPUEventsInterrupt{},
	"kvm_vcpu_events.nmi":          VCPUEventsNMI{},
	"kvm_vcpu_events.smi":          VCPUEventsSMI{},
	"kvm_vcpu_events.triple_fault": VCPUEventsTripleFault{},
	"kvm_vcpu_events":              VCPUEvents{},
	"kvm_mp_state":                 MPState{},
	"kvm_debugregs":                DebugRegs{},
}

// ztypesNames returns the names declared by ztypes_linux_amd64.go: type
// names, and constant names that start with prefix.
func ztypesNames(t *testing.T, prefix string) (types, consts []string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "ztypes_linux_amd64.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		gd := d.(*ast.GenDecl)
		for _, s := range gd.Specs {
			switch s := s.(type) {
			case *ast.TypeSpec:
				if _, ok := s.Type.(*ast.StructType); ok {
					types = append(types, s.Name.Name)
				}
			case *ast.ValueSpec:
				for _, n := range s.Names {
					if strings.HasPrefix(n.Name, prefix) {
						consts = append(consts, n.Name)
					}
				}
			}
		}
	}
	return types, consts
}

func TestABIStructLayouts(t *testing.T) {
	c := cabi.Structs()
	checked := map[string]bool{}
	for cname, v := range abiTypes {
		typ := reflect.TypeOf(v)
		checked[typ.Name()] = true
		t.Run(cname, func(t *testing.T) {
			cs, ok := c[cname]
			if !ok {
				t.Fatalf("internal/cabi does not list struct %s", cname)
			}
			if got := uint64(typ.Size()); got != cs.Size {
				t.Errorf("sizeof %s (%s): Go %d, C %d", typ, cname, got, cs.Size)
			}
			var fields []reflect.StructField
			for i := range typ.NumField() {
				if f := typ.Field(i); f.Name != "_" {
					fields = append(fields, f)
				}
			}
			if len(fields) != len(cs.Fields) {
				t.Fatalf("%s has %d fields, C %s has %d (%v)", typ, len(fields), cname, len(cs.Fields), cs.Fields)
			}
			for i, f := range fields {
				cf := cs.Fields[i]
				if uint64(f.Offset) != cf.Offset || uint64(f.Type.Size()) != cf.Size {
					t.Errorf("%s.%s at %d size %d; C %s.%s at %d size %d",
						typ, f.Name, f.Offset, f.Type.Size(), cname, cf.Name, cf.Offset, cf.Size)
				}
			}
		})
	}
	// Every struct the generator emits must be in the table above.
	types, _ := ztypesNames(t, "")
	for _, name := range types {
		if !checked[name] {
			t.Errorf("generated struct %s is not checked against C; add it to abiTypes and internal/cabi", name)
		}
	}
}

// TestBinaryEncodedSizes checks that encoding/binary, which marshals the
// variable-length structs, sees the C size (no hidden padding).
func TestBinaryEncodedSizes(t *testing.T) {
	c := cabi.Structs()
	for _, tc := range []struct {
		cname string
		v     any
		size  int
	}{
		{"kvm_cpuid_entry2", CPUIDEntry{}, sizeofCPUIDEntry},
		{"kvm_cpuid2", cpuid2Header{}, sizeofCPUID2Header},
		{"kvm_msr_entry", MSREntry{}, sizeofMSREntry},
		{"kvm_msrs", msrsHeader{}, sizeofMSRsHeader},
		{"kvm_msr_list", msrListHeader{}, sizeofMSRListHeader},
		{"kvm_irq_routing_entry", IRQRoutingEntry{}, sizeofIRQRoutingEntry},
		{"kvm_irq_routing", irqRoutingHeader{}, sizeofIRQRoutingHdr},
		{"kvm_irq_routing_irqchip", IRQRoutingIRQChip{}, -1},
		{"kvm_irq_routing_msi", IRQRoutingMSI{}, -1},
		{"kvm_pic_state", PICState{}, -1},
		{"kvm_ioapic_state", IOAPICState{}, -1},
		{"kvm_xsave", xsaveLegacy{}, sizeofXSaveLegacy},
	} {
		want := c[tc.cname].Size
		if got := binary.Size(tc.v); uint64(got) != want {
			t.Errorf("binary.Size(%T) = %d, C sizeof %s = %d", tc.v, got, tc.cname, want)
		}
		if tc.size >= 0 && uint64(tc.size) != want {
			t.Errorf("size constant for %s = %d, C %d", tc.cname, tc.size, want)
		}
	}
}

func TestKVMRunOffsets(t *testing.T) {
	run := cabi.Structs()["kvm_run"]
	if run.Size != sizeofKVMRun {
		t.Errorf("sizeofKVMRun = %d, C %d", sizeofKVMRun, run.Size)
	}
	c := map[string]cabi.Field{}
	for _, f := range run.Fields {
		c[f.Name] = f
	}
	offsets := map[string]struct {
		member string
		off    int
	}{
		"runOffRequestInterruptWindow":     {"request_interrupt_window", runOffRequestInterruptWindow},
		"runOffImmediateExit":              {"immediate_exit", runOffImmediateExit},
		"runOffExitReason":                 {"exit_reason", runOffExitReason},
		"runOffReadyForInterruptInjection": {"ready_for_interrupt_injection", runOffReadyForInterruptInjection},
		"runOffIFFlag":                     {"if_flag", runOffIFFlag},
		"runOffFlags":                      {"flags", runOffFlags},
		"runOffCR8":                        {"cr8", runOffCR8},
		"runOffAPICBase":                   {"apic_base", runOffAPICBase},
		"runOffIODirection":                {"io.direction", runOffIODirection},
		"runOffIOSize":                     {"io.size", runOffIOSize},
		"runOffIOPort":                     {"io.port", runOffIOPort},
		"runOffIOCount":                    {"io.count", runOffIOCount},
		"runOffIODataOffset":               {"io.data_offset", runOffIODataOffset},
		"runOffMMIOPhysAddr":               {"mmio.phys_addr", runOffMMIOPhysAddr},
		"runOffMMIOData":                   {"mmio.data", runOffMMIOData},
		"runOffMMIOLen":                    {"mmio.len", runOffMMIOLen},
		"runOffMMIOIsWrite":                {"mmio.is_write", runOffMMIOIsWrite},
		"runOffInternalSuberror":           {"internal.suberror", runOffInternalSuberror},
		"runOffInternalNData":              {"internal.ndata", runOffInternalNData},
		"runOffInternalData":               {"internal.data", runOffInternalData},
		"runOffFailEntryReason":            {"fail_entry.hardware_entry_failure_reason", runOffFailEntryReason},
		"runOffFailEntryCPU":               {"fail_entry.cpu", runOffFailEntryCPU},
		"runOffSystemEventType":            {"system_event.type", runOffSystemEventType},
		"runOffSystemEventNData":           {"system_event.ndata", runOffSystemEventNData},
		"runOffSystemEventData":            {"system_event.data", runOffSystemEventData},
	}
	for name, o := range offsets {
		f, ok := c[o.member]
		if !ok {
			t.Errorf("internal/cabi does not list kvm_run.%s", o.member)
			continue
		}
		if uint64(o.off) != f.Offset {
			t.Errorf("%s = %d, C offsetof(struct kvm_run, %s) = %d", name, o.off, o.member, f.Offset)
		}
	}
	if c["mmio.data"].Size != runMMIODataLen {
		t.Errorf("runMMIODataLen = %d, C %d", runMMIODataLen, c["mmio.data"].Size)
	}
	if c["internal.data"].Size != 8*runInternalDataLen || c["system_event.data"].Size != 8*runSystemEventDataLen {
		t.Errorf("data array lengths %d, %d disagree with C sizes %d, %d",
			runInternalDataLen, runSystemEventDataLen, c["internal.data"].Size, c["system_event.data"].Size)
	}
	_, names := ztypesNames(t, "runOff")
	for _, n := range names {
		if _, ok := offsets[n]; !ok {
			t.Errorf("kvm_run offset %s is not checked against C; add it to this test", n)
		}
	}
}

// ioctls lists every ioctl number the package defines, by C macro name.
var ioctls = map[string]uint64{
	"KVM_GET_API_VERSION":            _KVM_GET_API_VERSION,
	"KVM_CREATE_VM":                  _KVM_CREATE_VM,
	"KVM_GET_MSR_INDEX_LIST":         _KVM_GET_MSR_INDEX_LIST,
	"KVM_GET_MSR_FEATURE_INDEX_LIST": _KVM_GET_MSR_FEATURE_INDEX_LIST,
	"KVM_CHECK_EXTENSION":            _KVM_CHECK_EXTENSION,
	"KVM_GET_VCPU_MMAP_SIZE":         _KVM_GET_VCPU_MMAP_SIZE,
	"KVM_GET_SUPPORTED_CPUID":        _KVM_GET_SUPPORTED_CPUID,
	"KVM_CREATE_VCPU":                _KVM_CREATE_VCPU,
	"KVM_GET_DIRTY_LOG":              _KVM_GET_DIRTY_LOG,
	"KVM_CLEAR_DIRTY_LOG":            _KVM_CLEAR_DIRTY_LOG,
	"KVM_SET_USER_MEMORY_REGION":     _KVM_SET_USER_MEMORY_REGION,
	"KVM_SET_TSS_ADDR":               _KVM_SET_TSS_ADDR,
	"KVM_SET_IDENTITY_MAP_ADDR":      _KVM_SET_IDENTITY_MAP_ADDR,
	"KVM_CREATE_IRQCHIP":             _KVM_CREATE_IRQCHIP,
	"KVM_IRQ_LINE":                   _KVM_IRQ_LINE,
	"KVM_GET_IRQCHIP":                _KVM_GET_IRQCHIP,
	"KVM_SET_IRQCHIP":                _KVM_SET_IRQCHIP,
	"KVM_CREATE_PIT2":                _KVM_CREATE_PIT2,
	"KVM_GET_PIT2":                   _KVM_GET_PIT2,
	"KVM_SET_PIT2":                   _KVM_SET_PIT2,
	"KVM_IOEVENTFD":                  _KVM_IOEVENTFD,
	"KVM_IRQFD":                      _KVM_IRQFD,
	"KVM_SET_GSI_ROUTING":            _KVM_SET_GSI_ROUTING,
	"KVM_SIGNAL_MSI":                 _KVM_SIGNAL_MSI,
	"KVM_ENABLE_CAP":                 _KVM_ENABLE_CAP,
	"KVM_GET_CLOCK":                  _KVM_GET_CLOCK,
	"KVM_SET_CLOCK":                  _KVM_SET_CLOCK,
	"KVM_RUN":                        _KVM_RUN,
	"KVM_GET_REGS":                   _KVM_GET_REGS,
	"KVM_SET_REGS":                   _KVM_SET_REGS,
	"KVM_GET_SREGS":                  _KVM_GET_SREGS,
	"KVM_SET_SREGS":                  _KVM_SET_SREGS,
	"KVM_GET_FPU":                    _KVM_GET_FPU,
	"KVM_SET_FPU":                    _KVM_SET_FPU,
	"KVM_GET_XSAVE":                  _KVM_GET_XSAVE,
	"KVM_GET_XSAVE2":                 _KVM_GET_XSAVE2,
	"KVM_SET_XSAVE":                  _KVM_SET_XSAVE,
	"KVM_GET_XCRS":                   _KVM_GET_XCRS,
	"KVM_SET_XCRS":                   _KVM_SET_XCRS,
	"KVM_GET_MSRS":                   _KVM_GET_MSRS,
	"KVM_SET_MSRS":                   _KVM_SET_MSRS,
	"KVM_GET_LAPIC":                  _KVM_GET_LAPIC,
	"KVM_SET_LAPIC":                  _KVM_SET_LAPIC,
	"KVM_GET_VCPU_EVENTS":            _KVM_GET_VCPU_EVENTS,
	"KVM_SET_VCPU_EVENTS":            _KVM_SET_VCPU_EVENTS,
	"KVM_GET_MP_STATE":               _KVM_GET_MP_STATE,
	"KVM_SET_MP_STATE":               _KVM_SET_MP_STATE,
	"KVM_GET_DEBUGREGS":              _KVM_GET_DEBUGREGS,
	"KVM_SET_DEBUGREGS":              _KVM_SET_DEBUGREGS,
	"KVM_SET_CPUID2":                 _KVM_SET_CPUID2,
	"KVM_GET_CPUID2":                 _KVM_GET_CPUID2,
	"KVM_GET_TSC_KHZ":                _KVM_GET_TSC_KHZ,
	"KVM_SET_TSC_KHZ":                _KVM_SET_TSC_KHZ,
	"KVM_KVMCLOCK_CTRL":              _KVM_KVMCLOCK_CTRL,
	"KVM_GET_DEVICE_ATTR":            _KVM_GET_DEVICE_ATTR,
	"KVM_SET_DEVICE_ATTR":            _KVM_SET_DEVICE_ATTR,
}

func TestIoctlNumbers(t *testing.T) {
	c := cabi.Constants()
	for name, got := range ioctls {
		want, ok := c[name]
		if !ok {
			t.Errorf("internal/cabi does not list %s", name)
			continue
		}
		if got != want {
			t.Errorf("_%s = %#x, C %#x", name, got, want)
		}
	}
	if c["KVM_API_VERSION"] != APIVersion {
		t.Errorf("APIVersion = %d, C %d", APIVersion, c["KVM_API_VERSION"])
	}
	// Every ioctl constant the package defines must be in the table.
	_, names := ztypesNames(t, "_KVM_")
	if len(names) == 0 {
		t.Fatal("found no _KVM_ constants in ztypes_linux_amd64.go")
	}
	for _, n := range names {
		if _, ok := ioctls[strings.TrimPrefix(n, "_")]; !ok {
			t.Errorf("ioctl %s is not checked against C; add it to the ioctls table", n)
		}
	}
}
