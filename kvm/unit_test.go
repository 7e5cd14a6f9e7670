package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeRun returns a kvm_run-sized mapping stand-in of n bytes with an IO exit.
func fakeRun(n int, dataOffset uint64, size uint8, count uint32) runView {
	r := make(runView, n)
	binary.NativeEndian.PutUint32(r[runOffExitReason:], uint32(ExitIO))
	r[runOffIODirection] = IOOut
	r[runOffIOSize] = size
	binary.NativeEndian.PutUint16(r[runOffIOPort:], 0x3f8)
	binary.NativeEndian.PutUint32(r[runOffIOCount:], count)
	binary.NativeEndian.PutUint64(r[runOffIODataOffset:], dataOffset)
	return r
}

func TestIOExitBounds(t *testing.T) {
	const mapSize = 3 * 4096
	for _, tc := range []struct {
		name    string
		off     uint64
		size    uint8
		count   uint32
		wantLen int
	}{
		{"byte", 4096, 1, 1, 1},
		{"rep", 4096, 4, 8, 32},
		{"ends at mapping end", mapSize - 4, 4, 1, 4},
		{"one past end", mapSize - 3, 4, 1, 0},
		{"offset past end", mapSize + 1, 1, 1, 0},
		{"huge offset", ^uint64(0), 1, 1, 0},
		{"wrapping offset", ^uint64(0) - 2, 4, 1, 0},
		{"huge count", 4096, 255, ^uint32(0), 0},
		{"zero count", 4096, 1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fakeRun(mapSize, tc.off, tc.size, tc.count)
			e := r.io()
			if len(e.Data) != tc.wantLen {
				t.Fatalf("len(Data) = %d, want %d", len(e.Data), tc.wantLen)
			}
			if e.Port != 0x3f8 || e.Direction != IOOut || e.Size != tc.size || e.Count != tc.count {
				t.Errorf("io() = %+v", e)
			}
			if tc.wantLen > 0 {
				// Data aliases the mapping, and cannot be grown past it.
				e.Data[0] = 0xaa
				if r[tc.off] != 0xaa {
					t.Error("Data does not alias kvm_run")
				}
				if cap(e.Data) != tc.wantLen {
					t.Errorf("cap(Data) = %d, want %d", cap(e.Data), tc.wantLen)
				}
			}
		})
	}
}

func TestMMIOExitBounds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bufLen  int
		mmioLen uint32
		wantLen int
	}{
		{"4 bytes", sizeofKVMRun, 4, 4},
		{"8 bytes", sizeofKVMRun, 8, 8},
		{"len 9", sizeofKVMRun, 9, 0},
		{"len huge", sizeofKVMRun, ^uint32(0), 0},
		{"short buffer", runOffMMIOData + 2, 4, 0},
		{"empty buffer", 0, 4, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := make(runView, max(tc.bufLen, runOffMMIOIsWrite+1))
			binary.NativeEndian.PutUint64(r[runOffMMIOPhysAddr:], 0xfee00000)
			binary.NativeEndian.PutUint32(r[runOffMMIOLen:], tc.mmioLen)
			r[runOffMMIOIsWrite] = 1
			r = r[:tc.bufLen]
			e := r.mmio()
			if len(e.Data) != tc.wantLen {
				t.Fatalf("len(Data) = %d, want %d", len(e.Data), tc.wantLen)
			}
			if tc.wantLen > 0 {
				if e.PhysAddr != 0xfee00000 || !e.IsWrite {
					t.Errorf("mmio() = %+v", e)
				}
				copy(e.Data, []byte{1, 2, 3, 4})
				if !bytes.Equal(r[runOffMMIOData:runOffMMIOData+4], []byte{1, 2, 3, 4}) {
					t.Error("Data does not alias kvm_run")
				}
			}
		})
	}
}

