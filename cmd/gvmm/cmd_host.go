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

// hostCmd dispatches "gvmm host init|info|approve|open".
func hostCmd(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(e.stdout, "Usage: gvmm host <init|info|approve|open> [flags]\n\n"+
			"  init     create the host's keys and sealed store, print its identity\n"+
			"  info     show the TPM kind, PCRs and measurement log\n"+
			"  approve  sign, with the offline key, approval of a gvmm/config/policy (no TPM needed)\n"+
			"  open     measure gvmm, unseal the host store (with approvals), check it, close the launch\n")
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
	case "approve":
		return hostApprove(ctx, e, args[1:])
	case "open":
		return hostOpen(ctx, e, args[1:])
	}
	return usageError("unknown host subcommand %q (want init, info, approve or open)", args[0])
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
		opts.PolicyRef = tpm.KEKPolicyRef
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

// hostApprove signs approval of a launch (this or another gvmm
// executable, a configuration and a policy bundle) for a host sealed with
// PolicyAuthorize. It runs where the offline key lives and needs no TPM:
// only the host's identity.json (from --state) and the inputs.
func hostApprove(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "host approve", "--key FILE --state DIR [flags]")
	key := fs.String("key", "", "offline approval private `key` (PEM, ECDSA P-256: PKCS#8 or SEC 1)")
	state := fs.String("state", "/var/lib/gvmm", "host state `directory` (its identity.json; the approval is written to its approvals/)")
	exe := fs.String("executable", "", "gvmm executable `file` to approve (default: this executable)")
	config := fs.String("config", "", "configuration `file` to approve")
	policy := fs.String("policy-bundle", "", "policy bundle `file` to approve")
	out := fs.String("out", "", "write the approval to this `file` instead of the state directory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *key == "" {
		return usageError("need --key")
	}
	k, err := readECPrivatePEM(*key)
	if err != nil {
		return err
	}
	info, err := tpm.ReadHostInfo(*state)
	if err != nil {
		return err
	}
	lf := launchFlags{config: *config, policy: *policy}
	in, err := lf.inputs()
	if err != nil {
		return err
	}
	if *exe != "" {
		in.Executable = *exe
	}
	a, v, err := tpm.ApproveLaunch(k, info, in)
	if err != nil {
		return err
	}
	path := *out
	if path == "" {
		if path, err = tpm.SaveApproval(*state, a); err != nil {
			return err
		}
	} else {
		b, err := json.MarshalIndent(a, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
			return fmt.Errorf("write approval: %w", err)
		}
	}
	fmt.Fprintf(e.stdout, "approved pcr %d = %s for host %s\n%s\n", info.MeasuredPCR, hex.EncodeToString(v[:]), info.HostID, path)
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// hostOpen measures gvmm, unseals the host store (PolicyPCR, or
// PolicyAuthorize with an approval of the current measurements), reads the
// host key from it and closes the launch.
func hostOpen(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "host open", "[flags]")
	var lf launchFlags
	lf.register(fs)
	state := fs.String("state", "/var/lib/gvmm", "host state `directory`")
	approverPath := fs.String("approver", "", "offline approval public key (PEM); default: the one in identity.json")
	var extra stringList
	fs.Var(&extra, "approval", "approval `file` to try besides the state directory's approvals/ (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	in, err := lf.inputs()
	if err != nil {
		return err
	}
	var approver *ecdsa.PublicKey
	if *approverPath != "" {
		if approver, err = readECPublicPEM(*approverPath); err != nil {
			return err
		}
	}
	approvals, err := tpm.LoadApprovals(*state)
	if err != nil {
		return err
	}
	for _, p := range extra {
		a, err := tpm.ReadApproval(p)
		if err != nil {
			return err
		}
		approvals = append(approvals, a)
	}
	info, err := tpm.ReadHostInfo(*state)
	if err != nil {
		return err
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
	// Whatever happens next, nothing else in this boot may unseal.
	defer func() {
		if err := t.CloseLaunch(context.WithoutCancel(ctx), log); err != nil {
			e.log.Error("close launch failed: the KEK stays unsealable until reboot", "err", err)
		}
	}()
	st, err := tpm.OpenHostStoreApproved(ctx, t, *state, approver, approvals)
	if err != nil {
		return err
	}
	if _, err := st.Get(tpm.HostKeyBlob); err != nil {
		return fmt.Errorf("host store opened but its host key does not decrypt: %w", err)
	}
	fmt.Fprintf(e.stdout, "opened host store %s (host %s, seal mode %s)\n", *state, info.HostID, info.SealMode)
	return nil
}

func readECPrivatePEM(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read approval key: %w", err)
	}
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return nil, errors.New("read approval key: no EC PRIVATE KEY or PRIVATE KEY PEM block")
		}
		switch blk.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("read approval key: %w", err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("read approval key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, errors.New("read approval key: not an ECDSA key")
			}
			return ek, nil
		}
	}
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
