package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/policy/audit"
)

// Options is what the caller wires in.
type Options struct {
	// Store is the host's sealed store; nil when the command runs away
	// from a host (then only file-based commands work).
	Store policy.BlobStore
	// Host is this host's key id (the audience of requests to it).
	Host policy.KeyID
	// Audit receives the decisions of "set"; nil writes none.
	Audit *audit.Log
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// ErrUsage is returned (wrapped) for a bad command line.
var ErrUsage = errors.New("usage")

// Main runs one "gvmm policy" subcommand.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, opts Options) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if len(args) == 0 {
		return fmt.Errorf("policy: %w: gvmm policy keygen|sign|bundle|request|show|set|check", ErrUsage)
	}
	c := &cmd{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, opts: opts}
	run := map[string]func([]string) error{
		"keygen": c.keygen, "sign": c.sign, "bundle": c.bundle, "request": c.request,
		"show": c.show, "set": c.set, "check": c.check,
	}[args[0]]
	if run == nil {
		return fmt.Errorf("policy: %w: unknown subcommand %q", ErrUsage, args[0])
	}
	if err := run(args[1:]); err != nil {
		return fmt.Errorf("policy %s: %w", args[0], err)
	}
	return nil
}

type cmd struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
	opts           Options
}

func (c *cmd) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, fs.Arg(0))
	}
	return nil
}

// readFile reads a file ("-" is stdin) of at most policy.MaxStateSize.
func (c *cmd) readFile(path string) ([]byte, error) {
	var r io.Reader = c.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, policy.MaxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > policy.MaxStateSize {
		return nil, fmt.Errorf("read %s: %w: too large", path, policy.ErrInvalid)
	}
	return b, nil
}

// output writes b to path, or to stdout when path is empty.
func (c *cmd) output(path string, b []byte) error {
	b = append(b, '\n')
	if path == "" {
		_, err := c.stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

func (c *cmd) keygen(args []string) error {
	fs := c.flags("keygen")
	out := fs.String("out", "", "private key file to create")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: -out is required", ErrUsage)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	line, _ := json.Marshal(struct {
		ID  policy.KeyID `json:"id"`
		Key []byte       `json:"key"`
	}{policy.KeyIDOf(pub), pub})
	_, err = fmt.Fprintf(c.stdout, "%s\n", line)
	return err
}

func (c *cmd) loadKey(path string) (ed25519.PrivateKey, error) {
	b, err := c.readFile(path)
	if err != nil {
		return nil, err
	}
	return ParseKey(path, b)
}

// ParseKey parses a user's ed25519 private key as gvmm policy keygen
// writes it (PKCS#8 PEM); name is for errors.
func ParseKey(name string, b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s: %w: not a PEM private key", name, policy.ErrInvalid)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", name, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key %s: %w: not ed25519", name, policy.ErrInvalid)
	}
	return ek, nil
}

// strict decodes a document a person wrote: unknown fields refused.
func strict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", policy.ErrInvalid, err)
	}
	return nil
}

func (c *cmd) sign(args []string) error {
	fs := c.flags("sign")
	keyPath := fs.String("key", "", "signer's private key")
	typ := fs.String("type", "", "owner, enterprise or host")
	in := fs.String("in", "-", "document to sign (JSON)")
	out := fs.String("out", "", "signed document (default stdout)")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := c.loadKey(*keyPath)
	if err != nil {
		return err
	}
	b, err := c.readFile(*in)
	if err != nil {
		return err
	}
	var s *policy.Signed
	switch *typ {
	case "owner":
		var l policy.OwnerLayer
		if err = strict(b, &l); err == nil {
			s, err = policy.SignOwnerLayer(key, l)
		}
	case "enterprise":
		var l policy.EnterpriseLayer
		if err = strict(b, &l); err == nil {
			s, err = policy.SignEnterpriseLayer(key, l)
		}
	case "host":
		var h policy.HostPolicy
		if err = strict(b, &h); err == nil {
			s, err = policy.SignHostPolicy(key, h)
		}
	default:
		return fmt.Errorf("%w: -type owner|enterprise|host", ErrUsage)
	}
	if err != nil {
		return err
	}
	enc, err := s.Marshal()
	if err != nil {
		return err
	}
	return c.output(*out, enc)
}

func (c *cmd) readSigned(path string) (*policy.Signed, error) {
	b, err := c.readFile(path)
	if err != nil {
		return nil, err
	}
	return policy.ParseSigned(bytes.NewReader(b))
}

