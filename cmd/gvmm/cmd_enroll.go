package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gvmm/gvmm/tpm"
)

// Enrollment through the CLI, in three steps across two machines:
//
//	verifier: gvmm enroll challenge --verifier-dir V --host-identity identity.json --out challenge.json
//	host:     gvmm enroll activate  --tpm URI --challenge challenge.json --out response.json
//	verifier: gvmm enroll finish    --verifier-dir V --response response.json [--ek-roots PEM]
//	                                [--software-ek-roots PEM] [--ek-intermediates PEM] --out enrolled.json
//
// The verifier directory V holds the verifier's MAC key and the pending
// challenges (with the secrets the hosts must return). Each challenge is
// consumed by the first finish that names its host, right or wrong. The
// enrolled record is MACed with V's key; "gvmm verify --enrolled" refuses
// it if any field was edited.

// enrollResponse is what the host returns: the recovered secret.
type enrollResponse struct {
	HostID string `json:"host_id"`
	Secret []byte `json:"secret"`
}

// maxCLIFile bounds the JSON files the enroll commands read.
const maxCLIFile = 64 << 10

func enrollCmd(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(e.stdout, "Usage: gvmm enroll <challenge|activate|finish> [flags]\n\n"+
			"  challenge  verifier: make a credential challenge for a host's identity.json\n"+
			"  activate   host: recover the challenge's secret in the TPM (ActivateCredential)\n"+
			"  finish     verifier: check the secret and the EK certificate, write the enrolled-host record\n")
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "challenge":
		return enrollChallenge(ctx, e, args[1:])
	case "activate":
		return enrollActivate(ctx, e, args[1:])
	case "finish":
		return enrollFinish(ctx, e, args[1:])
	}
	return usageError("unknown enroll subcommand %q (want challenge, activate or finish)", args[0])
}

func enrollChallenge(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "enroll challenge", "--verifier-dir DIR --host-identity FILE --out FILE")
	vdir := fs.String("verifier-dir", "", "verifier `directory` (MAC key, pending challenges); created if missing")
	idPath := fs.String("host-identity", "", "the host's identity.json (from gvmm host init)")
	out := fs.String("out", "", "write the challenge (for the host) to this `file`")
	ttl := fs.Duration("ttl", 10*time.Minute, "how long the challenge may be answered")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *vdir == "" || *idPath == "" || *out == "" || *ttl <= 0 {
		return usageError("need --verifier-dir, --host-identity and --out")
	}
	var info tpm.HostInfo
	if err := readStrictJSON(*idPath, &info); err != nil {
		return fmt.Errorf("host identity: %w", err)
	}
	ch, p, err := tpm.MakeEnrollChallenge(tpm.EnrollRequest{EKPublic: info.EKPublic, AKPublic: info.AKPublic, EKCert: info.EKCert}, time.Now().Add(*ttl))
	if err != nil {
		return err
	}
	if info.HostID != ch.HostID {
		fmt.Fprintf(e.stderr, "gvmm: note: identity claims host id %q; the verifier computes %s from its EK\n", info.HostID, ch.HostID)
	}
	key, err := tpm.LoadVerifierKey(*vdir, true)
	if err != nil {
		return err
	}
	if err := tpm.SavePending(*vdir, key, p); err != nil {
		return err
	}
	if err := writeJSONFile(*out, ch); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "challenge for host %s expires %s\n", ch.HostID, p.Expires.UTC().Format(time.RFC3339))
	return nil
}

