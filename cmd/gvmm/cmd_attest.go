package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

// attestCmd measures gvmm, closes the launch and prints evidence (JSON)
// for a verifier's nonce.
func attestCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "attest", "--nonce HEX --migration-id ID [flags]")
	var lf launchFlags
	lf.register(fs)
	nonceHex := fs.String("nonce", "", "verifier's nonce (64 hex digits)")
	migID := fs.String("migration-id", "", "migration or session id the evidence is for")
	ephHex := fs.String("ephemeral-pub", "", "receiving public key to bind (hex, uncompressed P-256), optional")
	bootLog := fs.String("boot-log", "", "firmware event log `file` to include, quoting PCRs 0-7 too (e.g. /sys/kernel/security/tpm0/binary_bios_measurements)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	nonce, err := hex.DecodeString(*nonceHex)
	if err != nil || len(nonce) != 32 || *migID == "" {
		return usageError("need --nonce (64 hex digits) and --migration-id")
	}
	eph, err := hex.DecodeString(*ephHex)
	if err != nil {
		return usageError("--ephemeral-pub: %v", err)
	}
	in, err := lf.inputs()
	if err != nil {
		return err
	}
	var boot []byte
	if *bootLog != "" {
		// Parsed here only to refuse early what no verifier accepts.
		if boot, err = readBootLog(*bootLog); err != nil {
			return err
		}
	}
	t, err := openTPM(ctx, e, lf.tpmURI)
	if err != nil {
		return err
	}
	defer t.Close()
	log, err := t.MeasureLaunch(ctx, in, nil)
	if err != nil {
		return err
	}
	if err := t.CloseLaunch(ctx, log); err != nil {
		return err
	}
	id, err := t.Identity(ctx)
	if err != nil {
		return err
	}
	pcrs := []int{log.PCR}
	if boot != nil {
		pcrs = append(pcrs, 0, 1, 2, 3, 4, 5, 6, 7)
	}
	ev, err := t.Attest(ctx, &tpm.Challenge{Nonce: nonce, MigrationID: *migID}, id.HostID, eph, pcrs, log)
	if err != nil {
		return err
	}
	ev.BootLog = boot
	return printJSON(e, ev)
}

// readBootLog reads a firmware event log, bounded, and checks it parses.
func readBootLog(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read boot log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, tpm.MaxBootLog+1))
	if err != nil {
		return nil, fmt.Errorf("read boot log %s: %w", path, err)
	}
	if _, err := tpm.ParseBootLog(b); err != nil {
		return nil, fmt.Errorf("boot log %s: %w", path, err)
	}
	return b, nil
}

// verifyCmd checks evidence against a policy of golden values and the
// verifier's own record of the host (from gvmm enroll finish), whose trust
// level it uses as recorded: never higher. A quote with a replayed
// firmware boot log can earn hardware-tpm-boot-log for that quote only.
func verifyCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "verify", "--evidence FILE --policy FILE --enrolled FILE --verifier-dir DIR --nonce HEX --migration-id ID")
	evPath := fs.String("evidence", "", "evidence `file` (from gvmm attest)")
	polPath := fs.String("policy", "", "policy `file`: {\"pcrs\":[23],\"measured_pcr\":23,\"golden\":{\"23\":[base64]},\"min_trust\":1}")
	enrolledPath := fs.String("enrolled", "", "the verifier's enrolled-host record (from gvmm enroll finish)")
	vdir := fs.String("verifier-dir", "", "verifier `directory` holding the key the record is MACed with")
	nonceHex := fs.String("nonce", "", "the nonce this verifier issued (64 hex digits)")
	migID := fs.String("migration-id", "", "expected migration id")
	_ = fs.String("tpm", tpm.DefaultURI, "unused: verification needs no TPM (accepted for symmetry)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	nonce, err := hex.DecodeString(*nonceHex)
	if err != nil || len(nonce) != 32 || *migID == "" || *evPath == "" || *polPath == "" || *enrolledPath == "" || *vdir == "" {
		return usageError("need --evidence, --policy, --enrolled, --verifier-dir, --nonce (64 hex digits) and --migration-id")
	}
	f, err := os.Open(*evPath)
	if err != nil {
		return err
	}
	defer f.Close()
	ev, err := tpm.ParseEvidence(f)
	if err != nil {
		return err
	}
	var pol tpm.Policy
	if err := readStrictJSON(*polPath, &pol); err != nil {
		return err
	}
	key, err := tpm.LoadVerifierKey(*vdir, false)
	if err != nil {
		return err
	}
	rec, err := os.ReadFile(*enrolledPath)
	if err != nil {
		return fmt.Errorf("enrolled record: %w", err)
	}
	v := tpm.NewVerifier(tpm.VerifierConfig{Log: e.log})
	if _, err := v.AddEnrolledRecord(key, rec); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	if err := v.ExpectNonce(nonce, *migID, time.Now().Add(tpm.DefaultNonceTTL)); err != nil {
		return err
	}
	res, err := v.Verify(ev, tpm.Expect{MigrationID: *migID}, &pol)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	fmt.Fprintf(e.stdout, "OK host %s trust %s migration %s\n", res.HostID, res.Trust, res.MigrationID)
	for _, ev := range res.Events {
		fmt.Fprintf(e.stdout, "  measured %-10s %s\n", ev.Type, hex.EncodeToString(ev.Data))
	}
	return nil
}
