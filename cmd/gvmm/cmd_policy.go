package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gvmm/gvmm/migration/gate"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
	"github.com/gvmm/gvmm/policy/cli"
	"github.com/gvmm/gvmm/tpm"
)

const policySynopsis = `[--state DIR --tpm URI] SUBCOMMAND [flags]

Users, hosts, signed policies and the host's sealed policy state.

Anywhere (no TPM):
  keygen     -out KEY                                   a user's ed25519 key; prints {"id","key"}
  principal  --key KEY --name NAME [--roles a,b] --out FILE   a user's directory entry
  id         --key KEY | --principal FILE                print a key id
  directory  --out DIR.json PRINCIPAL.json...             a directory (checked) from entries
  sign       -key KEY -type owner|enterprise|host -in DOC.json [-out SIGNED.json]
  bundle     -owner SIGNED [-enterprise SIGNED] [-out POLICY.json]
  request    -key KEY -action migrate|set-vm-policy|set-host-policy -audience ID
             [-vm VM] [-destination ID] [-document FILE] [-out REQ.json]
  check      -request REQ.json -directory DIR.json -policy POLICY.json [-trust L -executable HEX]

On a host (--state DIR --tpm URI: a measured launch unseals its store):
  hostkey    --name NAME [--groups a,b] [--owner USER_ID] [--out FILE]
             the host's ed25519 key (made once, sealed) and its directory entry
  init       --directory DIR.json [--replace]            install the directory (the host's trust root)
  show       -vm VM                                      a VM's installed policy
  set        -request REQ.json -policy POLICY.json | -host-policy SIGNED.json
  check      -request REQ.json [-trust L -executable HEX]     evaluate a migration, change nothing
  audit                                                  print the audit log, verify its chain (no TPM)`

func policyCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "policy", policySynopsis)
	state := fs.String("state", "", "host state `directory` (for hostkey, init, show, set, check, audit)")
	tpmURI := fs.String("tpm", tpm.DefaultURI, "the host's TPM `URI` (as given to gvmm host init)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return &exitError{code: 2}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "principal":
		return policyPrincipal(e, rest)
	case "id":
		return policyID(e, rest)
	case "directory":
		return policyDirectory(e, rest)
	case "audit":
		if *state == "" {
			return usageError("policy audit needs --state DIR")
		}
		return policyAudit(e, *state, rest)
	case "hostkey", "init":
		if *state == "" {
			return usageError("policy %s needs --state DIR and --tpm URI", sub)
		}
		tp, op, err := openPolicyHost(ctx, e, *state, *tpmURI, gate.OpenOptions{StoreOnly: true})
		if err != nil {
			return err
		}
		defer tp.Close()
		if sub == "hostkey" {
			return policyHostKey(e, op, rest)
		}
		return policyInit(e, *state, op, rest)
	}
	var opts cli.Options
	if *state != "" && (sub == "show" || sub == "set" || sub == "check") {
		tp, op, err := openPolicyHost(ctx, e, *state, *tpmURI, gate.OpenOptions{NeedState: true})
		if err != nil {
			return err
		}
		defer tp.Close()
		defer op.Host.Close()
		opts = cli.Options{Store: op.Store, Host: op.Host.Self.ID(), Audit: op.Host.Audit}
	}
	err := cli.Main(ctx, append([]string{sub}, rest...), e.stdin, e.stdout, e.stderr, opts)
	if errors.Is(err, cli.ErrUsage) {
		return usageError("%v", err)
	}
	return err
}

// openPolicyHost opens the TPM and the host's sealed store.
func openPolicyHost(ctx context.Context, e *env, state, uri string, opts gate.OpenOptions) (*tpm.TPM, *gate.Opened, error) {
	tp, err := openTPM(ctx, e, uri)
	if err != nil {
		return nil, nil, err
	}
	opts.Logger = e.log
	op, err := gate.OpenHost(ctx, tp, state, opts)
	if err != nil {
		tp.Close()
		return nil, nil, err
	}
	return tp, op, nil
}

