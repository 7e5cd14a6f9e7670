package tpm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseURI(t *testing.T) {
	seed := int64(3)
	for _, c := range []struct {
		in   string
		want Config
		err  string
	}{
		{in: "", want: Config{Kind: KindSimulator, PCR: 23}},
		{in: "sim", want: Config{Kind: KindSimulator, PCR: 23}},
		{in: "sim?insecure-fixed-seed=3", want: Config{Kind: KindSimulator, PCR: 23, FixedSeed: &seed}},
		{in: "sim?seed=3", err: "unknown parameter"},
		{in: "swtpm+tcp://127.0.0.1:2321", want: Config{Kind: KindSwtpm, Network: "tcp", Address: "127.0.0.1:2321", PCR: 23}},
		{in: "swtpm+tcp://127.0.0.1", err: "want swtpm+tcp"},
		{in: "swtpm+unix:///run/swtpm.sock", want: Config{Kind: KindSwtpm, Network: "unix", Address: "/run/swtpm.sock", PCR: 23}},
		{in: "device:///dev/tpmrm0", want: Config{Kind: KindDevice, Address: "/dev/tpmrm0", PCR: DefaultDevicePCR}},
		{in: "device:///dev/tpmrm0?pcr=9", want: Config{Kind: KindDevice, Address: "/dev/tpmrm0", PCR: 9}},
		{in: "device:///dev/tpmrm0?pcr=23", err: "not resettable"},
		{in: "device:///dev/tpmrm0?pcr=16", err: "not resettable"},
		{in: "tcp://1.2.3.4:1", err: "unknown scheme"},
	} {
		got, err := ParseURI(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseURI(%q) error = %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got.String() != c.want.String() || got.PCR != c.want.PCR || got.Kind != c.want.Kind {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	if c, _ := ParseURI("sim?insecure-fixed-seed=1"); !c.Insecure() || !strings.Contains(c.String(), "insecure") {
		t.Errorf("fixed-seed simulator not marked insecure: %s", c)
	}
}

// TestSwtpmTCP runs a quote round over swtpm's TCP data channel (the
// other swtpm tests use unix sockets).
func TestSwtpmTCP(t *testing.T) {
	if !swtpmAvailable(t) {
		t.Skip("swtpm not installed")
	}
	uri := startSwtpmTCP(t, t.TempDir())
	tp, err := OpenURI(context.Background(), uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	h := newHost(t, tp)
	if _, err := h.verify(h.evidence(t)); err != nil {
		t.Fatalf("verify over TCP: %v", err)
	}
}

// TestSwtpmUnixSocket runs a quote round over swtpm's unix-socket data
// channel.
func TestSwtpmUnixSocket(t *testing.T) {
	if !swtpmAvailable(t) {
		t.Skip("swtpm not installed")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "data.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// The socket file appears at bind, before swtpm listens: wait until
	// a connection is accepted, not until the file exists.
	for i := 0; i < 500; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	tp, err := OpenURI(context.Background(), "swtpm+unix://"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	h := newHost(t, tp)
	if _, err := h.verify(h.evidence(t)); err != nil {
		t.Fatalf("verify over unix socket: %v", err)
	}
}

// TestSwtpmUnreachable: a dead swtpm is a clear error, not a hang.
func TestSwtpmUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := OpenURI(ctx, fmt.Sprintf("swtpm+tcp://127.0.0.1:%d", freePortPair(t)), nil)
	if err == nil || !strings.Contains(err.Error(), "dial swtpm") {
		t.Fatalf("open dead swtpm: %v", err)
	}
}

// TestHostInitAndReopen: host init seals a KEK and a host key; with the
// fixed-seed simulator a "restart" (new simulator, same seed) unseals
// them again until the closing event; tampering with the blob fails.
func TestHostInitAndReopen(t *testing.T) {
	if !SimulatorAvailable {
		t.Skip(ErrSimulatorNeedsCgo.Error())
	}
	ctx := context.Background()
	dir := t.TempDir()
	exe := filepath.Join(t.TempDir(), "gvmm")
	os.WriteFile(exe, []byte("gvmm v1"), 0o755)
	in := LaunchInputs{Executable: exe, Config: []byte("c"), Policy: []byte("p")}
	cfg, _ := ParseURI("sim?insecure-fixed-seed=42")
	tp, err := Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := InitHost(ctx, tp, dir, HostOptions{Launch: in})
	tp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !info.Insecure {
		t.Fatal("fixed-seed host state not marked insecure")
	}
	if got, err := ReadHostInfo(dir); err != nil || !got.Insecure || got.HostID != info.HostID {
		t.Fatalf("read host info: %+v, %v", got, err)
	}
	// Restart: same seed, new measured launch.
	tp, err = Open(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	log, err := tp.MeasureLaunch(ctx, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenHostStore(ctx, tp, dir, nil, nil)
	if err != nil {
		t.Fatalf("reopen store after restart: %v", err)
	}
	if _, err := st.Get(hostKeyBlob); err != nil {
		t.Fatalf("host key: %v", err)
	}
	if err := tp.CloseLaunch(ctx, log); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenHostStore(ctx, tp, dir, nil, nil); err == nil {
		t.Fatal("store reopened after the closing event")
	}
	// A changed gvmm cannot unseal.
	os.WriteFile(exe, []byte("gvmm v2 (unapproved)"), 0o755)
	if _, err := tp.MeasureLaunch(ctx, in, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenHostStore(ctx, tp, dir, nil, nil); err == nil {
		t.Fatal("store reopened by a changed executable")
	}
	if _, err := InitHost(ctx, tp, dir, HostOptions{Launch: in}); err == nil {
		t.Fatal("init over an existing host state succeeded")
	}
}

// A cancelled context's cause, where its canceller set one, is what a
// command returns: the error then says who cancelled.
func TestCommandReturnsCancelCause(t *testing.T) {
	tp := openSim(t)
	cause := errors.New("the machine stopped")
	for _, tc := range []struct {
		name   string
		cancel func() context.Context
		want   error
	}{
		{"with a cause", func() context.Context {
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(cause)
			return ctx
		}, cause},
		{"without one", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tp.ResetPCR(tc.cancel(), 23); !errors.Is(err, tc.want) {
				t.Errorf("ResetPCR on a cancelled context: %v, want %v", err, tc.want)
			}
		})
	}
}