func TestInternalErrorAndSystemEvent(t *testing.T) {
	r := make(runView, sizeofKVMRun)
	binary.NativeEndian.PutUint32(r[runOffInternalSuberror:], InternalErrorEmulation)
	binary.NativeEndian.PutUint32(r[runOffInternalNData:], 1000) // hostile: clamped to 16
	binary.NativeEndian.PutUint64(r[runOffInternalData:], 0x1234)
	ie := r.internalError()
	if ie.Suberror != InternalErrorEmulation || len(ie.Data) != runInternalDataLen || ie.Data[0] != 0x1234 {
		t.Errorf("internalError() = %+v", ie)
	}
	binary.NativeEndian.PutUint32(r[runOffSystemEventType:], SystemEventReset)
	binary.NativeEndian.PutUint32(r[runOffSystemEventNData:], 1)
	se := r.systemEvent()
	if se.Type != SystemEventReset || len(se.Data) != 1 {
		t.Errorf("systemEvent() = %+v", se)
	}
	binary.NativeEndian.PutUint64(r[runOffFailEntryReason:], 7)
	binary.NativeEndian.PutUint32(r[runOffFailEntryCPU:], 3)
	if fe := r.failEntry(); fe.HardwareEntryFailureReason != 7 || fe.CPU != 3 {
		t.Errorf("failEntry() = %+v", fe)
	}
	// A buffer too short for anything must give zero values, not panic.
	var short runView = make([]byte, 10)
	_ = short.io()
	_ = short.mmio()
	_ = short.internalError()
	_ = short.systemEvent()
	_ = short.failEntry()
	if short.exitReason() != 0 {
		// exit_reason is at 8..12, past the 10 bytes.
		t.Errorf("exitReason on short buffer = %v", short.exitReason())
	}
}

