package vmm

// Guest physical addresses of the boot-time structures. See doc.go.
const (
	pageSize = 0x1000

	gdtAddr       = 0x500
	zeroPageAddr  = 0x7000
	bootStackTop  = 0x8ff0
	pml4Addr      = 0x9000
	pdptAddr      = 0xa000
	pdAddr        = 0xb000 // four page directories: 0xb000..0xefff
	cmdlineAddr   = 0x20000
	cmdlineMaxLen = 0x10000

	ebdaStart = 0x9fc00
	acpiAddr  = 0xe0000 // RSDP; the other tables follow
	acpiEnd   = 0xffff0
	// resetVector is f000:fff0, where a CPU leaving for "the BIOS"
	// lands; gvmm keeps a stub there (see resetStub).
	resetVector  = 0xffff0
	highMemStart = 0x100000 // protected-mode kernel is loaded here

	// kernelMinLoad is LOAD_PHYSICAL_ADDR of x86-64 kernels: the
	// decompressor never extracts below it.
	kernelMinLoad = 0x1000000

	mmioHoleStart = 0xc0000000
	mmioHoleEnd   = 0x100000000
	ioapicAddr    = 0xfec00000
	lapicAddr     = 0xfee00000
	identityMap   = 0xfffbc000 // KVM_SET_IDENTITY_MAP_ADDR (one page)
	tssAddr       = 0xfffbd000 // KVM_SET_TSS_ADDR (three pages)

	// MinMemory is the smallest guest RAM gvmm accepts: a decompressed
	// kernel alone needs tens of MiB above 16 MiB.
	MinMemory = 64 << 20
	// MaxCPUs is bounded by the 8-bit APIC IDs of the MADT entries used.
	MaxCPUs = 254
)

// I/O ports of the devices gvmm emulates in user space.
const (
	portCOM1        = 0x3f8
	portCMOSIndex   = 0x70
	portCMOSData    = 0x71
	portI8042Cmd    = 0x64
	portResetCF9    = 0xcf9
	portPCIAddr     = 0xcf8
	portPCIData     = 0xcfc
	portSleepCtl    = 0x600 // FADT SLEEP_CONTROL_REG
	portSleepStatus = 0x601 // FADT SLEEP_STATUS_REG
	portResetReg    = 0x604 // FADT RESET_REG
	resetValue      = 0x1
	irqCOM1         = 4
)

// e820 entry types.
const (
	e820RAM      = 1
	e820Reserved = 2
)

// memRegion is a range of guest-physical RAM.
type memRegion struct {
	GPA  uint64
	Size uint64
}

// ramLayout splits size bytes of RAM around the device hole below 4 GiB.
func ramLayout(size uint64) []memRegion {
	if size <= mmioHoleStart {
		return []memRegion{{0, size}}
	}
	return []memRegion{{0, mmioHoleStart}, {mmioHoleEnd, size - mmioHoleStart}}
}

// e820Entry mirrors struct boot_e820_entry (packed, 20 bytes).
type e820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// e820Map describes RAM to the guest: low memory up to the EBDA, a reserved
// range up to 1 MiB that holds the ACPI tables, then the RAM regions.
func e820Map(regions []memRegion) []e820Entry {
	m := []e820Entry{
		{0, ebdaStart, e820RAM},
		{ebdaStart, highMemStart - ebdaStart, e820Reserved},
	}
	for _, r := range regions {
		start, end := r.GPA, r.GPA+r.Size
		if start < highMemStart {
			start = highMemStart
		}
		if end > start {
			m = append(m, e820Entry{start, end - start, e820RAM})
		}
	}
	return m
}
