// Package memguard protects a guest process's memory from the rest of its
// guest, the guest kernel included, and measures guest memory at run time.
//
// gvmm owns the guest-physical mappings (KVM memory slots, which KVM turns
// into EPT/NPT entries). A process registers a range of its own virtual
// memory; gvmm translates it to guest-physical pages by walking the
// process's page tables, and takes those pages out of the guest's ordinary
// mapping: integrity pages sit in read-only slots (KVM_MEM_READONLY), so
// guest writes exit; confidential pages have no slot at all, so every
// guest access exits. Each such exit reaches HandleAccess, which completes
// the access on the backing page when the accessor is the owner in user
// mode and refuses it otherwise (reads see zeros, writes are dropped),
// counting and logging the violation. Everything else runs at full speed.
//
// The package is a leaf: it computes; the VMM applies. It takes guest RAM
// through the small Memory interface and returns slot layouts and
// registers as plain data.
//
// # Guest ABI
//
// Ports 0x520-0x523 (Port). A request is one 32-bit OUT to port 0x520
// from CPL 3 in 64-bit mode: on Linux, a root process that called
// ioperm(0x520, 4, 1) on the same thread (ioperm is per thread), with the
// port in DX:
//
//	EAX  operation (the value written)
//	RBX, RCX, RSI, RDI  arguments
//	RDX  0x520 (the port; unchanged)
//
// Only EAX counts: the upper half of RAX is ignored. When OUT completes,
// RAX holds 0 on success or a negated Linux errno, and the other
// registers hold results as below; registers not named are unchanged.
// Requests from CPL 0-2, or outside 64-bit paging (4-level, or 5-level
// with CR4.LA57), are refused with -EPERM; accesses of other sizes, string
// OUTs and IN from the port do nothing (IN reads all ones). On a machine
// without the device the OUT leaves RAX unchanged, so a library that sees
// its operation number come back knows there is none.
//
//	op 1 VERSION     -> RBX = ABI version (1), RCX = max regions, RSI = max pages
//	op 2 REGISTER    RBX = virtual address (4 KiB aligned),
//	                 RCX = length in bytes (4 KiB multiple, > 0),
//	                 RSI = mode (1 integrity, 2 confidential)
//	                 -> RBX = region id (> 0)
//	op 3 UNREGISTER  RBX = region id: wipes the pages, then releases them
//	op 4 MEASURE     RBX = region id -> RBX, RCX, RSI, RDI = SHA-256 of the
//	                 region in virtual-address order (bytes 0-7 in RBX,
//	                 little endian, and so on)
//
// Error codes (RAX = -code):
//
//	EPERM     1   not from CPL 3 in 64-bit paging, or not the region's owner
//	ENOENT    2   no such region
//	EACCES   13   the range maps memory outside RAM (the device hole, PCI
//	              BARs, the APICs), RAM gvmm reserves (boot and firmware
//	              tables) or one of the owner's own page tables
//	EFAULT   14   a page is not mapped, not a user page, or not writable
//	EBUSY    16   overlaps a region of the same owner (virtual) or of anyone
//	              (physical), or maps one physical page twice
//	EINVAL   22   bad mode, unaligned or empty range
//	ENOSPC   28   per-VM limit on regions, pages or memory slots reached
//	              (each run of protected pages splits a RAM slot; the
//	              layout must fit KVM_CAP_NR_MEMSLOTS with headroom)
//	ENOSYS   38   unknown operation
//	EOVERFLOW 75  the range wraps or leaves the user half of the address space
//
// Every refusal is logged on the host with the vCPU, RIP, CR3 and CPL.
//
// # Owner
//
// The owner is the address space that was active on the vCPU when the
// request arrived: CR3 bits 51:12 (the PCID or PWT/PCD bits 11:0 and the
// no-flush bit 63 masked), in user mode. With Linux's page-table isolation
// the user-mode CR3 is the user copy of the top-level table (bit 12 set);
// both the registration and every owner access happen in user mode, so
// both see that copy, and the root is compared exactly (masking bit 12
// would merge adjacent top-level tables of a kernel without isolation).
// Every thread of the owner process is the owner; the guest kernel never
// is, not even running on the owner's page tables, since only CPL 3
// accesses count.
//
// The binding of virtual to physical pages is fixed at registration. The
// guest library therefore maps the buffer itself, populates it, mlocks it
// (no swap), and sets MADV_DONTFORK (no copy-on-write sharing after fork)
// and MADV_NOHUGEPAGE (no collapse into a huge page); a kernel that moves
// the pages anyway (compaction, migration) copies zeros, and the owner is
// then treated as gone (below).
//
// An owner that exits without unregistering leaves its pages to the
// kernel. CheckOwners (called periodically) walks each region's recorded
// top-level table again; the owner
// is alive only if every page still maps, as a user page, to the same
// physical page through the same last-level table page. Otherwise gvmm
// wipes the pages and releases them, so the kernel can reuse them without
// seeing the secret. The same check, for the one page, runs before any
// access by someone other than the owner is refused: when the kernel
// reuses a dead owner's page before the periodic check, its first access
// finds the owner gone, the region is wiped and released, and the access
// completes on the now ordinary page, so the kernel's own data is never
// lost. A registration that meets a bound page checks that page's owner
// the same way before refusing. A freed top-level table reused for
// another process no longer leads to the same table pages and frames
// unless the kernel reused every one of them in the same place.
//
// # What is protected against what
//
// Protected, for a region:
//   - Confidential contents against reads by any other process (ptrace,
//     /proc/PID/mem, process_vm_readv, shared mappings of the same frame)
//     and by the guest kernel: they exit and read zeros.
//   - Confidential and integrity contents against writes by any of them
//     (the kernel writing through /proc/PID/mem, a rogue driver): dropped.
//   - Every such attempt is counted and logged with vCPU, guest-physical
//     address, RIP, CR3 and CPL, and can become a #GP in the guest
//     (Config.InjectFaults).
//   - Emulated DMA, if the VMM hands its devices DMA(mem) instead of
//     guest RAM itself; unexpected changes of a region (including by DMA the
//     VMM did not filter) show up as violations at the next measurement.
//   - On the host: the backing pages are locked (mlock) and, as all guest
//     RAM, excluded from core dumps; gvmm's own keys live in Secret.
//
// Not protected:
//   - The owner's own use of its data: an owner that passes a protected
//     buffer to a system call (write(2), send(2)) has the kernel read it
//     at CPL 0, which reads zeros (a violation); it must copy the data out
//     first, and what it copies out is unprotected.
//   - A hostile kernel running its own code at CPL 3 on the owner's page
//     tables (by scheduling a thread into the owner's mm, or by changing
//     the owner's code pages, which are not protected): gvmm identifies
//     address spaces, not programs. Protect the code as an integrity
//     region to narrow this; it does not close it, since the kernel can
//     map other code into the same address space.
//   - A kernel that remaps the owner's virtual range to ordinary pages of
//     its choosing: the owner's later loads and stores go there without
//     exiting, so what the owner writes after the remap is exposed. What
//     it wrote before stays protected (the next check finds the binding
//     changed and wipes the region). The owner can detect this afterwards
//     (MEASURE hashes the bound pages, which no longer hold what it
//     wrote) but not prevent it: the guest kernel owns the page tables.
//   - A kernel that keeps a dead owner's page tables alive delays the
//     release; it gains nothing by that, since only CPL 3 code on those
//     tables is the owner (see above).
//   - Instruction fetch from a confidential page, and accesses with
//     instructions KVM's emulator does not implement (AVX and most vector
//     loads and stores): KVM reports an emulation failure instead of an
//     MMIO exit. The owner uses plain integer loads and stores, as the
//     guest library does. A page table inside a protected page would
//     break the CPU's own walks; registration refuses the owner's tables.
//   - Side channels (access timing, exit counts) and the guest's view of
//     which pages are protected.
//   - The guest from its own root: any process with the port (root) can
//     protect any frame it maps writable, shared memory and, where
//     /dev/mem allows, kernel memory included, and so take it away from
//     the other processes or the kernel; root can harm its guest anyway.
//     Ports are the guest kernel's to grant, so the guest decides who may
//     register at all.
//   - Memory outside regions, and the register state of the owner (the
//     kernel saves it on every interrupt).
//   - The host and whoever holds gvmm's files: a snapshot file (gvmm
//     snapshot) holds the protected pages in the clear with the rest of
//     guest RAM, and the registry beside them; only live migration
//     carries them under the stream's encryption. The host's root can
//     read guest RAM anyway: memguard hides a process from its own guest,
//     not from the host.
//   - Measured ranges (AddRange, such as the kernel's code) are hashed,
//     not protected: the guest writes them at full speed, and a change
//     that is undone between two measurements is not seen. A measurement
//     says what the bytes were at that moment.
//   - DMA by a device gvmm does not emulate (there is none today: every
//     device is a virtio device of gvmm's, and each access goes through
//     DMA at the time the device makes it).
//
// # Measurement
//
// SHA-256 of each region (in virtual-address order) and of guest-physical
// ranges registered with AddRange (for example the kernel text), on
// request (OpMeasure, MeasureRegion, MeasureAll) and periodically (Run).
// Each goes into the measurement log (bounded, oldest dropped first) with
// its time and trigger; a region whose digest changed without an owner
// write through gvmm since the previous measurement is a violation, and
// counts as an unexpected change of that region for as long as it exists
// (RegionStatus.Unexpected, kept across Save and Restore).
//
// In attestation: when a migration's destination asks the source to
// attest (its host policy's require_source_attestation), gvmm measures
// every region and range once more and the source's quote covers a report
// of the digests, the unexpected changes and the violation count (package
// policy's RuntimeReport, bound to the migration; package gate measures
// it into the TPM). The destination's policy can require a report with no
// unexpected change (require_source_runtime) and pin ranges to digests
// (require_ranges), such as the guest kernel's code.
//
// # The VMM's part
//
// On a 32-bit OUT to Port: HandleIO with the vCPU's registers and context,
// write the registers back, and when LayoutChanged apply Slots with every
// vCPU paused, before this vCPU runs again. On an MMIO exit: HandleAccess
// first; when it is not Handled, dispatch as before. Devices get guest
// RAM through DMA. Periodically:
// CheckOwners (apply Slots if it released anything) and MeasureAll, or
// Run. For migration: Save while paused; Restore on the destination
// before resuming, then apply Slots. Memory.WriteAt, which the guard uses
// for every write it makes for an owner and for every wipe, must mark the
// VMM-side dirty bitmap, so a live migration sends those pages again
// (KVM's dirty log does not see them: they have no writable slot).
//
// gvmm (package vmm) does all of this: a machine with no region keeps
// one memory slot per RAM region, exactly as without memguard, and only
// a registration splits them; a refused access becomes a #GP in the guest
// with gvmm run --memguard-faults; measured ranges are added and
// everything measured on request with gvmm measure (PUT /v1/vm/measure),
// and gvmm status shows regions, ranges, violations and the latest
// measurement log entries.
package memguard