func TestExitReasonString(t *testing.T) {
	for _, tc := range []struct {
		e    ExitReason
		want string
	}{
		{ExitIO, "KVM_EXIT_IO"},
		{ExitHLT, "KVM_EXIT_HLT"},
		{ExitMMIO, "KVM_EXIT_MMIO"},
		{ExitInternalError, "KVM_EXIT_INTERNAL_ERROR"},
		{ExitSystemEvent, "KVM_EXIT_SYSTEM_EVENT"},
		{14, "KVM_EXIT_(14)"},
		{1000, "KVM_EXIT_(1000)"},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("ExitReason(%d).String() = %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestCPUIDMarshal(t *testing.T) {
	for _, entries := range [][]CPUIDEntry{
		{},
		{{Function: 0, EAX: 0xd, EBX: 0x756e6547}},
		{{Function: 7, Index: 1, Flags: CPUIDFlagSignificantIndex, EDX: 5}, {Function: 0x80000001, ECX: 1, Padding: [3]uint32{}}},
	} {
		buf := encodeCPUID(entries)
		if len(buf) != sizeofCPUID2Header+len(entries)*sizeofCPUIDEntry {
			t.Fatalf("len = %d", len(buf))
		}
		if n := binary.NativeEndian.Uint32(buf); n != uint32(len(entries)) {
			t.Errorf("nent = %d, want %d", n, len(entries))
		}
		got, err := decodeCPUID(buf)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(entries) {
			t.Fatalf("decoded %d entries, want %d", len(got), len(entries))
		}
		for i := range got {
			if got[i] != entries[i] {
				t.Errorf("entry %d = %+v, want %+v", i, got[i], entries[i])
			}
		}
	}
	// The field order in the buffer is the C one.
	buf := encodeCPUID([]CPUIDEntry{{Function: 1, Index: 2, Flags: 3, EAX: 4, EBX: 5, ECX: 6, EDX: 7}})
	for i := uint32(0); i < 7; i++ {
		if v := binary.NativeEndian.Uint32(buf[sizeofCPUID2Header+4*i:]); v != i+1 {
			t.Errorf("word %d = %d, want %d", i, v, i+1)
		}
	}
	// KVM may shrink nent, never grow it; a header claiming more than fits
	// is an error, not a panic.
	binary.NativeEndian.PutUint32(buf, 2)
	if _, err := decodeCPUID(buf); !errors.Is(err, errShortBuffer) {
		t.Errorf("decodeCPUID with nent past the buffer: err = %v", err)
	}
	if _, err := decodeCPUID(buf[:3]); err == nil {
		t.Error("decodeCPUID of 3 bytes succeeded")
	}
}

func TestMSRsMarshal(t *testing.T) {
	entries := []MSREntry{{Index: 0x10}, {Index: 0x174, Data: 0x10}}
	buf := encodeMSRs(entries)
	if n := binary.NativeEndian.Uint32(buf); n != 2 {
		t.Errorf("nmsrs = %d", n)
	}
	if idx := binary.NativeEndian.Uint32(buf[sizeofMSRsHeader+sizeofMSREntry:]); idx != 0x174 {
		t.Errorf("second index = %#x", idx)
	}
	// What KVM writes back lands in the caller's slice.
	binary.NativeEndian.PutUint64(buf[sizeofMSRsHeader+8:], 0xabcdef)
	if err := decodeMSRs(buf, entries); err != nil {
		t.Fatal(err)
	}
	if entries[0].Data != 0xabcdef || entries[1].Data != 0x10 {
		t.Errorf("entries = %+v", entries)
	}
	if err := decodeMSRs(buf[:20], entries); !errors.Is(err, errShortBuffer) {
		t.Errorf("short buffer: err = %v", err)
	}
}

func TestMSRListMarshal(t *testing.T) {
	buf := encodeMSRList(3)
	if n, _ := msrListCount(buf); n != 3 {
		t.Fatalf("nmsrs = %d", n)
	}
	for i, v := range []uint32{0x10, 0x174, 0xc0000080} {
		binary.NativeEndian.PutUint32(buf[sizeofMSRListHeader+4*i:], v)
	}
	binary.NativeEndian.PutUint32(buf, 2) // KVM reports fewer
	got, err := decodeMSRList(buf)
	if err != nil || len(got) != 2 || got[0] != 0x10 || got[1] != 0x174 {
		t.Errorf("decodeMSRList = %v, %v", got, err)
	}
	binary.NativeEndian.PutUint32(buf, 100) // E2BIG case: more than fits
	if _, err := decodeMSRList(buf); !errors.Is(err, errShortBuffer) {
		t.Errorf("nmsrs past buffer: err = %v", err)
	}
}

func TestIRQRouting(t *testing.T) {
	e := IRQChipRoute(4, IRQChipIOAPIC, 4)
	if e.Type != IRQRoutingTypeIRQChip || e.IRQChip() != (IRQRoutingIRQChip{IRQChip: IRQChipIOAPIC, Pin: 4}) {
		t.Errorf("IRQChipRoute = %+v", e)
	}
	m := IRQRoutingMSI{AddressLo: 0xfee00000, Data: 0x4041, DevID: 9}
	e2 := MSIRoute(24, MSIValidDevID, m)
	if e2.Type != IRQRoutingTypeMSI || e2.Flags != MSIValidDevID || e2.MSI() != m {
		t.Errorf("MSIRoute = %+v", e2)
	}
	buf := encodeIRQRouting([]IRQRoutingEntry{e, e2})
	if len(buf) != sizeofIRQRoutingHdr+2*sizeofIRQRoutingEntry || binary.NativeEndian.Uint32(buf) != 2 {
		t.Errorf("encodeIRQRouting: len %d nr %d", len(buf), binary.NativeEndian.Uint32(buf))
	}
	// gsi of the second entry, then its union's address_lo.
	second := buf[sizeofIRQRoutingHdr+sizeofIRQRoutingEntry:]
	if binary.NativeEndian.Uint32(second) != 24 || binary.NativeEndian.Uint32(second[16:]) != 0xfee00000 {
		t.Errorf("second entry bytes % x", second[:20])
	}
}

func TestIRQChipUnion(t *testing.T) {
	var c IRQChip
	p := PICState{IRR: 1, IMR: 0xff, IRQBase: 0x20, ELCRMask: 0xf8}
	c.SetPIC(&p)
	if c.PIC() != p || c.Chip[2] != 0xff {
		t.Errorf("PIC round trip: %+v", c.PIC())
	}
	var io IOAPICState
	io.BaseAddress = 0xfec00000
	io.RedirTbl[3][0] = 0x33
	c.SetIOAPIC(&io)
	if c.IOAPIC() != io {
		t.Errorf("IOAPIC round trip: %+v", c.IOAPIC())
	}
}

func TestError(t *testing.T) {
	err := error(&Error{Op: "KVM_CREATE_VM", Err: unix.ENOMEM})
	if got, want := err.Error(), "KVM_CREATE_VM: "+unix.ENOMEM.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, unix.ENOMEM) {
		t.Error("errors.Is(err, ENOMEM) is false")
	}
	var e *Error
	if !errors.As(err, &e) || e.Op != "KVM_CREATE_VM" {
		t.Error("errors.As failed")
	}
	run := error(&Error{Op: "KVM_RUN", Err: unix.EINTR})
	if !errors.Is(run, unix.EINTR) {
		t.Error("KVM_RUN error does not match EINTR")
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		errno       unix.Errno
		unavailable bool
		permission  bool
		text        string
	}{
		{unix.ENOENT, true, false, "KVM is unavailable"},
		{unix.ENODEV, true, false, "KVM is unavailable"},
		{unix.ENXIO, true, false, "KVM is unavailable"},
		{unix.EACCES, true, true, "permission denied"},
		{unix.EPERM, true, true, "permission denied"},
	} {
		err := error(&openError{path: "/dev/kvm", err: tc.errno})
		if !unavailable(tc.errno) {
			t.Errorf("unavailable(%v) = false", tc.errno)
		}
		if errors.Is(err, ErrUnavailable) != tc.unavailable || !errors.Is(err, tc.errno) {
			t.Errorf("%v: Is(ErrUnavailable) = %v, Is(errno) = %v", tc.errno, errors.Is(err, ErrUnavailable), errors.Is(err, tc.errno))
		}
		if errors.Is(err, fs.ErrPermission) != tc.permission {
			t.Errorf("%v: Is(fs.ErrPermission) = %v", tc.errno, !tc.permission)
		}
		if !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "/dev/kvm") {
			t.Errorf("%v: message %q lacks %q", tc.errno, err, tc.text)
		}
	}
	if unavailable(unix.EMFILE) {
		t.Error("EMFILE counted as unavailable")
	}
}

