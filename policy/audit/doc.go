// Package audit keeps gvmm's append-only, hash-chained log of policy
// decisions.
//
// Each line is one JSON record:
//
//	{"seq":N,"time":RFC3339,"prev":HEX,"event":{...},"hash":HEX}
//
// hash is SHA-256 over "gvmm-audit-v1" 0x00 and the record's canonical
// JSON encoding without its hash field; prev is the previous record's hash
// (64 zeros for the first) and seq counts from 1. Editing, inserting,
// reordering or deleting any line but the last breaks the chain, which
// Verify detects. Cutting lines off the end, or rewriting the whole chain,
// is detectable only against a head (sequence number and hash) kept
// elsewhere: Log.Head gives it to the caller to anchor (in sealed storage,
// a TPM NV index, a remote log) and VerifyHead checks against it.
//
// Every record is written with one write and synced before Append
// returns, so a record that Append reported is on disk.
package audit
