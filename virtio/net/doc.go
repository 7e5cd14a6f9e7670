// Package net is virtio-net (virtio 1.2 §5.1) over a packet Backend, with
// OpenTAP as the backend for a Linux TAP device. Importers name it
// virtionet, since it shares its name with the standard library's net.
//
// The device has one receive and one transmit queue (queues 0 and 1) and no
// control queue. It offers VIRTIO_NET_F_MAC (the MAC from Options, else a
// random locally administered one), VIRTIO_NET_F_STATUS (the link is always
// up) and, where the backend can carry them, the checksum and TSO offloads
// (CSUM, GUEST_CSUM, HOST_TSO4/6, HOST_ECN, GUEST_TSO4/6, GUEST_ECN), and
// VIRTIO_NET_F_MRG_RXBUF: a received packet takes as many receive chains
// as it needs (at most the queue's size), so a driver with guest TSO posts
// small buffers rather than 64 KiB "big packet" chains; without it each
// packet takes exactly one chain.
//
// # Packets and headers
//
// Every packet that crosses the Backend starts with the 12-byte struct
// virtio_net_hdr_v1 (VIRTIO_F_VERSION_1 makes the header that size whatever
// else is negotiated), which a TAP opened with IFF_VNET_HDR and a vnet
// header size of 12 reads and writes as it is. Transmit passes the guest's
// header through unchanged; the kernel validates it. Receive passes the
// backend's header through with num_buffers set to the number of chains
// it took (§5.1.6.4); the
// backend adds checksum and GSO fields only for the guest offloads that
// Activate gave it through SetOffloads (the TAP's TUNSETOFFLOAD).
//
// # Event loop and workers
//
// With a backend that can be polled (PollBackend: the TAP) and queue
// doorbells from the transport (the VMM's ioeventfds), one goroutine
// serves both queues: it waits in its own epoll set for the backend, both
// doorbells and a stop eventfd, drains the transmit queue when kicked and
// moves received packets when the backend has some (eventLoop), as QEMU,
// Cloud Hypervisor and Firecracker do. A packet that waits for receive
// buffers does not hold up transmit. Otherwise transmit runs on a
// virtio.Workers goroutine and receive on its own goroutine.
//
// Transmit gathers each chain's readable buffers as views of guest RAM and
// hands them to the backend in one vectored write. Receive reads a packet
// from the backend into a host buffer, pops receive chains (waiting for
// the driver to post them, with notifications enabled only while it
// waits), and copies the packet in with virtio.Chain.WriteAt, which marks
// every byte dirty. It raises the queue's interrupt (as event-index
// suppression allows) when the backend has nothing more to read, before it
// waits for buffers, and at least every rxBatch packets; the event loop
// serves transmit between such batches.
//
// # Threat model
//
// The guest is hostile. Descriptor-level attacks are stopped by
// virtio.Queue and break the queue (Env.Fail). Beyond that: a transmit
// chain shorter than the header or longer than MaxPacket is dropped and
// counted, never sent; a receive chain too small for the packet is
// returned with length 0 and the packet is dropped and counted; receive
// chains' readable buffers and transmit chains' writable buffers are
// ignored. A packet the backend refuses (for instance a GSO header the
// kernel rejects) is counted as a transmit error and does not break the
// device.
package net
