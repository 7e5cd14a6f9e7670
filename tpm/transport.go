package tpm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// Kind says what sort of TPM a URI names. The verifier never trusts a
// host's claim of its kind; the kind only selects local defaults (which PCR
// to measure into, whether it may be reset).
type Kind int

const (
	// KindSimulator is the reference TPM compiled into this process.
	KindSimulator Kind = iota + 1
	// KindSwtpm is a separate swtpm process reached over a socket.
	KindSwtpm
	// KindDevice is a hardware TPM through /dev/tpmrm0.
	KindDevice
)

func (k Kind) String() string {
	switch k {
	case KindSimulator:
		return "simulator"
	case KindSwtpm:
		return "swtpm"
	case KindDevice:
		return "device"
	}
	return "unknown"
}

// Software reports whether the kind is a software TPM.
func (k Kind) Software() bool { return k == KindSimulator || k == KindSwtpm }

// DefaultURI is the TPM used when none is configured.
const DefaultURI = "sim"

// SoftwarePCR is the PCR gvmm measures into on software TPMs. It is
// resettable from locality 0, which is acceptable only because a software
// TPM earns the lowest trust level anyway.
const SoftwarePCR = 23

// DefaultDevicePCR is the PCR gvmm measures into on a hardware TPM unless
// configured otherwise: PCRs 8-15 are not resettable from locality 0, and
// 8-9 are commonly used by boot loaders, so 14 is the default.
const DefaultDevicePCR = 14

// ErrSimulatorNeedsCgo is returned when the simulator is asked for in a
// binary built with CGO_ENABLED=0.
var ErrSimulatorNeedsCgo = errors.New("the TPM simulator needs cgo: rebuild with CGO_ENABLED=1 (and libssl-dev), or use --tpm swtpm+tcp://127.0.0.1:PORT or device:///dev/tpmrm0")

// Transport sends one TPM 2.0 command and returns its response. It is the
// interface every backend implements, and what go-tpm's tpm2 commands take.
type Transport interface {
	transport.TPMCloser
}

// Config selects and configures a TPM. Its zero value selects nothing; use
// ParseURI.
type Config struct {
	// Kind is the backend.
	Kind Kind
	// Address is the swtpm socket (host:port or a unix path) or the device
	// path. Empty for the simulator.
	Address string
	// Network is "tcp" or "unix" for swtpm.
	Network string
	// FixedSeed, when non-nil, makes the simulator deterministic so that
	// sealed state survives a process restart. INSECURE: anyone with the seed
	// is the TPM.
	FixedSeed *int64
	// PCR is the PCR gvmm measures into.
	PCR int
}

// Insecure reports whether the configuration is insecure by construction.
func (c Config) Insecure() bool { return c.Kind == KindSimulator && c.FixedSeed != nil }

// String renders the configuration as a URI, with the insecure mark.
func (c Config) String() string {
	switch c.Kind {
	case KindSimulator:
		if c.FixedSeed != nil {
			return fmt.Sprintf("sim?insecure-fixed-seed=%d", *c.FixedSeed)
		}
		return "sim"
	case KindSwtpm:
		if c.Network == "unix" {
			return "swtpm+unix://" + c.Address
		}
		return "swtpm+tcp://" + c.Address
	case KindDevice:
		return "device://" + c.Address
	}
	return "invalid"
}

