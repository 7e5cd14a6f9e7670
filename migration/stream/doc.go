// Package stream is gvmm's live-migration wire format: guest pages, state
// blobs and a CPU compatibility record sent from a source to a destination
// over 1 to MaxConnections byte streams (TCP connections, pipes), with zero
// pages sent as address runs, adaptive zstd compression of page batches,
// AES-256-GCM on every record and a final authenticated manifest.
//
// The package is a leaf: it imports the standard library and
// github.com/klauspost/compress only, and knows nothing of KVM or devices.
//
// # API
//
// The source builds a Sender over its connections, sends pages pass by
// pass, then state, then finishes and waits for the destination's
// acknowledgement:
//
//	s, _ := stream.NewSender(conns, key, stream.Options{GuestMemSize: size, CPU: cpuRecord})
//	s.SendRange(ctx, 0, guestRAM)   // pass 0: everything
//	s.EndPass(ctx)
//	s.Drain(ctx)                    // optional: wait until the pass is on the wire
//	s.SendPages(ctx, dirtyPages)    // pass 1, 2, ...: dirty pages
//	s.EndPass(ctx)
//	s.SendState(ctx, "vcpu/0", blob) // during the blackout
//	stats, _ := s.Finish(ctx)
//	err := s.AwaitAck(ctx, conns[0]) // only now may the source stop
//
// The destination accepts the connections and runs a Receiver, which
// writes pages into a Memory as they arrive; Run returns nil only after
// the manifest verified, and any error means "discard everything":
//
//	r, conns, _ := stream.Accept(ctx, ln, key, guestMem, stream.ReceiverOptions{CheckCPU: check})
//	res, err := r.Run(ctx)          // res.States, res.CPU
//	r.Acknowledge(ctx, conns[0])    // after the machine is ready to resume
//
// # Wire format (version 1)
//
// All integers are big-endian. Every connection opens with a 64-byte
// plaintext header:
//
//	off len
//	  0   8  magic "GVMMSTRM"
//	  8   2  format version (1)
//	 10   2  header length after this field (52)
//	 12   8  feature bits the sender uses (bit 0: zstd, bit 1: progress
//	         reports); unknown bits are refused
//	 20  16  stream id (one per migration, never reused with a key)
//	 36   2  connection index
//	 38   2  connection count
//	 40   4  page size (4096)
//	 44   8  guest memory size in bytes (page-aligned)
//	 52   4  largest record body the sender writes
//	 56   4  most pages in one batch
//	 60   2  cipher suite (1: AES-256-GCM)
//	 62   2  reserved, zero
//
// Negotiation is one-way, as the stream is: the sender declares its
// version, features and parameters; the destination refuses the stream if
// it does not support them or if they exceed its Limits. Only version 1
// exists; a later version keeps reading the previous one.
//
// Then records, each a 16-byte plaintext record header and a sealed body:
//
//	type u8 | flags u8 (0) | connection u16 | length u32 | sequence u64 |
//	AES-256-GCM(body) + 16-byte tag                        (length bytes)
//
// The record header is the GCM additional data; the nonce is 4 zero bytes
// and the sequence number, which starts at 0 on each connection and grows
// by one per record. Each connection (and direction) has its own key:
//
//	HKDF-SHA256(key, salt = stream id,
//	            info = "gvmm migration stream v1 <direction> " + header bytes)
//
// so no two connections, streams or directions share a key and nonce, and a
// header changed in transit fails the first record. A flipped byte fails
// the tag; a reordered, dropped, duplicated or replayed record has the
// wrong sequence number; a record moved to another connection has the
// wrong connection field and key; a truncated stream lacks its final
// records. Every length is checked before anything is allocated: the
// record length against the declared maximum (itself bounded by the
// destination's Limits), then each field inside the authenticated body.
//
// Record types (ids are stable and never reused) and bodies:
//
//	1 cpu        opaque CPU compatibility data (CPUID, XSAVE size, TSC
//	             frequency: the caller's encoding); connection 0, first record
//	2 pages      pass u32 | flags u8 (bit 0: zstd) | npages u32 | nruns u32 |
//	             runs | data: npages×4096 bytes, or one zstd frame of them
//	3 zero-runs  pass u32 | nruns u32 | runs
//	4 state      id length u16 | component id ("vcpu/0") | data; connection 0
//	5 end-pass   pass u32; on every connection
//	6 conn-end   passes u32; last record of connections 1..N-1
//	7 manifest   passes u32 | pages u64 | zero pages u64 | states u32 |
//	             nconns u16 | nconns × (records u64 | running hash [32]);
//	             last record of connection 0
//	8 ack        running hash [32] of connection 0 after the manifest; the
//	             last record of the reverse direction
//	9 progress   pass u32: the destination has applied every page of that
//	             pass; reverse direction, only with the progress feature
//
// The reverse direction (destination to source on connection 0) has its
// own key and sequence numbers from 0: without the progress feature it
// carries the ack alone (sequence 0); with it, one progress record per
// applied pass (increasing passes, reports may coalesce) and then the ack.
// A source waits for the destination to catch up with them before it
// pauses the guest, so that the megabytes still in the sockets' buffers
// are not drained during the blackout.
//
// Runs are pairs of uvarints: the gap in bytes from the end of the previous
// run (from address 0 for the first) and a page count. Every run start must
// be page-aligned, and every run inside the guest memory size; runs are
// increasing and do not overlap. A zero page thus costs a few bits to a
// few bytes on the wire.
//
// The running hash of a connection starts as SHA-256 of a label and the
// header, and absorbs each record's header and tag (which commits to the
// record under the connection's key): h' = SHA-256(h | header | tag). The
// manifest lists, for each connection, its record count and hash: for
// connection 0 up to the record before the manifest, for the others up to
// and including conn-end.
//
// # State machine
//
// Per connection, as the destination enforces it:
//
//	HEADER ──► [CPU]¹ ──► PASS(k) ──pages(k)/zero-runs(k)/state²──► PASS(k)
//	                         │
//	                         ├── end-pass(k) ──barrier──► PASS(k+1)
//	                         ├── conn-end(k)  (connections 1..N-1) ──► DONE
//	                         └── manifest     (connection 0)       ──► DONE
//
// ¹ required as connection 0's first record when the destination checks
// CPU compatibility; other connections wait until it has been checked.
// ² state records only on connection 0.
//
// A page or zero-run record carries its pass, which must be the
// connection's current pass. At end-pass(k) a connection waits until every
// connection has reached end-pass(k): no page of pass k+1 is written into
// memory before every page of pass k, whatever the connections' relative
// speed, so a page resent in a later pass always wins. Within a pass the
// sender sends a page at most once. After every connection is DONE the
// destination checks the manifest (passes, page and zero-page counts,
// states, each connection's record count and hash); only then does Run
// succeed. The destination reads no connection past its final record:
// bytes after it are not part of the stream and are never applied. The
// destination then sends ack once it is ready to take over; the source
// stays authoritative until it has verified the ack.
//
// # Pages and compression
//
// Sender workers (GOMAXPROCS by default) take batches of up to BatchPages
// pages, find zero pages with bytes.Equal against a zero page (the
// runtime's vectorised memequal), emit them as one zero-runs record, and
// pack the rest into a pages record. With CompressAuto each worker tries
// zstd (its fastest level) on a batch where that saves time: the batch
// goes to a connection whose queue of sealed records is full (the link is
// the bottleneck), or, by the worker's running costs (nanoseconds per byte
// to compress and to seal, and the ratio), compressing costs less CPU than
// sealing the bytes it saves; otherwise one batch in 256 is tried to keep
// those costs current. A batch stays compressed only when it shrinks by
// more than 1/16; when a window of 8 tried batches compressed to more than
// 90 % of their raw size, the worker stops trying for 32 batches, doubling
// up to 2048 while it keeps not paying, and probes again after each pause.
package stream
