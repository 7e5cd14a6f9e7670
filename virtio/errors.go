package virtio

import "errors"

// Errors a malformed queue or descriptor chain yields. All of them wrap
// ErrBroken, after which the queue refuses further work until reset.
var (
	// ErrBroken is wrapped by every error that marks a queue broken.
	ErrBroken = errors.New("virtqueue broken")
	// ErrAvailIdx: the driver's available index ran more than the queue
	// size ahead of what the device consumed.
	ErrAvailIdx = brokenError("available index out of range")
	// ErrDescIndex: a head or next index outside the descriptor table.
	ErrDescIndex = brokenError("descriptor index out of range")
	// ErrChainLoop: a chain visits more descriptors than its table holds,
	// which is a loop or a chain longer than the queue size.
	ErrChainLoop = brokenError("descriptor chain loops or exceeds the table size")
	// ErrDescRange: a buffer outside guest RAM or whose end overflows.
	ErrDescRange = brokenError("descriptor buffer outside guest RAM")
	// ErrDirection: a device-readable descriptor after a device-writable one.
	ErrDirection = brokenError("device-readable descriptor after a device-writable one")
	// ErrIndirect: an indirect descriptor that is not allowed where it is
	// (not negotiated, not the head, with NEXT set, inside an indirect
	// table) or whose table length is zero, not a multiple of 16 or too big.
	ErrIndirect = brokenError("bad indirect descriptor")
	// ErrRing: the rings themselves are outside guest RAM.
	ErrRing = brokenError("virtqueue ring outside guest RAM")
)

type brokenErr struct{ msg string }

func (e *brokenErr) Error() string { return e.msg }
func (e *brokenErr) Unwrap() error { return ErrBroken }
func brokenError(msg string) error { return &brokenErr{msg} }