func (c *cmd) bundle(args []string) error {
	fs := c.flags("bundle")
	owner := fs.String("owner", "", "signed owner layer")
	ent := fs.String("enterprise", "", "signed enterprise layer (optional)")
	out := fs.String("out", "", "VM policy (default stdout)")
	if err := parse(fs, args); err != nil {
		return err
	}
	o, err := c.readSigned(*owner)
	if err != nil {
		return err
	}
	d := &policy.VMPolicyDoc{Owner: o}
	if *ent != "" {
		if d.Enterprise, err = c.readSigned(*ent); err != nil {
			return err
		}
	}
	enc, err := d.Marshal()
	if err != nil {
		return err
	}
	return c.output(*out, enc)
}

func (c *cmd) request(args []string) error {
	fs := c.flags("request")
	keyPath := fs.String("key", "", "requesting user's private key")
	action := fs.String("action", "", "migrate, set-vm-policy or set-host-policy")
	aud := fs.String("audience", "", "id of the host the request is for")
	vm := fs.String("vm", "", "VM id")
	dest := fs.String("destination", "", "destination host id (migrate)")
	doc := fs.String("document", "", "the policy file to install (set-*)")
	out := fs.String("out", "", "signed request (default stdout)")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := c.loadKey(*keyPath)
	if err != nil {
		return err
	}
	r := policy.Request{Action: policy.Action(*action), Audience: policy.KeyID(*aud), VM: *vm,
		Destination: policy.KeyID(*dest), IssuedAt: c.opts.Now().Unix()}
	if *doc != "" {
		b, err := c.readFile(*doc)
		if err != nil {
			return err
		}
		r.Document = policy.DocumentDigest(bytes.TrimSuffix(b, []byte("\n")))
	}
	s, err := policy.SignRequest(key, r)
	if err != nil {
		return err
	}
	enc, err := s.Marshal()
	if err != nil {
		return err
	}
	return c.output(*out, enc)
}

// state loads the host's policy state from its sealed store.
func (c *cmd) state() (*policy.HostState, error) {
	if c.opts.Store == nil {
		return nil, fmt.Errorf("%w: no host state here (run on a host, or give -directory)", ErrUsage)
	}
	return policy.LoadHostState(c.opts.Store)
}

// directoryAndPolicy returns the directory and VM policy either from files
// or from the host's state.
func (c *cmd) directoryAndPolicy(dirPath, polPath, vm string) (*policy.Directory, *policy.VMPolicy, error) {
	if dirPath != "" {
		b, err := c.readFile(dirPath)
		if err != nil {
			return nil, nil, err
		}
		var ps []policy.Principal
		if err := strict(b, &ps); err != nil {
			return nil, nil, err
		}
		dir, err := policy.NewDirectory(ps)
		if err != nil {
			return nil, nil, err
		}
		if polPath == "" {
			return dir, nil, nil
		}
		pb, err := c.readFile(polPath)
		if err != nil {
			return nil, nil, err
		}
		doc, err := policy.ParseVMPolicyDoc(bytes.NewReader(pb))
		if err != nil {
			return nil, nil, err
		}
		p, err := policy.VerifyVMPolicy(doc, dir)
		return dir, p, err
	}
	st, err := c.state()
	if err != nil {
		return nil, nil, err
	}
	if vm == "" {
		return st.Directory(), nil, nil
	}
	p, ok := st.VMPolicy(vm)
	if !ok {
		return nil, nil, fmt.Errorf("%w: no policy for vm %s on this host", policy.ErrInvalid, vm)
	}
	return st.Directory(), p, nil
}

func (c *cmd) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return c.output("", b)
}

func (c *cmd) show(args []string) error {
	fs := c.flags("show")
	dirPath := fs.String("directory", "", "directory file (default: this host's)")
	polPath := fs.String("policy", "", "VM policy file")
	vm := fs.String("vm", "", "VM whose installed policy to show")
	if err := parse(fs, args); err != nil {
		return err
	}
	_, p, err := c.directoryAndPolicy(*dirPath, *polPath, *vm)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("%w: -policy or -vm is required", ErrUsage)
	}
	out := struct {
		VM         string                  `json:"vm"`
		Owner      string                  `json:"owner"`
		MinTrust   string                  `json:"effective_min_trust"`
		OwnerLayer policy.OwnerLayer       `json:"owner_layer"`
		Enterprise *policy.EnterpriseLayer `json:"enterprise_layer,omitempty"`
	}{VM: p.VM(), Owner: p.Owner().Name, MinTrust: p.MinTrust().String(), OwnerLayer: p.OwnerLayer()}
	if e, ok := p.EnterpriseLayer(); ok {
		out.Enterprise = &e
	}
	return c.printJSON(out)
}

