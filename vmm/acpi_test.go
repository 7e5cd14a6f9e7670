package vmm

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// acpiTable finds the table at gpa inside tables laid out from base.
func acpiTable(t *testing.T, tables []byte, base, gpa uint64, sig string) []byte {
	t.Helper()
	if gpa < base || gpa-base+36 > uint64(len(tables)) {
		t.Fatalf("%s at %#x is outside the tables", sig, gpa)
	}
	off := gpa - base
	n := uint64(binary.LittleEndian.Uint32(tables[off+4:]))
	if off+n > uint64(len(tables)) {
		t.Fatalf("%s length %d overflows", sig, n)
	}
	tab := tables[off : off+n]
	if string(tab[:4]) != sig {
		t.Fatalf("table at %#x is %q, want %q", gpa, tab[:4], sig)
	}
	if checksum(tab) != 0 {
		t.Fatalf("%s checksum does not sum to zero", sig)
	}
	return tab
}

func TestACPITables(t *testing.T) {
	for _, ncpus := range []int{1, 2, 8, MaxCPUs} {
		b, err := acpiTables(acpiAddr, ncpus)
		if err != nil {
			t.Fatalf("%d cpus: %v", ncpus, err)
		}
		le := binary.LittleEndian
		rsdp := b[:36]
		if string(rsdp[:8]) != "RSD PTR " || checksum(rsdp[:20]) != 0 || checksum(rsdp) != 0 || rsdp[15] != 2 {
			t.Fatalf("bad RSDP % x", rsdp)
		}
		xsdt := acpiTable(t, b, acpiAddr, le.Uint64(rsdp[24:]), "XSDT")
		fadt := acpiTable(t, b, acpiAddr, le.Uint64(xsdt[36:]), "FACP")
		madt := acpiTable(t, b, acpiAddr, le.Uint64(xsdt[44:]), "APIC")
		dsdt := acpiTable(t, b, acpiAddr, le.Uint64(fadt[140:]), "DSDT")

		if len(fadt) != fadtLen || le.Uint32(fadt[112:])&fadtFlagHWReducedACPI == 0 {
			t.Errorf("FADT length %d flags %#x", len(fadt), le.Uint32(fadt[112:]))
		}
		if le.Uint64(fadt[244+4:]) != portSleepCtl || le.Uint64(fadt[256+4:]) != portSleepStatus || le.Uint64(fadt[116+4:]) != portResetReg {
			t.Errorf("FADT registers point at the wrong ports")
		}
		if uint64(le.Uint32(fadt[40:])) != le.Uint64(fadt[140:]) {
			t.Errorf("DSDT and X_DSDT differ")
		}
		if !bytes.Contains(dsdt, []byte("_S5_")) {
			t.Errorf("DSDT lacks _S5_")
		}
		// One local APIC per CPU with APIC ID = index, then one IOAPIC.
		var lapics int
		for off := 44; off < len(madt); {
			typ, l := madt[off], int(madt[off+1])
			if l == 0 || off+l > len(madt) {
				t.Fatalf("MADT entry at %d has length %d", off, l)
			}
			switch typ {
			case 0:
				if int(madt[off+3]) != lapics || le.Uint32(madt[off+4:])&1 == 0 {
					t.Errorf("LAPIC entry %d: id %d flags %#x", lapics, madt[off+3], le.Uint32(madt[off+4:]))
				}
				lapics++
			case 1:
				if le.Uint32(madt[off+4:]) != ioapicAddr {
					t.Errorf("IOAPIC at %#x", le.Uint32(madt[off+4:]))
				}
			}
			off += l
		}
		if lapics != ncpus {
			t.Errorf("MADT has %d LAPICs, want %d", lapics, ncpus)
		}
	}
	for _, bad := range []int{0, -1, MaxCPUs + 1} {
		if _, err := acpiTables(acpiAddr, bad); err == nil {
			t.Errorf("%d CPUs accepted", bad)
		}
	}
}
