// Package virtio implements virtio 1.2 devices for gvmm: split virtqueues
// (§2.7) with indirect descriptors and event-index suppression, the modern
// virtio-pci transport (§4.1) as a PCI function model with MSI-X, and the
// scaffolding device types share (Device, Env, Workers). Device types live
// in subpackages (virtio/blk, virtio/rng).
//
// The package owns no KVM or machine state and imports neither kvm nor vmm.
// It sees guest RAM through GuestMemory, reaches the guest through the
// Interrupter the VMM supplies, and is reached by the VMM through PCI
// configuration accesses (PCI.ConfigRead/ConfigWrite), BAR MMIO accesses
// (PCI.BARRead/BARWrite) and queue notifications (PCI.Notify, which an
// ioeventfd handler calls).
//
// # Threat model
//
// The guest is hostile. Everything it can write (descriptor tables, rings,
// indices, configuration registers, MSI-X tables) is read once per use,
// validated, and only then acted on. A malformed descriptor chain (a loop,
// a chain longer than the queue, an index out of the table, an address or
// length outside guest RAM or overflowing uint64, an indirect table inside
// an indirect table or with a bad length, a device-readable descriptor after
// a device-writable one) or an available index that runs more than the
// queue size ahead makes the queue fail for good: the device is marked
// broken, DEVICE_NEEDS_RESET is set in device_status and a configuration
// change interrupt is raised (§2.1.2). Nothing the guest writes can make
// the VMM panic, allocate without bound, or write outside guest RAM: every
// byte the devices write goes through GuestMemory.WriteAt, or through a
// GuestMemory.Slice followed by GuestMemory.MarkDirty, so the VMM-side dirty
// bitmap that live migration ORs with KVM's dirty log sees it.
//
// # Wiring a device into the machine
//
// The VMM makes the device (blk.Open, rng.New) and wraps it with NewPCI,
// giving guest memory (*vmm.Memory satisfies GuestMemory), an Interrupter
// and PCIOptions.BARAddr, a BARSize-aligned address in the MMIO hole. Then:
//
//   - PCI configuration mechanism #1 (0xCF8/0xCFC): for the function's
//     bus/device/function, forward each data-port access to
//     PCI.ConfigRead/ConfigWrite with the register offset (address & 0xfc
//     plus the port offset within 0xCFC..0xCFF).
//   - MMIO exits in [BAR0, BAR0+BARSize): PCI.BARRead/BARWrite with the
//     offset. BAR0 reports the current address; PCIOptions.OnBARMove says
//     when the guest moves it (memory decoding: bit 1 of the command
//     register, also from BAR0).
//   - Notifications: make a Doorbell per queue, give them to NewPCI
//     (PCIOptions.Doorbells) and bind each as an ioeventfd (KVM_IOEVENTFD,
//     MMIO, no datamatch, Doorbell.FD) at BAR0+NotifyOffset(q). The queue's
//     worker waits on its doorbell itself (NewKick), so a kick wakes it
//     with no goroutine in between. Without doorbells, or when the guest
//     moved the BAR, the BARWrite path (PCI.Notify) reaches the device.
//   - Interrupts: implement Interrupter. MSIX(vector, msg) is called only
//     for an enabled, unmasked vector (the transport keeps the PBA); it can
//     call KVM_SIGNAL_MSI with msg, or write an irqfd bound to a GSI whose
//     MSI route it updates when msg changes. INTx(level) drives the
//     function's INTA# line while MSI-X is off.
//   - Shutdown: PCI.Close stops the workers; then blk's Device.Close.
//
// # Concurrency and memory ordering
//
// The guest runs concurrently on its vCPUs and may change rings while a
// device reads them. Each guest field is read once into a local variable and
// validated there; the validated copy is what is used. Ordering between the
// device and the driver on amd64 (the only architecture gvmm runs on) comes
// from x86-TSO, which keeps loads ordered with loads and stores with stores,
// plus a full barrier (a LOCK-prefixed atomic, Queue.fence) wherever the
// virtio spec needs a store to be visible before a later load (publishing
// avail_event or the used index and then reading the driver's index or
// used_event). The ioeventfd and irqfd system calls that carry notifications
// and interrupts are themselves full barriers, so a driver woken by an
// interrupt sees the used ring that preceded it, and a device woken by a
// notification sees the available ring that preceded it.
//
// Each virtqueue is owned by one worker goroutine between DRIVER_OK and
// reset; configuration accesses come from vCPU threads and are serialized
// by the transport, which stops the workers (waiting for them) before it
// resets a device.
package virtio