func (c *cmd) set(args []string) error {
	fs := c.flags("set")
	reqPath := fs.String("request", "", "signed set request")
	polPath := fs.String("policy", "", "VM policy to install")
	hostPath := fs.String("host-policy", "", "signed host policy to install")
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*polPath == "") == (*hostPath == "") {
		return fmt.Errorf("%w: one of -policy and -host-policy", ErrUsage)
	}
	st, err := c.state()
	if err != nil {
		return err
	}
	a, err := policy.NewAuthenticator(policy.AuthConfig{Directory: st.Directory(), Host: c.opts.Host, Replay: st.Replay(), Now: c.opts.Now})
	if err != nil {
		return err
	}
	kind := "set-vm-policy"
	if *hostPath != "" {
		kind = "set-host-policy"
	}
	s, err := c.readSigned(*reqPath)
	var req *policy.Authenticated
	if err == nil {
		req, err = a.Authenticate(s)
	}
	if err == nil {
		if *polPath != "" {
			var b []byte
			if b, err = c.readFile(*polPath); err == nil {
				var doc *policy.VMPolicyDoc
				if doc, err = policy.ParseVMPolicyDoc(bytes.NewReader(b)); err == nil {
					_, err = st.SetVMPolicy(req, doc)
				}
			}
		} else {
			var hs *policy.Signed
			if hs, err = c.readSigned(*hostPath); err == nil {
				_, err = st.SetHostPolicy(req, hs)
			}
		}
	}
	if req != nil {
		// Saved even when the change was refused: the request's nonce
		// is used up either way.
		if serr := policy.SaveHostState(c.opts.Store, st); serr != nil && err == nil {
			err = serr
		}
	}
	d := policy.Decision{Allow: true, Stage: policy.StageAttested, Rule: kind, Reason: "installed"}
	if err != nil {
		d = policy.Deny(policy.StageAttested, kind, err)
	}
	if c.opts.Audit != nil {
		if _, aerr := c.opts.Audit.Append(audit.EventFor(c.opts.Host, kind, req, d)); aerr != nil && err == nil {
			err = aerr
		}
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s: installed\n", kind)
	return err
}

func (c *cmd) check(args []string) error {
	fs := c.flags("check")
	dirPath := fs.String("directory", "", "directory file (default: this host's)")
	polPath := fs.String("policy", "", "VM policy file (default: the request's VM's installed policy)")
	reqPath := fs.String("request", "", "signed migrate request")
	source := fs.String("source", "", "source host id (default: the request's audience)")
	trust := fs.String("trust", "", "hypothetical attested trust level of the destination (omit for the pre-check)")
	exe := fs.String("executable", "", "hypothetical attested gvmm executable SHA-256 (hex)")
	if err := parse(fs, args); err != nil {
		return err
	}
	s, err := c.readSigned(*reqPath)
	if err != nil {
		return err
	}
	var r policy.Request
	if err := strict(s.Body, &r); err != nil {
		return err
	}
	dir, p, err := c.directoryAndPolicy(*dirPath, *polPath, r.VM)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("%w: -policy is required with -directory", ErrUsage)
	}
	src := policy.KeyID(*source)
	if src == "" {
		src = r.Audience
	}
	a, err := policy.NewAuthenticator(policy.AuthConfig{Directory: dir, Host: src, Now: c.opts.Now})
	if err != nil {
		return err
	}
	req, err := a.Authenticate(s)
	if err != nil {
		return err
	}
	srcP, ok1 := dir.Lookup(src)
	dstP, ok2 := dir.Lookup(r.Destination)
	if !ok1 || !ok2 {
		return fmt.Errorf("%w: source or destination not in the directory", policy.ErrUnknownPrincipal)
	}
	in := policy.MigrateOut{Request: req, Policy: p, Source: srcP, Destination: dstP}
	if *trust != "" {
		l, err := policy.ParseTrustLevel(*trust)
		if err != nil {
			return err
		}
		var d [32]byte
		if b, err := hex.DecodeString(*exe); err != nil || len(b) != len(d) {
			return fmt.Errorf("%w: -executable must be 64 hex digits with -trust", ErrUsage)
		} else {
			copy(d[:], b)
		}
		in.Attestation = &policy.Attestation{HostID: dstP.TPMHostID, Trust: l, Executable: d}
	}
	return c.printJSON(policy.EvaluateMigrateOut(in))
}
