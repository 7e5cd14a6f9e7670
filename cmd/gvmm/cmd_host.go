package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/gvmm/gvmm/tpm"
)

// hostCmd dispatches "gvmm host init|info".
func hostCmd(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(e.stdout, "Usage: gvmm host <init|info> [flags]\n\n  init  create the host's keys and sealed store, print its identity\n  info  show the TPM kind, PCRs and measurement log\n")
		if len(args) == 0 {
			return &exitError{code: 2}
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "init":
		return hostInit(ctx, e, args[1:])
	case "info":
		return hostInfo(ctx, e, args[1:])
	}
	return usageError("unknown host subcommand %q (want init or info)", args[0])
}

// launchFlags are the inputs of measured launch, shared by host init and
// attest.
type launchFlags struct {
	tpmURI, config, policy string
}

func (l *launchFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.tpmURI, "tpm", tpm.DefaultURI, "TPM `URI`: sim, sim?insecure-fixed-seed=N, swtpm+tcp://127.0.0.1:PORT, swtpm+unix:///PATH, device:///dev/tpmrm0[?pcr=14]")
	fs.StringVar(&l.config, "config", "", "configuration `file` to measure")
	fs.StringVar(&l.policy, "policy-bundle", "", "policy bundle `file` to measure")
}

func (l *launchFlags) inputs() (tpm.LaunchInputs, error) {
	exe, err := os.Executable()
	if err != nil {
		return tpm.LaunchInputs{}, fmt.Errorf("find own executable: %w", err)
	}
	in := tpm.LaunchInputs{Executable: exe}
	for _, f := range []struct {
		path string
		dst  *[]byte
	}{{l.config, &in.Config}, {l.policy, &in.Policy}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return tpm.LaunchInputs{}, fmt.Errorf("read %s: %w", f.path, err)
		}
		*f.dst = b
	}
	return in, nil
}

func openTPM(ctx context.Context, e *env, uri string) (*tpm.TPM, error) {
	cfg, err := tpm.ParseURI(uri)
	if err != nil {
		return nil, usageError("%v", err)
	}
	// tpm.Open logs the INSECURE warning for the fixed-seed simulator.
	return tpm.Open(ctx, cfg, e.log)
}

func hostInit(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "host init", "[flags]")
	var lf launchFlags
	lf.register(fs)
	state := fs.String("state", "/var/lib/gvmm", "host state `directory`")
	approver := fs.String("approver", "", "offline approval public key (PEM, ECDSA P-256); seals with PolicyAuthorize instead of PolicyPCR")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	in, err := lf.inputs()
	if err != nil {
		return err
	}
	opts := tpm.HostOptions{Launch: in}
	if *approver != "" {
		if opts.Approver, err = readECPublicPEM(*approver); err != nil {
			return err
		}
		opts.PolicyRef = []byte("gvmm-kek")
	}
	t, err := openTPM(ctx, e, lf.tpmURI)
	if err != nil {
		return err
	}
	defer t.Close()
	if t.Config().Kind == tpm.KindSimulator && !t.Config().Insecure() {
		fmt.Fprintln(e.stderr, "gvmm: note: the random-seed simulator forgets its keys when this process exits; the state created here cannot be unsealed later")
	}
	info, err := tpm.InitHost(ctx, t, *state, opts)
	if err != nil {
		return err
	}
	return printJSON(e, info)
}

func hostInfo(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "host info", "[flags]")
	uri := fs.String("tpm", tpm.DefaultURI, "TPM `URI`")
	state := fs.String("state", "", "host state `directory` (optional: show its identity)")
	if err := parseFlags(fs, args); err != nil {
		return err
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
	cfg := t.Config()
	fmt.Fprintf(e.stdout, "tpm:          %s (%s)\n", cfg, cfg.Kind)
	if cfg.Insecure() {
		fmt.Fprintln(e.stdout, "              INSECURE: fixed-seed simulator, for tests only")
	}
	fmt.Fprintf(e.stdout, "host id:      %s\n", id.HostID)
	fmt.Fprintf(e.stdout, "ek cert:      %v\n", len(id.EKCert) > 0)
	fmt.Fprintf(e.stdout, "measured pcr: %d\n", cfg.PCR)
	pcrs := []int{0, 1, 2, 3, 4, 5, 6, 7, cfg.PCR}
	vals, err := t.ReadPCRs(ctx, pcrs)
	if err != nil {
		return err
	}
	for _, p := range pcrs {
		v := vals[p]
		fmt.Fprintf(e.stdout, "pcr %-2d:       %s\n", p, hex.EncodeToString(v[:]))
	}
	if exe, err := os.Executable(); err == nil {
		if d, err := tpm.FileDigest(exe); err == nil {
			g := tpm.GoldenLaunchPCR(cfg.PCR, d, nil, nil)
			fmt.Fprintf(e.stdout, "golden pcr %d for this executable (empty config and policy, closed): %s\n", cfg.PCR, hex.EncodeToString(g[:]))
		}
	}
	if *state != "" {
		info, err := tpm.ReadHostInfo(*state)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "state:        %s (host %s, seal mode %s)\n", *state, info.HostID, info.SealMode)
		if info.Insecure {
			fmt.Fprintln(e.stdout, "              INSECURE: made with the fixed-seed simulator")
		}
		if info.HostID != id.HostID {
			fmt.Fprintln(e.stdout, "              WARNING: state belongs to another TPM")
		}
		fmt.Fprintf(e.stdout, "launch log:   pcr %d = %s after executable, config, policy events\n", info.MeasuredPCR, hex.EncodeToString(info.LaunchPCR))
	}
	return nil
}

func printJSON(e *env, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", b)
	return err
}

func readECPublicPEM(path string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read approver key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("read approver key: no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read approver key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("read approver key: not an ECDSA key")
	}
	return ek, nil
}
