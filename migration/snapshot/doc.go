// Package snapshot is gvmm's snapshot file: a paused machine's guest
// memory and state components in one versioned file, written by
// gvmm snapshot --to FILE and read by gvmm run --restore FILE. It shares
// Region and Component with package migration and imports nothing else of
// gvmm.
//
// # Format (version 1)
//
// All integers are big-endian.
//
//	header (48 bytes)
//	  off len
//	    0   8  magic "GVMMSNAP"
//	    8   2  version (1)
//	   10   2  flags (0)
//	   12   4  region count
//	   16   4  component count
//	   20   4  CPU record length
//	   24   4  machine record length
//	   28   4  reserved (0)
//	   32   8  created, Unix nanoseconds (0: unknown)
//	   40   8  total state bytes (sum of the component lengths)
//	region table       count × (gpa u64 | size u64), by increasing gpa,
//	                   page-aligned, non-empty, not overlapping
//	component table    count × (id length u16 | id | data length u64)
//	CPU record         Meta.CPU (opaque)
//	machine record     Meta.Machine (opaque)
//	memory             per region, in table order: a presence bitmap of
//	                   ceil(pages/8) bytes (bit i%8 of byte i/8 is page i,
//	                   bits past the last page zero), then the 4096 bytes
//	                   of each present page in order. Zero pages are
//	                   absent, and a present page is never all zero.
//	component data     in table order
//	trailer            SHA-256 of every byte above
//
// and nothing after the trailer. Every size is declared before the data it
// describes, and the encoding is canonical: one machine state has exactly
// one file.
//
// # Reading a file that may be hostile
//
// NewReader checks the header, the region and component tables and the
// metadata against Limits before allocating anything they size; Restore
// then requires the destination's regions to match the table exactly,
// reads pages straight into them, and refuses truncation, trailing bytes,
// a malformed bitmap, a stored zero page, and finally a trailer that does
// not match. When Restore (or Read) fails, the destination memory holds
// arbitrary bytes: the caller discards the machine.
//
// The SHA-256 trailer detects corruption (a flipped bit, a truncated
// copy); it is not authentication: anyone who can write the file can
// write a matching trailer. A snapshot file is as trusted as the place it
// is kept, unlike the migration stream, which is encrypted and
// authenticated.
package snapshot
