// Package console is virtio-console (virtio 1.2 §5.3, device type 3) with a
// single port, used as a host-guest channel: a byte stream between a
// host-side io.ReadWriteCloser (the VMM attaches it with Device.SetHost, for
// example one connection at a time from a unix socket) and the guest's
// /dev/hvc0.
//
// # The guest side
//
// The Debian kernel's virtio_console module (CONFIG_VIRTIO_CONSOLE) binds to
// the PCI function (vendor 0x1af4, device 0x1043). No feature is offered:
// without VIRTIO_CONSOLE_F_MULTIPORT, port 0 is a console port and appears
// as /dev/hvc0 (an hvc tty), not as /dev/vport*. The stream is
// protocol-agnostic bytes, but it passes through the guest's tty layer: a
// guest program must put the tty in raw mode first (cfmakeraw, or
// `stty -F /dev/hvc0 raw -echo`), or the guest echoes what the host sends
// and turns "\n" into "\r\n" on output. Nothing stops a getty or the kernel
// console (console=hvc0) from using the port as well; gvmm's guests use the
// serial console for that and leave hvc0 to the test program.
//
// # Data path
//
// Queue 0 (receiveq) carries host to guest: a goroutine per attached host
// side reads at most ChunkSize bytes and hands them to the device's receive
// goroutine, which writes them across as many of the guest's posted buffers
// as it takes (through virtio.Chain.WriteAt, so every byte is marked dirty)
// and waits, for a notification or the end of the activation, while the
// guest has no buffers. The reader does not read again until the chunk is
// all in the guest, so a guest that stops reading stops the host side
// (backpressure) and nothing is dropped or buffered beyond one chunk. A
// chunk a reset interrupts is kept and delivered after the next DRIVER_OK.
//
// Queue 1 (transmitq) carries guest to host: a virtio.Workers worker pops
// each chain and writes its readable bytes, in order, to the host side (in
// pieces of ChunkSize), then returns the chain with length 0. A slow host
// side slows the guest (Linux's hvc driver spins until the device returns
// the buffer), but a reset never waits for it.
//
// # Attach and detach
//
// The device runs whether or not a host side is attached, and the host side
// outlives guest resets. SetHost replaces the host side; EOF or an error on
// it detaches it; in every case the device closes it and closes the channel
// SetHost returned. While nothing is attached, guest output is discarded
// and counted in Stats.Discarded (logged once per detach), like a serial
// port with nothing plugged in: blocking the guest instead would hang its
// hvc writes, with interrupts off, until someone connects. Host bytes read
// before a detach are still delivered to the guest.
//
// # Threat model
//
// As in package virtio: a malformed chain breaks the queue (Env.Fail) and
// never panics the VMM. Readable descriptors in a receive chain and
// writable ones in a transmit chain are ignored; a huge transmit chain is
// streamed in ChunkSize pieces, so no guest value sizes an allocation.
package console
