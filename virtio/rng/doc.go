// Package rng is virtio-rng (virtio 1.2 §5.4): the guest posts writable
// buffers on its one queue and the device fills them from crypto/rand.
//
// It owns only its request handling; the virtio package owns the queue and
// transport. The guest is hostile: it can post buffers covering all of its
// RAM, so each request is filled with at most MaxPerRequest bytes (the spec
// lets the device write fewer bytes than offered), and readable buffers are
// ignored.
package rng