// ParseURI parses a TPM URI:
//
//	sim                                   embedded simulator, random seeds
//	sim?insecure-fixed-seed=N             simulator with fixed seeds (INSECURE, tests only)
//	swtpm+tcp://127.0.0.1:2321            swtpm data channel over TCP
//	swtpm+unix:///run/swtpm/sock          swtpm data channel over a unix socket
//	device:///dev/tpmrm0[?pcr=14]         hardware TPM via the resource manager
func ParseURI(s string) (Config, error) {
	if s == "" {
		s = DefaultURI
	}
	if s == "sim" || strings.HasPrefix(s, "sim?") {
		c := Config{Kind: KindSimulator, PCR: SoftwarePCR}
		if q, ok := strings.CutPrefix(s, "sim?"); ok {
			v, err := url.ParseQuery(q)
			if err != nil {
				return Config{}, fmt.Errorf("parse TPM URI %q: %w", s, err)
			}
			for k := range v {
				if k != "insecure-fixed-seed" {
					return Config{}, fmt.Errorf("parse TPM URI %q: unknown parameter %q", s, k)
				}
			}
			seed, err := strconv.ParseInt(v.Get("insecure-fixed-seed"), 10, 64)
			if err != nil {
				return Config{}, fmt.Errorf("parse TPM URI %q: insecure-fixed-seed: %w", s, err)
			}
			c.FixedSeed = &seed
		}
		return c, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return Config{}, fmt.Errorf("parse TPM URI %q: %w", s, err)
	}
	switch u.Scheme {
	case "swtpm+tcp":
		if u.Host == "" || u.Port() == "" || u.Path != "" || u.RawQuery != "" {
			return Config{}, fmt.Errorf("parse TPM URI %q: want swtpm+tcp://HOST:PORT", s)
		}
		return Config{Kind: KindSwtpm, Network: "tcp", Address: u.Host, PCR: SoftwarePCR}, nil
	case "swtpm+unix":
		if u.Host != "" || u.Path == "" || u.RawQuery != "" {
			return Config{}, fmt.Errorf("parse TPM URI %q: want swtpm+unix:///PATH", s)
		}
		return Config{Kind: KindSwtpm, Network: "unix", Address: u.Path, PCR: SoftwarePCR}, nil
	case "device":
		if u.Host != "" || u.Path == "" {
			return Config{}, fmt.Errorf("parse TPM URI %q: want device:///dev/tpmrm0", s)
		}
		c := Config{Kind: KindDevice, Address: u.Path, PCR: DefaultDevicePCR}
		for k, v := range u.Query() {
			if k != "pcr" || len(v) != 1 {
				return Config{}, fmt.Errorf("parse TPM URI %q: unknown parameter %q", s, k)
			}
			n, err := strconv.Atoi(v[0])
			if err != nil || n < 8 || n > 15 {
				return Config{}, fmt.Errorf("parse TPM URI %q: pcr must be 8-15 (not resettable from locality 0)", s)
			}
			c.PCR = n
		}
		return c, nil
	}
	return Config{}, fmt.Errorf("parse TPM URI %q: unknown scheme (want sim, swtpm+tcp, swtpm+unix or device)", s)
}

// TPM is an open TPM. Its methods serialise access to the transport; it
// must be closed by whoever opened it.
type TPM struct {
	cfg Config
	log *slog.Logger

	// mu serialises commands: a TPM processes one command at a time and
	// multi-command sequences (sessions) must not interleave.
	mu sync.Mutex
	// tr is the transport; nil after Close.
	tr Transport
}

// Open opens the TPM that cfg names. log may be nil.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*TPM, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		tr  Transport
		err error
	)
	switch cfg.Kind {
	case KindSimulator:
		if cfg.FixedSeed != nil {
			log.Warn("INSECURE: TPM simulator with a fixed seed; anyone who knows the seed can unseal everything", "tpm", cfg.String())
		}
		tr, err = openSimulator(cfg.FixedSeed)
	case KindSwtpm:
		tr, err = dialStream(ctx, cfg.Network, cfg.Address)
	case KindDevice:
		tr, err = linuxtpm.Open(cfg.Address)
	default:
		err = errors.New("no TPM kind configured")
	}
	if err != nil {
		return nil, fmt.Errorf("open TPM %s: %w", cfg, err)
	}
	return &TPM{cfg: cfg, log: log, tr: tr}, nil
}

// OpenURI parses uri and opens that TPM.
func OpenURI(ctx context.Context, uri string, log *slog.Logger) (*TPM, error) {
	cfg, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return Open(ctx, cfg, log)
}

// Config returns the configuration the TPM was opened with.
func (t *TPM) Config() Config { return t.cfg }

// Close closes the transport. Closing twice is harmless.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tr == nil {
		return nil
	}
	err := t.tr.Close()
	t.tr = nil
	if err != nil {
		return fmt.Errorf("close TPM: %w", err)
	}
	return nil
}

// transportTPM is what go-tpm's commands execute against.
type transportTPM = transport.TPM

// errClosed is returned by commands on a closed TPM.
var errClosed = errors.New("TPM is closed")

// do runs f with exclusive use of the transport, after checking ctx. TPM
// commands themselves are not interruptible; ctx is checked between them.
func (t *TPM) do(ctx context.Context, f func(tr transportTPM) error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx) // says who cancelled, where the caller set a cause
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tr == nil {
		return errClosed
	}
	return f(ctxTransport{ctx: ctx, tr: t.tr})
}

// ctxTransport refuses to send more commands once ctx is done, so a long
// sequence stops between commands when cancelled.
type ctxTransport struct {
	ctx context.Context
	tr  transport.TPM
}

func (c ctxTransport) Send(cmd []byte) ([]byte, error) {
	if c.ctx.Err() != nil {
		return nil, context.Cause(c.ctx)
	}
	return c.tr.Send(cmd)
}