func enrollActivate(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "enroll activate", "--tpm URI --challenge FILE --out FILE")
	uri := fs.String("tpm", tpm.DefaultURI, "TPM `URI`")
	state := fs.String("state", "", "host state `directory` (optional: check the challenge is for the host it describes)")
	chPath := fs.String("challenge", "", "challenge `file` from gvmm enroll challenge")
	out := fs.String("out", "", "write the response (for the verifier) to this `file`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *chPath == "" || *out == "" {
		return usageError("need --challenge and --out")
	}
	var ch tpm.EnrollChallenge
	if err := readStrictJSON(*chPath, &ch); err != nil {
		return fmt.Errorf("challenge: %w", err)
	}
	t, err := openTPM(ctx, e, *uri)
	if err != nil {
		return err
	}
	defer t.Close()
	id, err := t.Identity(ctx)
	if err != nil {
		return err
	}
	if ch.HostID != id.HostID {
		return fmt.Errorf("challenge is for host %s, this TPM is host %s", ch.HostID, id.HostID)
	}
	if *state != "" {
		info, err := tpm.ReadHostInfo(*state)
		if err != nil {
			return err
		}
		if info.HostID != id.HostID {
			return fmt.Errorf("state %s belongs to host %s, this TPM is host %s", *state, info.HostID, id.HostID)
		}
	}
	secret, err := t.ActivateCredential(ctx, &ch)
	if err != nil {
		return err
	}
	if err := writeJSONFile(*out, enrollResponse{HostID: id.HostID, Secret: secret}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "activated credential for host %s\n", id.HostID)
	return nil
}

func enrollFinish(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "enroll finish", "--verifier-dir DIR --response FILE --out FILE [--ek-roots PEM] [--software-ek-roots PEM]")
	vdir := fs.String("verifier-dir", "", "verifier `directory` (the one the challenge was made with)")
	respPath := fs.String("response", "", "response `file` from gvmm enroll activate")
	out := fs.String("out", "", "write the enrolled-host record to this `file`")
	ekRoots := fs.String("ek-roots", "", "hardware TPM manufacturers' root certificates (`PEM`): a chain to one gives hardware-tpm-ek-cert")
	swRoots := fs.String("software-ek-roots", "", "software TPM CAs (`PEM`, e.g. swtpm's local CA): a chain to one stays software-tpm")
	inters := fs.String("ek-intermediates", "", "intermediate certificates for either pool (`PEM`)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *vdir == "" || *respPath == "" || *out == "" {
		return usageError("need --verifier-dir, --response and --out")
	}
	var cfg tpm.VerifierConfig
	for _, f := range []struct {
		path string
		dst  **x509.CertPool
	}{{*ekRoots, &cfg.EKRoots}, {*swRoots, &cfg.SoftwareEKRoots}, {*inters, &cfg.EKIntermediates}} {
		if f.path == "" {
			continue
		}
		p, err := readCertPool(f.path)
		if err != nil {
			return err
		}
		*f.dst = p
	}
	cfg.Log = e.log
	var resp enrollResponse
	if err := readStrictJSON(*respPath, &resp); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	key, err := tpm.LoadVerifierKey(*vdir, false)
	if err != nil {
		return err
	}
	// The challenge is consumed here, before the answer is judged.
	p, err := tpm.TakePending(*vdir, key, resp.HostID)
	if err != nil {
		return err
	}
	h, err := tpm.NewVerifier(cfg).FinishPendingEnroll(p, resp.Secret)
	if err != nil {
		return err
	}
	rec, err := tpm.NewEnrolledRecord(key, h, time.Now())
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, rec, 0o600); err != nil {
		return fmt.Errorf("write enrolled record: %w", err)
	}
	fmt.Fprintf(e.stdout, "enrolled host %s trust %s (ek cert verified: %v)\n", h.HostID, h.Trust, h.EKCertVerified)
	return nil
}

// readStrictJSON reads one bounded JSON value with no unknown fields.
func readStrictJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCLIFile+1))
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxCLIFile {
		return fmt.Errorf("%s: larger than %d bytes", path, maxCLIFile)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if d.More() {
		return fmt.Errorf("%s: trailing data", path)
	}
	return nil
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readCertPool reads every CERTIFICATE block of a PEM file (at least one).
func readCertPool(path string) (*x509.CertPool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read certificates: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, fmt.Errorf("read certificates %s: %w", path, err)
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("read certificates %s: larger than 1 MiB", path)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("read certificates %s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("read certificates " + path + ": no CERTIFICATE block")
	}
	return pool, nil
}
