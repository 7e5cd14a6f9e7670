// Package tpm is gvmm's trust base: it owns every conversation with a TPM
// and the cryptographic decisions built on one.
//
// What it owns:
//
//   - Transports (transport.go, stream.go, sim_*.go): one interface, three
//     backends chosen by a URI: "sim" (the embedded reference TPM, cgo),
//     "swtpm+tcp://127.0.0.1:PORT" / "swtpm+unix:///path" (a separate swtpm
//     process, raw TPM 2.0 commands on its data channel) and
//     "device:///dev/tpmrm0" (a hardware TPM through the kernel's resource
//     manager).
//   - Measured launch (measure.go): gvmm's executable, configuration and
//     policy bundle are extended into one PCR as typed events whose digests
//     cover the event type as well as the data; a closing event ends the
//     window in which sealed secrets can be unsealed.
//   - Sealed storage (seal.go, store.go): a 32-byte key-encryption key sealed
//     to PCR values (PolicyPCR) or to an offline signing key's approval of
//     PCR values (PolicyAuthorize), and AES-256-GCM blobs under it in the
//     host state directory. Approvals (ApproveLaunch, offline, no TPM) are
//     public files in its approvals/ folder; OpenHostStoreApproved uses the
//     one matching the current PCR values and the TPM checks its signature.
//     Approvals cannot be revoked: an old one opens the store for the old
//     measurements for as long as the sealed KEK exists (re-seal to revoke).
//   - Host identity and enrollment (identity.go, enroll.go,
//     enrollrecord.go): an endorsement key, a restricted attestation key,
//     credential activation, and the verifier's record of the enrolled AK
//     and the trust level it computed. A verifier that runs as separate
//     processes ("gvmm enroll challenge|finish", "gvmm verify") keeps its
//     pending challenges and enrolled-host records as files MACed with a
//     key in its own directory (verifier.key): a record edited to a higher
//     level, another AK or another host does not load, and each challenge
//     is removed by the first answer, right or wrong. Loading a record
//     never raises its level.
//   - Remote attestation (attest.go, verifier.go): single-use expiring nonces,
//     quotes whose extra data binds nonce, migration id, host id and the
//     ephemeral key that will receive secrets, and a verifier that checks all
//     of it itself.
//   - Key release (release.go): a secret wrapped to an attested TPM's EK
//     under a PCR policy (TPM2_Import), or ECDH to the quoted ephemeral key.
//
// Trust levels are computed by the verifier from what it checked:
//
//   - software-tpm: the AK lives in the same TPM as the EK (credential
//     activation). Also the level of a TPM whose EK certificate chains to a
//     root in VerifierConfig.SoftwareEKRoots (swtpm's local CA, a vTPM CA):
//     the certificate is checked, and the host is still a software TPM.
//   - hardware-tpm-ek-cert: the EK certificate (ECC P-256 EK, NV index
//     0x01c0000a) chains to a root in VerifierConfig.EKRoots and certifies
//     the enrolled EK. "Hardware" is the operator's assertion about those
//     roots; the verifier cannot tell a manufacturer's CA from any other.
//     A presented certificate that does not verify refuses enrollment.
//   - hardware-tpm-boot-log: per quote, never per host. A host enrolled at
//     hardware-tpm-ek-cert earns it for one quote when the policy sets
//     boot_log, the quote covers PCRs 0-7 (SHA-256 bank), the firmware's
//     TCG event log in the evidence (bootlog.go: the crypto-agile format
//     of /sys/kernel/security/tpm0/binary_bios_measurements, parsed with
//     bounds on size, event count, event size and known algorithms only)
//     replays exactly to the quoted PCRs 0-7, and any golden values the
//     policy gives for PCRs 0-7 match. A software-tpm host with a perfect
//     log stays software-tpm. The TCG log does not cover event types, and
//     most event data (an EFI application's path) is not what was hashed:
//     the parser checks the data of the events whose digest is defined as
//     its hash (separators, S-CRTM version, EFI actions, Secure Boot
//     configuration, GPT), and golden values should name PCRs or digests,
//     not descriptions.
//
// swtpm 0.7.1's swtpm_setup certifies an RSA-2048 EK (0x01c00002) and an
// ECC P-384 EK (0x01c00016), not the P-256 EK gvmm uses: such a swtpm has
// no gvmm-usable EK certificate unless one is provisioned at 0x01c0000a
// (the tests do that with swtpm_localca).
//
// What it protects against: a host that lies about what it runs (the
// verifier trusts only TPM-signed quotes from an AK it enrolled itself and
// replays the log against them); replayed or relayed evidence (nonces are
// single-use and expire, and the quote is bound to migration id, host and
// receiving key); substituted keys (an AK in evidence is never used; only a
// restricted, fixedTPM AK proven by credential activation is enrolled);
// offline theft of the state directory (blobs are sealed to this TPM and to
// gvmm's measured state); and a later compromise within the same boot (the
// closing event makes unsealing impossible after start-up).
//
// What it does not protect against: a software TPM (simulator, swtpm) is
// only as trustworthy as the host that runs it, and PCR 23 can be reset from
// locality 0 by any local process. The verifier reports such hosts with the
// lowest trust level. The fixed-seed simulator is insecure by construction and
// is marked so wherever it appears.
//
// Every function that talks to a TPM takes a context.Context; every input
// from outside (evidence, logs, blobs, credentials) is size- and
// version-checked before use and every check fails closed.
package tpm
