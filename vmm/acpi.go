package vmm

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables for a hardware-reduced ACPI machine (ACPI 6.x, FADT flag
// HW_REDUCED_ACPI): no PM1 blocks, no SCI, no PM timer. Power off goes
// through the FADT sleep control register with the SLP_TYP that \_S5 in the
// DSDT announces; reboot through the FADT reset register. The MADT lists
// one local APIC per vCPU (APIC ID = vCPU index) and the in-kernel IOAPIC.
// No interrupt source overrides: ISA IRQs map 1:1 to IOAPIC pins, which is
// KVM's default GSI routing.

const (
	acpiOEMID      = "GVMM  "
	acpiOEMTableID = "GVMMVM  "
	acpiCreatorID  = "GVMM"
	acpiHeaderLen  = 36

	fadtLen      = 276
	fadtRevision = 6

	fadtFlagPwrButton     = 1 << 4
	fadtFlagSlpButton     = 1 << 5
	fadtFlagResetRegSup   = 1 << 10
	fadtFlagHWReducedACPI = 1 << 20

	iapcNoVGA      = 1 << 2
	iapcNoCMOSRTC  = 1 << 5
	gasSystemIO    = 1
	gasAccessByte  = 1
	sleepEnableBit = 1 << 5 // ACPI_X_SLEEP_ENABLE
	sleepTypeS5    = 5
)

// dsdtAML is the body of the DSDT:
//
//	Name (_S5_, Package () { 5, 0, 0, 0 })  // SLP_TYP for power off
//	Scope (\_SB) {
//	    Device (PCI0) {                      // host bridge of bus 0
//	        Name (_HID, EisaId ("PNP0A03"))
//	        Name (_UID, 0)
//	        Name (_SEG, 0)
//	        Name (_BBN, 0)
//	        Name (_CRS, ResourceTemplate () {
//	            WordBusNumber (...0, 0...)       // bus 0 only
//	            IO (Decode16, 0xcf8, 0xcf8, 1, 8)
//	            DWordMemory (...0xc0000000 - 0xfbffffff...)  // where BARs go
//	        })
//	    }
//	    Device (COM1) {                      // the 16550A on ttyS0
//	        Name (_HID, EisaId ("PNP0501"))
//	        Name (_UID, 1)
//	        Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3f8, 0x3f8, 1, 8) IRQNoFlags () {4} })
//	    }
//	}
//
// Linux scans PCI buses only under an ACPI PCI root (PNP0A03); the root's
// memory window must hold the BARs gvmm assigns.
//
// In hardware-reduced mode Linux has no legacy PIC and sets up no ISA IRQ
// mappings on its own: a device's interrupt reaches it only through the
// GSI its _CRS names, which ACPI PnP registers with the IOAPIC.
func dsdtAML() []byte {
	var b []byte
	b = append(b, amlName("_S5_", amlPackage(amlInteger(sleepTypeS5), amlInteger(0), amlInteger(0), amlInteger(0)))...)
	b = append(b, amlScopeRoot("_SB_",
		amlDevice("PCI0",
			amlName("_HID", amlEISAID("PNP0A03")),
			amlName("_UID", amlInteger(0)),
			amlName("_SEG", amlInteger(0)),
			amlName("_BBN", amlInteger(0)),
			amlName("_CRS", resTemplate(
				resWordBusNumber(0, 0),
				resIO(portPCIAddr, 8),
				resDWordMemory(pciMMIOBase, pciMMIOEnd-1),
			)),
		),
		amlDevice("COM1",
			amlName("_HID", amlEISAID("PNP0501")),
			amlName("_UID", amlInteger(1)),
			amlName("_CRS", resTemplate(resIO(portCOM1, 8), resIRQNoFlags(irqCOM1))),
		),
	)...)
	return b
}

// acpiTables lays out RSDP, XSDT, FADT, MADT and DSDT from base upwards and
// returns the bytes to copy at base (the RSDP is at base).
func acpiTables(base uint64, ncpus int) ([]byte, error) {
	if ncpus < 1 || ncpus > MaxCPUs {
		return nil, fmt.Errorf("acpi: %d CPUs is outside 1..%d", ncpus, MaxCPUs)
	}
	const rsdpLen = 36
	xsdtOff := uint64(64)
	xsdtLen := uint64(acpiHeaderLen + 2*8)
	fadtOff := alignUp(xsdtOff+xsdtLen, 16)
	madtOff := alignUp(fadtOff+fadtLen, 16)
	madtLen := uint64(acpiHeaderLen + 8 + 8*ncpus + 12)
	dsdtOff := alignUp(madtOff+madtLen, 16)
	aml := dsdtAML()
	dsdtLen := uint64(acpiHeaderLen + len(aml))
	total := dsdtOff + dsdtLen
	if base+total > acpiEnd {
		return nil, fmt.Errorf("acpi: tables (%d bytes) overflow the BIOS area", total)
	}
	b := make([]byte, total)
	le := binary.LittleEndian

	// DSDT
	dsdt := b[dsdtOff : dsdtOff+dsdtLen]
	acpiHeader(dsdt, "DSDT", 2)
	copy(dsdt[acpiHeaderLen:], aml)
	acpiChecksum(dsdt, 9)

	// MADT
	madt := b[madtOff : madtOff+madtLen]
	acpiHeader(madt, "APIC", 5)
	le.PutUint32(madt[36:], lapicAddr)
	le.PutUint32(madt[40:], 0) // flags: no dual 8259 in use
	off := 44
	for i := 0; i < ncpus; i++ {
		madt[off] = 0 // Processor Local APIC
		madt[off+1] = 8
		madt[off+2] = byte(i) // ACPI processor UID
		madt[off+3] = byte(i) // APIC ID
		le.PutUint32(madt[off+4:], 1)
		off += 8
	}
	madt[off] = 1 // I/O APIC
	madt[off+1] = 12
	madt[off+2] = 0 // IOAPIC ID
	le.PutUint32(madt[off+4:], ioapicAddr)
	le.PutUint32(madt[off+8:], 0) // GSI base
	acpiChecksum(madt, 9)

	// FADT
	fadt := b[fadtOff : fadtOff+fadtLen]
	acpiHeader(fadt, "FACP", fadtRevision)
	le.PutUint32(fadt[40:], uint32(base+dsdtOff)) // DSDT
	le.PutUint16(fadt[46:], 9)                    // SCI_INT (unused in hw-reduced mode)
	le.PutUint16(fadt[109:], iapcNoVGA|iapcNoCMOSRTC)
	le.PutUint32(fadt[112:], fadtFlagHWReducedACPI|fadtFlagResetRegSup|fadtFlagPwrButton|fadtFlagSlpButton)
	putGAS(fadt[116:], portResetReg)
	fadt[128] = resetValue
	fadt[131] = 0                            // FADT minor version
	le.PutUint64(fadt[140:], base+dsdtOff)   // X_DSDT
	putGAS(fadt[244:], portSleepCtl)         // SLEEP_CONTROL_REG
	putGAS(fadt[256:], portSleepStatus)      // SLEEP_STATUS_REG
	copy(fadt[268:], "GVMM\x00\x00\x00\x00") // hypervisor vendor identity
	acpiChecksum(fadt, 9)

	// XSDT
	xsdt := b[xsdtOff : xsdtOff+xsdtLen]
	acpiHeader(xsdt, "XSDT", 1)
	le.PutUint64(xsdt[36:], base+fadtOff)
	le.PutUint64(xsdt[44:], base+madtOff)
	acpiChecksum(xsdt, 9)

	// RSDP (ACPI 2.0+)
	rsdp := b[:rsdpLen]
	copy(rsdp, "RSD PTR ")
	copy(rsdp[9:], acpiOEMID)
	rsdp[15] = 2 // revision
	le.PutUint32(rsdp[20:], rsdpLen)
	le.PutUint64(rsdp[24:], base+xsdtOff)
	rsdp[8] = checksum(rsdp[:20])
	rsdp[32] = checksum(rsdp)
	return b, nil
}

// acpiHeader fills the common 36-byte system description table header,
// leaving the checksum zero.
func acpiHeader(t []byte, sig string, rev byte) {
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[8] = rev
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	binary.LittleEndian.PutUint32(t[24:], 1)
	copy(t[28:32], acpiCreatorID)
	binary.LittleEndian.PutUint32(t[32:], 1)
}

// putGAS writes a Generic Address Structure for a one-byte I/O port.
func putGAS(b []byte, port uint16) {
	b[0] = gasSystemIO
	b[1] = 8
	b[2] = 0
	b[3] = gasAccessByte
	binary.LittleEndian.PutUint64(b[4:], uint64(port))
}

// acpiChecksum sets t[at] so that the bytes of t sum to zero.
func acpiChecksum(t []byte, at int) {
	t[at] = 0
	t[at] = checksum(t)
}

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