// splitList splits a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// writeOut writes b to path (0600), or to stdout when path is empty.
func writeOut(e *env, path string, b []byte) error {
	if path == "" {
		_, err := fmt.Fprintf(e.stdout, "%s\n", b)
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func policyHostKey(e *env, op *gate.Opened, args []string) error {
	fs := newFlagSet(e, "policy hostkey", "--name NAME [--groups a,b] [--owner USER_ID] [--out FILE]")
	name := fs.String("name", "", "the host's `name` in the directory (for people; nothing is decided on it)")
	groups := fs.String("groups", "", "comma-separated host `groups` (policies name them as group:NAME)")
	owner := fs.String("owner", "", "the key `id` of the user who owns this host (may set its migrate-in policy)")
	out := fs.String("out", "", "write the directory entry to this `file` (default: stdout) and print the key id")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *name == "" {
		return usageError("policy hostkey needs --name")
	}
	k, err := gate.HostKey(op.Store, true)
	if err != nil {
		return err
	}
	p := policy.Principal{Name: *name, Kind: policy.KindHost, Key: k.Public().(ed25519.PublicKey),
		Groups: splitList(*groups), TPMHostID: op.Info.HostID, Owner: policy.KeyID(*owner)}
	// Checked alone (its owner is checked when the directory is made).
	check := p
	check.Owner = ""
	return emitPrincipal(e, *out, p, check)
}

// readUserKey reads an ed25519 private key (PKCS#8 PEM, gvmm policy keygen).
func readUserKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	return cli.ParseKey(path, b)
}

// emitPrincipal checks a directory entry on its own (check: p as it can
// be checked without the rest of the directory), writes it to out (or
// stdout) and, with out, prints its key id.
func emitPrincipal(e *env, out string, p, check policy.Principal) error {
	if _, err := policy.NewDirectory([]policy.Principal{check}); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := writeOut(e, out, b); err != nil {
		return err
	}
	if out != "" {
		fmt.Fprintln(e.stdout, p.ID())
	}
	return nil
}

func policyPrincipal(e *env, args []string) error {
	fs := newFlagSet(e, "policy principal", "--key KEY --name NAME [--roles a,b] [--out FILE]")
	keyPath := fs.String("key", "", "the user's private key `file` (gvmm policy keygen)")
	name := fs.String("name", "", "the user's `name` (for people; nothing is decided on it)")
	roles := fs.String("roles", "user", "comma-separated `roles` (admin: IT; policies name them as role:NAME)")
	out := fs.String("out", "", "write the directory entry to this `file` (default: stdout) and print the key id")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyPath == "" || *name == "" {
		return usageError("policy principal needs --key and --name")
	}
	k, err := readUserKey(*keyPath)
	if err != nil {
		return err
	}
	p := policy.Principal{Name: *name, Kind: policy.KindUser, Key: k.Public().(ed25519.PublicKey)}
	for _, r := range splitList(*roles) {
		p.Roles = append(p.Roles, policy.Role(r))
	}
	return emitPrincipal(e, *out, p, p)
}

func policyID(e *env, args []string) error {
	fs := newFlagSet(e, "policy id", "--key KEY | --principal FILE")
	keyPath := fs.String("key", "", "a user's private key `file`")
	pPath := fs.String("principal", "", "a directory entry `file` (user or host)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *keyPath != "" && *pPath == "":
		k, err := readUserKey(*keyPath)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, policy.KeyIDOf(k.Public().(ed25519.PublicKey)))
	case *pPath != "" && *keyPath == "":
		var p policy.Principal
		if err := readStrictJSON(*pPath, &p); err != nil {
			return err
		}
		if len(p.Key) != ed25519.PublicKeySize {
			return fmt.Errorf("%s: not an ed25519 key", *pPath)
		}
		fmt.Fprintln(e.stdout, p.ID())
	default:
		return usageError("policy id needs one of --key and --principal")
	}
	return nil
}

