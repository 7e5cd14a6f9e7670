// Package cli holds the "gvmm policy" subcommands as functions that
// cmd/gvmm calls: Main(ctx, args, stdin, stdout, stderr, opts). It wires
// nothing itself: the host's sealed store (a tpm.Store), its id and its
// audit log come in Options from the caller.
//
//	gvmm policy keygen   -out KEY                    new ed25519 key (PKCS#8 PEM, 0600); prints its id
//	gvmm policy sign     -key KEY -type owner|enterprise|host -in DOC.json [-out SIGNED.json]
//	gvmm policy bundle   -owner SIGNED [-enterprise SIGNED] [-out POLICY.json]
//	gvmm policy request  -key KEY -action migrate|set-vm-policy|set-host-policy -audience ID
//	                     [-vm VM] [-destination ID] [-document FILE] [-out REQ.json]
//	gvmm policy show     [-directory DIR.json -policy POLICY.json | -vm VM]
//	gvmm policy set      -request REQ.json -policy POLICY.json | -host-policy SIGNED.json
//	gvmm policy check    -request REQ.json -destination ID [-trust LEVEL -executable HEX]
//	                     [-directory DIR.json -policy POLICY.json]
//
// "set" changes the host's sealed state and writes the decision to the
// audit log. "check" evaluates a hypothetical migration (with or without
// an attestation result) and prints the decision; it authenticates the
// request with a private replay cache, so checking does not use the
// request up, and it writes nothing.
package cli