func TestOpenMissingDevice(t *testing.T) {
	_, err := Open(t.TempDir() + "/no-kvm")
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Open(missing) = %v; want ErrUnavailable and ENOENT", err)
	}
}

func TestOpenNotKVM(t *testing.T) {
	// /dev/null opens, but KVM_GET_API_VERSION fails with ENOTTY.
	_, err := Open("/dev/null")
	var e *Error
	if !errors.As(err, &e) || e.Op != "KVM_GET_API_VERSION" || !errors.Is(err, unix.ENOTTY) {
		t.Fatalf("Open(/dev/null) = %v; want KVM_GET_API_VERSION: ENOTTY", err)
	}
}

func TestClosedHandles(t *testing.T) {
	var s System // zero value: closed
	if err := s.Close(); err != nil {
		t.Errorf("Close of closed System = %v", err)
	}
	if _, err := s.CheckExtension(CapUserMemory); !errors.Is(err, ErrClosed) {
		t.Errorf("CheckExtension on closed System = %v", err)
	}
	var c VCPU
	c.SetImmediateExit(true) // no mapping: must not panic
	if err := c.Close(); err != nil {
		t.Errorf("Close of closed VCPU = %v", err)
	}
	if err := c.Run(); !errors.Is(err, ErrClosed) || !strings.HasPrefix(err.Error(), "KVM_RUN: ") {
		t.Errorf("Run on closed VCPU = %v", err)
	}
}

func TestImmediateExitByte(t *testing.T) {
	// The atomic store changes only its byte of the word.
	run := make([]byte, sizeofKVMRun)
	run[runOffRequestInterruptWindow] = 1
	run[2], run[3] = 0x22, 0x33
	c := &VCPU{run: run}
	c.SetImmediateExit(true)
	if run[runOffImmediateExit] != 1 || !c.ImmediateExit() {
		t.Error("immediate_exit not set")
	}
	c.SetImmediateExit(false)
	if run[runOffImmediateExit] != 0 || c.ImmediateExit() {
		t.Error("immediate_exit not cleared")
	}
	if run[0] != 1 || run[2] != 0x22 || run[3] != 0x33 {
		t.Errorf("neighbouring bytes changed: % x", run[:4])
	}
}

func TestDirtyBitmapLen(t *testing.T) {
	for _, tc := range []struct {
		size uint64
		want int
	}{{0, 0}, {1, 1}, {4096, 1}, {64 * 4096, 1}, {64*4096 + 1, 2}, {1 << 30, 4096}} {
		if got := DirtyBitmapLen(tc.size); got != tc.want {
			t.Errorf("DirtyBitmapLen(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

// TestDeviceAttrArgLayout: the argument the attribute ioctls get has
// deviceAttr's layout (itself checked against C in abi_test.go), with a
// pointer where deviceAttr has the address.
func TestDeviceAttrArgLayout(t *testing.T) {
	g, c := reflect.TypeOf(deviceAttrArg{}), reflect.TypeOf(deviceAttr{})
	if g.Size() != c.Size() || g.NumField() != c.NumField() {
		t.Fatalf("deviceAttrArg: %d bytes, %d fields; deviceAttr: %d bytes, %d fields", g.Size(), g.NumField(), c.Size(), c.NumField())
	}
	for i := range g.NumField() {
		gf, cf := g.Field(i), c.Field(i)
		if gf.Name != cf.Name || gf.Offset != cf.Offset || gf.Type.Size() != cf.Type.Size() {
			t.Errorf("field %d: %s at %d (%d bytes), deviceAttr's %s at %d (%d bytes)",
				i, gf.Name, gf.Offset, gf.Type.Size(), cf.Name, cf.Offset, cf.Type.Size())
		}
	}
}
