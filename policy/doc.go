// Package policy decides who may migrate which VM where: principals and
// their keys, signed requests, signed VM and host policies, and an
// evaluator that denies by default and explains every decision. It does no
// I/O of its own: the caller authenticates peers (mutual TLS), attests
// them (package tpm), keeps the state in the host's sealed store (a
// tpm.Store, through BlobStore) and writes decisions to the audit log
// (package policy/audit).
//
// # Principals
//
// Users and hosts are ed25519 keys, named by KeyID (hex SHA-256 of the
// key). A host's TLS certificate carries its ed25519 key, so mutual TLS
// identifies it (Directory.HostForCert). The Directory is a host's trust
// configuration: the known users with their roles (admin, user, any
// other name) and hosts with their groups, TPM host id and owner. "owner"
// is not a directory role: it is relative to a VM, the user its policy
// names.
//
// # Signed documents
//
// Every signed thing is a Signed envelope (JSON):
//
//	{"type": "gvmm.vm-policy.owner/v1", "body": base64, "signer": KeyID, "sig": base64}
//
// sig is ed25519 over "gvmm-policy-signature-v1" 0x00 type 0x00 body. The
// signature is checked over the exact body bytes before the body is
// parsed; the body must then decode strictly (no unknown fields, nothing
// trailing, at most MaxDocumentSize) and be canonical: re-encoding it gives
// the same bytes. Types: TypeOwnerLayer, TypeEnterpriseLayer,
// TypeHostPolicy, TypeRequest.
//
// # Requests
//
// A user asks for something by signing a Request (action, audience host,
// vm, destination or document digest, nonce, issued-at). The body names no
// requester: the requester is the key that signed. Authenticator checks
// the signature against the directory, the audience, a validity window
// (MaxAge back, Skew forward) and consumes the nonce in a ReplayCache, so
// a signed request works once, on one host, for a short time. The host
// state carries its own replay cache (HostState.Replay), saved with it, so
// that separate gvmm processes and restarts do not forget used nonces.
//
// # VM policies and how IT overrides owners
//
// A VM's policy (VMPolicyDoc) has two separately signed layers with the
// same Rules: an owner layer (signed by the owner it names, or an admin)
// and an optional enterprise layer (signed by an admin only). The
// evaluator makes every layer decide on its own and allows only when all
// allow: the effective policy is the intersection of the layers, so
// nothing an owner signs can allow what IT's layer forbids. The owner can
// only narrow it. A dimension no layer constrains (migrators,
// destinations, measurements) is denied. The effective minimum trust is
// the higher of the layers'.
//
// Each layer has its own version. A host refuses a policy whose owner
// layer is not newer (an identical one is a no-op), an enterprise layer
// that goes back or disappears, and a change of owner not signed by the
// current owner or an admin (CheckUpdate). Installing a policy at a
// user's request (HostState.SetVMPolicy) needs a signed set-vm-policy
// request naming the document's digest, from the current owner or an
// admin. A layer naming a new owner must be signed by that owner or an
// admin, and a change of owner by the current owner or an admin: only IT
// can give a VM to someone else.
//
// # Evaluation
//
// EvaluateMigrateOut runs twice in a migration: before attestation (a
// pre-check: who, where, pinned) and with the destination's verified
// attestation (also trust level, TPM host binding and gvmm measurement).
// Only Decision.Final allows releasing the migration key. A refusal whose
// only failures are measurements carries a Remediation: the gvmm builds
// every layer accepts. EvaluateMigrateIn is the destination's decision
// under its HostPolicy.
//
// # Host state
//
// HostState (directory, migrate-in policy, VM policies, used nonces) is
// encoded by MarshalHostState for the host's sealed store (tpm.Store, as
// BlobStore, blob StateBlob); UnmarshalHostState verifies every policy in
// it again. The directory is not signed: it is the host's trust root,
// protected by the sealed store like the TPM-sealed key that opens it.
//
// # What it does not protect against
//
// Rollback of the whole sealed state to an older blob: sealed storage
// keeps it confidential and unmodified, not fresh. Anchoring its version
// in a TPM NV counter would. Compromise of a user's or admin's private key.
package policy
