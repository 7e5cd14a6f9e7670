package net

import (
	"context"
	"errors"
)

// HeaderLen is the size of struct virtio_net_hdr_v1, which starts every
// packet crossing a Backend.
const HeaderLen = 12

// MaxPacket is the largest packet, header included, the device sends or
// receives: a 64 KiB GSO packet with its Ethernet and VLAN headers.
const MaxPacket = HeaderLen + 65535 + 14 + 4

// ErrWouldBlock is what Backend.ReadPacket returns when no packet waits.
var ErrWouldBlock = errors.New("virtio-net: no packet waiting")

// Backend carries packets between the device and the host. Each packet is
// a struct virtio_net_hdr_v1 (HeaderLen bytes, little-endian) followed by
// an Ethernet frame. The device calls the receive methods (ReadPacket,
// WaitPacket) from one goroutine and WritePacket from another.
type Backend interface {
	// ReadPacket reads one packet into p without blocking and returns its
	// length, or ErrWouldBlock when none is waiting. A packet longer than
	// p may be truncated.
	ReadPacket(p []byte) (int, error)
	// WaitPacket blocks until a packet may be waiting or ctx ends, when it
	// returns ctx's error. It may return early with nothing waiting. Call
	// it only after ReadPacket returned ErrWouldBlock.
	WaitPacket(ctx context.Context) error
	// WritePacket sends one packet gathered from bufs, in order. It does
	// not keep bufs (they are views of guest RAM).
	WritePacket(bufs [][]byte) error
	// Offloads reports which of OffloadFeatures the backend can carry.
	Offloads() uint64
	// SetOffloads tells the backend which guest receive offloads
	// (FGuestCsum, FGuestTSO4, FGuestTSO6, FGuestECN) the driver accepted;
	// it must put checksum and GSO fields in received headers only for
	// those.
	SetOffloads(features uint64) error
	// Close releases the backend.
	Close() error
}