func policyDirectory(e *env, args []string) error {
	fs := newFlagSet(e, "policy directory", "--out DIR.json PRINCIPAL.json...")
	out := fs.String("out", "", "the directory `file` to write (default: stdout)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if fs.NArg() == 0 {
		return usageError("policy directory needs the entry files (gvmm policy principal, gvmm policy hostkey)")
	}
	var ps []policy.Principal
	for _, path := range fs.Args() {
		var p policy.Principal
		if err := readStrictJSON(path, &p); err != nil {
			return err
		}
		ps = append(ps, p)
	}
	if _, err := policy.NewDirectory(ps); err != nil {
		return err
	}
	b, err := json.MarshalIndent(ps, "", "  ")
	if err != nil {
		return err
	}
	return writeOut(e, *out, b)
}

// policyInit installs a directory as the host's trust root: a new policy
// state (no policies), or with --replace one that replaces the state.
func policyInit(e *env, state string, op *gate.Opened, args []string) error {
	fl := newFlagSet(e, "policy init", "--directory DIR.json [--replace]")
	dirPath := fl.String("directory", "", "the directory `file` (gvmm policy directory)")
	replace := fl.Bool("replace", false, "replace an existing policy state (its policies and used request nonces are dropped)")
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	if *dirPath == "" {
		return usageError("policy init needs --directory")
	}
	var ps []policy.Principal
	if err := readStrictJSON(*dirPath, &ps); err != nil {
		return err
	}
	dir, err := policy.NewDirectory(ps)
	if err != nil {
		return err
	}
	key, err := gate.HostKey(op.Store, false)
	if err != nil {
		return err
	}
	self, ok := dir.Lookup(policy.KeyIDOf(key.Public().(ed25519.PublicKey)))
	if !ok || self.Kind != policy.KindHost {
		return fmt.Errorf("policy init: the directory has no host entry for this host's key (gvmm policy hostkey)")
	}
	if self.TPMHostID != op.Info.HostID {
		return fmt.Errorf("policy init: the directory gives this host TPM host id %q; its TPM is %s", self.TPMHostID, op.Info.HostID)
	}
	if _, err := op.Store.Get(policy.StateBlob); err == nil && !*replace {
		return fmt.Errorf("policy init: %s already has a policy state (--replace drops it)", state)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("policy init: %w", err)
	}
	if err := policy.SaveHostState(op.Store, policy.NewHostState(dir)); err != nil {
		return err
	}
	al, err := audit.Open(filepath.Join(state, gate.AuditFile), nil)
	if err != nil {
		return err
	}
	defer al.Close()
	if _, err := al.Append(audit.Event{Host: self.ID(), Kind: "set-directory", Decision: policy.Decision{
		Allow: true, Stage: policy.StageAttested, Rule: "operator",
		Reason: fmt.Sprintf("installed a directory of %d principals", len(ps)),
	}}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "installed a directory of %d principals on host %s (%s)\n", len(ps), self.Name, self.ID())
	return nil
}

// policyAudit prints a host's audit log after verifying its chain.
func policyAudit(e *env, state string, args []string) error {
	fs := newFlagSet(e, "policy audit", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path := filepath.Join(state, gate.AuditFile)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	head, err := audit.Verify(f)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", path, err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, audit.MaxLine+1)
	short := func(id policy.KeyID) string {
		if len(id) > 12 {
			return string(id[:12])
		}
		return string(id)
	}
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return err
		}
		ev, verdict := r.Event, "ALLOW"
		if !ev.Decision.Allow {
			verdict = "DENY"
		}
		fmt.Fprintf(e.stdout, "#%d %s host %s %s %s (%s) rule %s: %s", r.Seq, r.Time.UTC().Format("2006-01-02T15:04:05Z"),
			short(ev.Host), ev.Kind, verdict, ev.Decision.Stage, ev.Decision.Rule, ev.Decision.Reason)
		if ev.VM != "" {
			fmt.Fprintf(e.stdout, " vm=%s", ev.VM)
		}
		if ev.Requester != "" {
			fmt.Fprintf(e.stdout, " requester=%s", short(ev.Requester))
		}
		if ev.Source != "" {
			fmt.Fprintf(e.stdout, " source=%s", short(ev.Source))
		}
		if ev.Destination != "" {
			fmt.Fprintf(e.stdout, " destination=%s", short(ev.Destination))
		}
		fmt.Fprintln(e.stdout)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "audit chain verified: %d records, head %s\n", head.Seq, head.Hash)
	return nil
}
