// Package migration is gvmm's live migration: the pre-copy engine (Migrate
// on the source, Receive on the destination) over the encrypted
// multi-connection wire format of migration/stream, and the root of the
// package family:
//
//   - migration/stream is a leaf (standard library and
//     github.com/klauspost/compress only). It moves guest pages, state
//     blobs and a CPU compatibility record over one or more connections,
//     with zero-page runs, adaptive zstd, AES-256-GCM on every record,
//     per-pass ordering and a final authenticated manifest.
//   - migration (this package) drives a running machine through the
//     Source and Destination interfaces and decides when to switch over.
//   - migration/snapshot is the versioned snapshot file (gvmm snapshot
//     --to FILE, gvmm run --restore FILE), sharing Region and Component.
//
// Imports point one way: snapshot → migration → stream. None of them
// imports vmm or kvm; the machine implements Source and Destination, and
// cmd/gvmm wires both (var _ migration.Source = (*vmm.Machine)(nil)).
//
// # Pre-copy
//
// Migrate sends every page once (pass 0; zero pages cost a few bytes),
// then, pass after pass, the pages the dirty log reports as written during
// the previous pass. Each pass ends when its bytes are written to the
// connections (stream's Drain), not merely queued, so that no backlog is
// left for the blackout. After each pass Migrate measures the wire
// bandwidth and the wire cost of a non-zero page, and estimates the
// blackout as
//
//	dirty pages × wire bytes per page / bandwidth
//
// When that fits Options.MaxDowntime (300 ms by default), and once the
// destination has reported applying every pass sent (the stream's
// progress reports: a destination that decodes more slowly than the
// source sends is still draining the sockets' buffers when the last
// pass's bytes are written; that wait is Stats.CatchUp, and a long one
// is followed by one more pass), it switches over:
//
//	Pause → SaveState → TakeDirty → send those pages and the ones still
//	dirty from the last pass → send the components → Finish (manifest) →
//	AwaitAck
//
// The state is saved before the last pages are handed to the encryption
// workers, not beside them: SaveState runs on the vCPUs' own threads,
// which on a machine with few CPUs otherwise wait for the workers.
//
// The destination verifies the manifest, calls RestoreState, and only then
// acknowledges; Migrate returns success only after verifying that
// acknowledgement, leaving the source paused for the caller to stop.
//
// Auto-converge: a pass whose dirty set is more than half the pages the
// pass before sent is a "strike". Two strikes in a row start throttling the
// guest's vCPUs (Throttle(20)); every further strike adds 10 points, up to
// 99. MaxPasses (64) and Timeout (10 minutes) bound the whole migration:
// past them, or on any error or cancellation, Migrate aborts the stream,
// closes the connections (the destination sees a truncated stream and
// discards everything), ends throttling and dirty logging, and resumes the
// source if it had paused it. The source stays authoritative until the
// acknowledgement: the destination starts its vCPUs only after Receive
// returned success, which it does only after sending the acknowledgement.
// (If the link fails after the destination acknowledged but before the
// source read the acknowledgement, both sides hold the guest: the caller's
// control channel must settle that case; no two-party protocol can.)
//
// # Handshake
//
// The stream's CPU record, the first record of connection 0, carries this
// package's handshake, checked by the destination before it accepts a page:
//
//	magic "GVMMMIGR" | version u16 (1) | nregions u32 |
//	nregions × (gpa u64 | size u64) | Options.CPU (the rest)
//
// The rest goes to ReceiveOptions.CheckCPU, then to
// ReceiveOptions.Prepare when the destination builds its machine from the
// source's description; a destination whose regions then differ from the
// source's refuses the stream (ErrLayout).
//
// # Timing
//
// Stats.Downtime is the source's blackout, Pause to verified
// acknowledgement, split into Pause, FinalPass, StateSave, StateSend and
// AckWait. The stream's acknowledgement carries no payload, so the
// destination's RestoreState time is measured there (Result.Restore) and
// is part of the source's AckWait; the destination's vCPU start happens
// after Receive returns and is the caller's to measure.
package migration
