// Package gate runs everything a migration does before its first page:
// it decides whether a VM may move, proves that the destination is the
// host it claims to be and runs acceptable software, and hands each side
// a fresh migration key that nobody else holds. migration.Migrate and
// migration.Receive then move the VM under that key.
//
// What it owns: the control protocol between the two hosts (mutual TLS,
// framed JSON messages), the order of the checks, the key's creation and
// release, the audit records of every decision on both hosts, and the
// remediation hand-off. It decides nothing itself: package policy decides,
// package tpm quotes, verifies and wraps, package policy/audit records,
// memguard holds the key. It imports no vmm and no cmd.
//
// # The source's steps (Source.Handshake), in this order
//
//  1. Authenticate the requester: a policy.Signed migrate request
//     (policy.Authenticator with the host state's replay cache, which is
//     saved at once, so the request's nonce is used up even on refusal).
//     The requester is the key that signed, never a name in a body.
//  2. Pre-check the VM's installed policy (policy.EvaluateMigrateOut
//     without attestation): migrator, destination, not pinned.
//  3. Open mutual TLS 1.3 to the destination. Certificates are
//     self-signed and carry each host's ed25519 principal key; each side
//     pins the peer through its policy.Directory (HostForCert), no CA is
//     used. The source also requires the peer to be the request's
//     destination.
//  4. Challenge the destination: a fresh single-use nonce (tpm.Verifier),
//     a fresh migration id, and the TLS channel binding
//     (ExportKeyingMaterial, label "EXPORTER-gvmm-attest", 32 bytes),
//     which each side computes from its own end of the session. The quote's
//     extra data binds nonce, migration id, TPM host id, the destination's
//     ephemeral P-256 receiving key and the channel binding
//     (tpm.QuoteExtraDataBound). A quote relayed from another TLS
//     session or made by another host does not verify.
//  5. Decide again with the verified attestation (trust level, TPM host id
//     = the directory's for that host, measured gvmm executable):
//     policy.Decision.Final.
//  6. Release: a fresh random 32-byte key (memguard.Secret) sealed by ECDH
//     to the quoted ephemeral key (tpm.SealToEphemeral). With it, if the
//     destination asked, goes the source's own evidence; with
//     Source.Runtime set, a run-time report of the VM (policy.RuntimeReport:
//     its protected regions' and measured ranges' digests, for this
//     migration) goes with it, its SHA-256 extended into the launch PCR as
//     a tpm.EventRuntime event before the quote, so the quote covers it.
//
// The destination (Destination.Accept) checks its migrate-in policy
// (policy.EvaluateMigrateIn) when the VM's policy arrives and, if that
// policy requires it, challenges the source for evidence (same binding),
// verifies it and decides again before it opens the key. A run-time
// report must be the one the quoted log's last event measures, and for
// this VM and migration (policy.RuntimeFromResult), or the destination
// refuses; its policy decides on the contents (require_source_runtime,
// require_ranges). Every decision
// of both sides is appended to that side's audit log (policy/audit) with
// its rule and reason; the destination also records a refusal the source
// sent it.
//
// # Protocol (one TLS connection, then the data connections)
//
// Every message is a frame: 4-byte big-endian length (at most 2 MiB: maxFrame)
// then one JSON object {"type": ..., ...}; unknown fields are refused.
//
//	S→D hello    {version:1, migration_id, vm, vm_policy (policy.VMPolicyDoc),
//	              challenge{nonce, migration_id, expires}}
//	D→S refuse   {decision}                              (migrate-in pre-check failed)
//	  | evidence {evidence (tpm.Evidence), source_challenge? (nonce, migration_id, expires)}
//	S→D refuse   {decision (with remediation if only measurements failed)}
//	  | release  {box (tpm.EphemeralBox), source_evidence?, source_runtime?}
//	D→S refuse   {decision}  | accept {decision}
//
// After accept both sides close the TLS connection; the source opens
// plain TCP data connections to the same address, and migration.Stream
// authenticates every record with the released key (AES-256-GCM), so a
// receiver without the key, a replayed earlier stream (another key) or a
// man in the middle fails authentication and the source keeps running.
// The destination's listener serves the control connection first and
// then the data connections (Destination.Accept returns the listener
// untouched for migration.Receive).
//
// # Remediation
//
// A refusal whose only failures are measurements carries
// policy.Remediation (the destination's executable digest and the
// acceptable builds). The destination records it and, if configured
// (DestinationConfig.Remediate; gvmm receive --update-cmd CMD), runs the
// update, which must replace the gvmm executable at the path gvmm was
// started from (and, for a PolicyAuthorize host, install an approval of
// the new build in STATE/approvals/). gvmm receive then re-executes
// itself: the new process is a fresh measured launch (on the simulator a
// fresh PCR 23; on swtpm/hardware the same), unseals its store only if
// the new build is approved, and listens again on the same address. The
// source (gvmm migrate --remediation-retries N --retry-delay D) retries
// steps 3-6 with the same authenticated request, a new migration id and a
// new nonce; the retry succeeds once the new measurement is acceptable.
//
// # CLI contract (kept stable for tests/integration and make demo)
//
// Every host H has a state directory S_H and a TPM T_H. A software TPM
// that must survive between gvmm processes is the fixed-seed simulator
// "sim?insecure-fixed-seed=N" (one distinct N per host; INSECURE, tests
// only) or an swtpm ("swtpm+unix:///PATH"). Launch inputs are always the
// running executable with no --config and no --policy-bundle: every gvmm
// process that opens S_H measures /proc/self/exe into the TPM, unseals
// the store and closes the launch.
//
// Host set-up (per host):
//
//	gvmm host init --state S --tpm T [--approver IT-approver.pub.pem]
//	gvmm host approve --key IT-approver.key --state S --executable GVMM_BUILD    (only with --approver:
//	    one approval per gvmm build the host may run, no TPM needed; without any, the store stays shut)
//	gvmm policy --state S --tpm T hostkey --name laptop [--groups tom-devices,office] [--owner TOM_ID] --out laptop.principal.json
//	    creates the host's ed25519 key in its sealed store (once) and writes
//	    its directory entry (kind host, key, tpm_host_id); prints the host's key id
//	    (without --out it prints the entry instead)
//
// Users (anywhere, no TPM):
//
//	gvmm policy keygen -out tom.key           prints {"id":ID,"key":...}; refuses an existing file
//	gvmm policy principal --key tom.key --name Tom --roles user --out tom.principal.json    prints Tom's key id
//	gvmm policy principal --key it.key  --name IT  --roles admin --out it.principal.json
//	gvmm policy directory --out dir.json tom.principal.json bob.principal.json it.principal.json laptop.principal.json ...
//	gvmm policy id --key tom.key              prints the key id (also: --principal FILE)
//
// Install the directory (the host's trust root, set by its operator):
//
//	gvmm policy --state S --tpm T init --directory dir.json [--replace]
//
// Enrollment: each host that will verify another (every source, for every
// destination; a destination that requires source attestation, for every
// source) enrolls it; the gate loads every S/enrolled/*.json with the key
// in S/verifier/ (create S/enrolled first: mkdir -p S_A/enrolled):
//
//	gvmm enroll challenge --verifier-dir S_A/verifier --host-identity S_B/identity.json --out ch.json
//	gvmm enroll activate  --tpm T_B --state S_B --challenge ch.json --out resp.json
//	gvmm enroll finish    --verifier-dir S_A/verifier --response resp.json --out S_A/enrolled/B.json
//
// VM policy (owner layer, optional IT layer), installed on the VM's host A:
//
//	owner.json: {"vm":"tom-vm","version":1,"owner":TOM_ID,"rules":{"migrators":["role:owner"],
//	             "destinations":["group:tom-devices"],"min_trust":"software-tpm",
//	             "measurements":[{"executable_sha256":"<sha256sum of gvmm>","version":"v2"}]}}
//	gvmm policy sign -key tom.key -type owner -in owner.json -out owner.signed.json
//	gvmm policy sign -key it.key -type enterprise -in ent.json -out ent.signed.json       (optional)
//	gvmm policy bundle -owner owner.signed.json [-enterprise ent.signed.json] -out vm-policy.json
//	gvmm policy request -key tom.key -action set-vm-policy -audience A_ID -vm tom-vm -document vm-policy.json -out set.json
//	gvmm policy --state S_A --tpm T_A set -request set.json -policy vm-policy.json
//
// Migrate-in policy on each destination B (without one B accepts nothing):
//
//	hostpol.json: {"host":B_ID,"version":1,"accept_owners":[TOM_ID],"accept_sources":["group:tom-devices"]}
//	    optional: "require_source_attestation":true, "min_source_trust":LEVEL,
//	    "require_source_runtime":true (the VM measured on the source, no region changed unexpectedly),
//	    "require_ranges":[{"name":"kernel-code","sha256":HEX}] (as gvmm measure on the source shows it)
//	gvmm policy sign -key tom.key -type host -in hostpol.json -out hostpol.signed.json   (B's owner or IT)
//	gvmm policy request -key tom.key -action set-host-policy -audience B_ID -document hostpol.signed.json -out r.json
//	gvmm policy --state S_B --tpm T_B set -request r.json -host-policy hostpol.signed.json
//
// Inspect: gvmm policy --state S --tpm T show -vm tom-vm;
// gvmm policy --state S --tpm T check -request mig.json [-trust L -executable HEX];
// gvmm policy --state S audit (prints every record, verifies the chain; no TPM).
//
// Migrate:
//
//	gvmm run ... --api-socket A.sock                                   (on A, as before)
//	gvmm receive --listen ADDR --state S_B --tpm T_B [--disk IMG]... [--net ...]... [--channel P]
//	             [--update-cmd CMD] [--api-socket B.sock]              (on B)
//	gvmm policy request -key tom.key -action migrate -audience A_ID -vm tom-vm -destination B_ID -out mig.json
//	gvmm migrate --api-socket A.sock --to ADDR --state S_A --tpm T_A --request mig.json
//	             [--remediation-retries N] [--retry-delay 2s]
//
// gvmm migrate prints on stdout, one per line, in order:
//
//	gate: requester authenticated: Tom (KEYID)
//	gate: policy pre-check allowed by rule R
//	gate: destination attested: laptop (h-...) at level software-tpm, gvmm sha256 HEX
//	gate: policy allowed by rule R
//	gate: key released to laptop
//	gate: handshake X ms (authenticate A ms, attest B ms, decide C ms, key release D ms)
//	... then the existing progress (stderr) and "migrated: ..." figures, and
//	migrated: handshake before the first page X ms (authenticate A, attest B, decide C, key release D), destination NAME at LEVEL, N attempt(s)
//
// A refusal prints "gate: migration refused (STAGE) by rule R: REASON"
// (or "gate: migration refused by the peer (...)" when the destination
// refused), for an outdated destination first also "gate: destination must
// update: have HEX, acceptable: VERSION (HEX), ...", exits with status 3,
// and the source VM keeps running. With --remediation-retries N such a
// refusal (and, after it, a destination that is restarting) is tried again
// up to N times, "gate: retrying in D (attempt K of N+1)" each time, with
// the same authenticated request. Other failures exit 1.
//
// The gate runs inside the VM's own gvmm process (gvmm run): gvmm migrate
// passes it the signed request, the state directory and the TPM URI over
// the API socket, and that process opens the TPM and the sealed store
// itself, so the migration key never leaves it.
//
// gvmm receive prints its gate lines on stderr (stdout is the guest's
// console): "gate: host NAME (ID) opened its sealed state; measured gvmm
// sha256 HEX", "gate: source SOURCE (ID) asks to send vm VM ...",
// "gate: attested to SOURCE", "gate: source SOURCE: migrate-in allowed by
// rule R", then the existing "migration received" figures. Its own refusal
// prints "gate: migrate-in refused (STAGE) by rule R: REASON" and exits 3.
// A refusal by the source prints "gate: refused by the source (STAGE) by
// rule R: REASON" and, for outdated measurements, "gate: required: gvmm
// VERSION (sha256 HEX); this host runs HEX"; without --update-cmd it exits
// 3. With --update-cmd CMD it prints "gate: running the update command",
// runs "/bin/sh -c CMD" with GVMM_REMEDIATION (the JSON policy.Remediation)
// and GVMM_EXECUTABLE (the path to replace) in its environment, prints
// "gate: updated; PATH is now sha256 HEX; starting again to measure it"
// and executes PATH with the same arguments (at most 3 rounds). CMD must
// replace the file atomically (cp NEW "$GVMM_EXECUTABLE.new" && mv
// "$GVMM_EXECUTABLE.new" "$GVMM_EXECUTABLE": a running executable cannot
// be written in place), and the new build must be approved for the host's
// store (gvmm host approve), else the new launch cannot unseal it. It opens only the device backings given on
// its own command line: a source whose description names a disk, TAP or
// channel the destination was not given one for is refused.
//
// The pre-shared key of earlier versions remains only as
// --insecure-key FILE on both commands (no policy, no attestation; for
// tests of the migration engine only).
//
// The audit log is S/audit.log (one hash-chained JSON record per
// decision; policy/audit). A gvmm that cannot open its sealed state (a
// changed or unapproved executable, an edited policy state) refuses every
// migration and records why (kind "open-host", rule "sealed-state" or
// "policy-state"); gvmm migrate and gvmm receive then exit 3.
//
// Known limits: on a TPM shared by several gvmm processes of one host
// (swtpm, hardware) each process's measured launch resets (software) or
// extends the measured PCR, so a waiting gvmm receive whose launch log no
// longer replays is refused by the source (fail closed): give each
// software-TPM host one TPM per concurrent gvmm process, or use the
// fixed-seed simulator, which is per process. Any host in the directory
// can end a waiting gvmm receive by being refused (a denial of service,
// not a bypass). Rollback of the whole sealed state is not detected
// (package policy).
package gate
