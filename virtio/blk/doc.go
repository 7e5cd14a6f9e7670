// Package blk is virtio-blk (virtio 1.2 §5.2) backed by a raw image file:
// read, write, flush, discard (by punching holes), get-id, and a read-only
// mode. Requests run on a worker goroutine per queue (virtio.Workers), off
// the vCPU threads, and move data directly between the file and guest RAM
// (pread/pwrite into views from GuestMemory.Slice, then MarkDirty).
//
// It owns the image file and the request semantics; the virtio package owns
// the queue and transport.
//
// # Threat model
//
// The guest is hostile. Every request is checked before the file is
// touched: the header must be 16 readable bytes and the status byte the last
// writable one; data lengths must be whole sectors; a sector range must lie
// inside the image without overflowing; writes and discards to a read-only
// image and unknown request types never reach the file. Such requests end
// with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP in their status byte,
// never with a VMM error. A chain with no writable byte at all cannot carry
// a status and is returned unused (length 0). Descriptor-level attacks are
// stopped earlier, by virtio.Queue.
package blk
