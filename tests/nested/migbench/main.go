// Command migbench measures live migration on the machine that has
// /dev/kvm (inside L1, or on a host with KVM), for gvmm and for QEMU: for
// each round it boots the same idle guest (kernel, initramfs, memory,
// vCPUs, no devices but the serial console) with each VMM, starts the
// guest agent's heartbeat (tests/guest/agent: a line with a sequence
// number and the guest's clocks every -hb-ms), and migrates it over
// loopback TCP to a second process of the same VMM:
//
//   - gvmm: "gvmm run --api-socket" to "gvmm receive --listen --key" with
//     "gvmm migrate" (encrypted and authenticated, its defaults);
//   - QEMU -M pc: a second QEMU with -incoming tcp:..., driven over QMP
//     (migrate, then query-migrate until it completes), plaintext, with
//     its defaults but max-bandwidth lifted so that QEMU's 128 MiB/s
//     default cap does not lengthen its total time.
//
// For each migration it reports total time and downtime as the VMM
// reports them, and, the same way for both, the longest gap between two
// heartbeat lines as they reach migbench (across the source's and the
// destination's consoles; it includes up to one heartbeat period) and how
// far the guest's monotonic clock moved across it. It prints one result
// line per migration (format in tests/nested/internal/benchfmt) and exits
// 1 if any failed. tests/nested builds it (static) for the bench mode.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

// guestCmdline is the guest kernel command line of every VMM.
const guestCmdline = "console=ttyS0 quiet panic=-1"

// afterHandover is how long after a migration returns the CPU time of
// both processes and of the machine is read again.
const afterHandover = 500 * time.Millisecond

// tailLines is how many console lines of a failed migration are shown.
const tailLines = 30

type config struct {
	runs           int
	mem            string
	cpus           int
	kernel, initrd string
	gvmm, qemu     string
	compress       string
	qemuData       string
	qemuLib        string
	dir            string
	hbMs           int
	bootTimeout    time.Duration
	vmms           []string
	verbose        bool
	cpuProfile     bool
	dirty          string // "MIB PAGES_PER_SEC" for the guest agent's dirtier, or empty
}

func main() {
	var c config
	fs := flag.NewFlagSet("migbench", flag.ExitOnError)
	fs.IntVar(&c.runs, "n", 3, "rounds (each migrates once with every VMM)")
	fs.StringVar(&c.mem, "mem", "256M", "guest memory (a size with an M or G suffix)")
	fs.IntVar(&c.cpus, "cpus", 1, "guest vCPUs")
	fs.StringVar(&c.kernel, "kernel", "", "guest kernel (bzImage)")
	fs.StringVar(&c.initrd, "initrd", "", "guest initramfs (tests/guest, with the agent)")
	fs.StringVar(&c.gvmm, "gvmm", "gvmm", "gvmm binary")
	fs.StringVar(&c.compress, "gvmm-compress", "auto", "gvmm migrate --compress: auto, off or always")
	fs.StringVar(&c.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.qemuData, "qemu-data", "", "QEMU firmware folder (-L); empty: QEMU's own")
	fs.StringVar(&c.qemuLib, "qemu-lib", "", "LD_LIBRARY_PATH for QEMU; empty: none")
	fs.StringVar(&c.dir, "dir", os.TempDir(), "folder for the key file and the sockets")
	fs.IntVar(&c.hbMs, "hb-ms", 20, "guest heartbeat period in milliseconds")
	fs.DurationVar(&c.bootTimeout, "boot-timeout", 5*time.Minute, "bound on a boot to the guest's shell")
	vmms := fs.String("vmms", "gvmm,qemu", "comma-separated VMMs: gvmm, qemu (QEMU -M pc), qemu-tls (the same over TLS with a pre-shared key)")
	fs.BoolVar(&c.verbose, "v", false, "relay every console")
	fs.StringVar(&c.dirty, "dirty", "", "MIB:PAGES_PER_SEC: the source guest also dirties MIB MiB at that rate (0: no limit) while it migrates; empty: an idle guest")
	fs.BoolVar(&c.cpuProfile, "cpuprofile", false, "CPU-profile the first round's source gvmm run and its destination's receive (GVMM_CPUPROFILE) and print the profile, base64, between "+benchfmt.ProfileBegin+" and "+benchfmt.ProfileEnd+" lines")
	fs.Parse(os.Args[1:])
	c.vmms = strings.Split(*vmms, ",")
	if fs.NArg() > 0 || c.runs < 1 || c.hbMs < 1 || c.kernel == "" || c.initrd == "" {
		fmt.Fprintln(os.Stderr, "usage: migbench -kernel K -initrd I [flags]")
		fs.PrintDefaults()
		os.Exit(2)
	}
	if c.dirty != "" {
		if _, err := dirtyArgs(c.dirty); err != nil {
			fmt.Fprintf(os.Stderr, "migbench: -dirty: %v\n", err)
			os.Exit(2)
		}
	}
	for _, v := range c.vmms {
		if v != "gvmm" && v != "qemu" && v != "qemu-tls" {
			fmt.Fprintf(os.Stderr, "migbench: unknown VMM %q (want gvmm, qemu or qemu-tls)\n", v)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, c, os.Stdout))
}

func run(ctx context.Context, c config, w io.Writer) int {
	load := "idle guest"
	if c.dirty != "" {
		load = "guest dirtying " + c.dirty + " (MiB:pages/s)"
	}
	fmt.Fprintf(w, "migbench: %d rounds of %s; %s %s, %d vCPU(s), heartbeat every %d ms\n",
		c.runs, strings.Join(c.vmms, ", "), load, c.mem, c.cpus, c.hbMs)
	key := filepath.Join(c.dir, "migbench.key")
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(key, k, 0o600); err != nil {
		fmt.Fprintf(w, "migbench: key file: %v\n", err)
		return 1
	}
	defer os.Remove(key)
	rc := 0
	for round := 1; round <= c.runs; round++ {
		for _, v := range c.vmms {
			m := &mig{c: c, vmm: v, round: round, w: w, key: key}
			var r benchfmt.MigResult
			if ctx.Err() != nil {
				r = benchfmt.MigUnmeasured(v, round, "interrupted")
			} else {
				r = m.run(ctx)
			}
			fmt.Fprintln(w, r.String())
			if !r.OK {
				rc = 1
			}
		}
	}
	return rc
}

// mig is one migration of one VMM.
type mig struct {
	c     config
	vmm   string
	round int
	w     io.Writer
	key   string
	hb    beats
}

func (m *mig) say(format string, args ...any) {
	fmt.Fprintf(m.w, "migbench: %s round %d: %s\n", m.vmm, m.round, fmt.Sprintf(format, args...))
}

func (m *mig) env() []string {
	env := os.Environ()
	if m.vmm != "gvmm" && m.c.qemuLib != "" {
		env = append(env, "LD_LIBRARY_PATH="+m.c.qemuLib)
	}
	if m.vmm == "gvmm" {
		// Debug logs carry the switchover's and the restore's timings,
		// relayed above.
		env = append(env, "GVMM_LOG=debug")
	}
	return env
}

func (m *mig) qemuArgv(extra ...string) []string {
	a := []string{m.c.qemu}
	if m.c.qemuData != "" {
		a = append(a, "-L", m.c.qemuData)
	}
	// debug-threads names QEMU's threads ("CPU 0/KVM", "live_migration")
	// for the CPU time by thread that each round prints.
	a = append(a, "-name", "migbench,debug-threads=on", "-M", "pc", "-enable-kvm", "-cpu", "host",
		"-m", m.c.mem, "-smp", fmt.Sprint(m.c.cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-vga", "none",
		"-serial", "stdio", "-no-reboot",
		"-kernel", m.c.kernel, "-initrd", m.c.initrd, "-append", guestCmdline)
	return append(a, extra...)
}

func (m *mig) run(ctx context.Context) benchfmt.MigResult {
	r := benchfmt.MigUnmeasured(m.vmm, m.round, "")
	tag := fmt.Sprintf("%s%d", m.vmm, m.round)
	srcSock := filepath.Join(m.c.dir, "migbench-src-"+tag+".sock")
	dstSock := filepath.Join(m.c.dir, "migbench-dst-"+tag+".sock")
	defer os.Remove(srcSock)
	defer os.Remove(dstSock)
	addr, err := freePort()
	if err != nil {
		r.Why = err.Error()
		return r
	}
	var srcArgv, dstArgv []string
	if m.vmm == "gvmm" {
		srcArgv = []string{m.c.gvmm, "run", "--api-socket", srcSock, "--kernel", m.c.kernel, "--initrd", m.c.initrd,
			"--memory", m.c.mem, "--cpus", fmt.Sprint(m.c.cpus), "--cmdline", guestCmdline}
		dstArgv = []string{m.c.gvmm, "receive", "--listen", addr, "--insecure-key", m.key, "--api-socket", dstSock}
	} else if m.vmm == "qemu-tls" {
		pskDir, err := m.pskDir()
		if err != nil {
			r.Why = err.Error()
			return r
		}
		defer os.RemoveAll(pskDir)
		srcArgv = m.qemuArgv("-qmp", "unix:"+srcSock+",server=on,wait=off",
			"-object", "tls-creds-psk,id=tls0,endpoint=client,username=migbench,dir="+pskDir)
		dstArgv = m.qemuArgv("-qmp", "unix:"+dstSock+",server=on,wait=off",
			"-object", "tls-creds-psk,id=tls0,endpoint=server,dir="+pskDir, "-incoming", "defer")
	} else {
		srcArgv = m.qemuArgv("-qmp", "unix:"+srcSock+",server=on,wait=off")
		dstArgv = m.qemuArgv("-qmp", "unix:"+dstSock+",server=on,wait=off", "-incoming", "tcp:"+addr)
	}
	srcEnv := m.env()
	if m.c.cpuProfile && m.vmm == "gvmm" && m.round == 1 {
		profile := filepath.Join(m.c.dir, "migbench-src.pprof")
		srcEnv = append(srcEnv, "GVMM_CPUPROFILE="+profile)
		defer benchfmt.DumpProfile(m.w, "migbench-gvmm-src", profile)
	}
	src, err := startVM(srcArgv, srcEnv, m, "src")
	if err != nil {
		r.Why = err.Error()
		return r
	}
	defer src.kill()
	var dst *vm
	dumpDst := func() {}
	why := func() string {
		start := time.Now()
		if err := src.waitFor(ctx, regexp.MustCompile(`guest# `), m.c.bootTimeout); err != nil {
			return fmt.Sprintf("boot: %v", err)
		}
		m.say("guest shell after %v", time.Since(start).Round(time.Millisecond))
		src.send(fmt.Sprintf("agent heartbeat %d &\n", m.c.hbMs))
		// Let the heartbeat settle and the guest go idle.
		if err := m.hb.waitCount(ctx, "src", 50, time.Minute); err != nil {
			return fmt.Sprintf("heartbeat on the source: %v", err)
		}
		if m.c.dirty != "" {
			a, _ := dirtyArgs(m.c.dirty)
			src.send("agent dirty " + a + " >/dev/null &\n")
		}
		time.Sleep(2 * time.Second)
		dstEnv := m.env()
		if m.c.cpuProfile && m.vmm == "gvmm" && m.round == 1 {
			profile := filepath.Join(m.c.dir, "migbench-dst.pprof")
			dstEnv = append(dstEnv, "GVMM_CPUPROFILE="+profile)
			// Deferred in run, not in this closure: after dst.kill.
			dumpDst = func() { benchfmt.DumpProfile(m.w, "migbench-gvmm-dst", profile) }
		}
		var err error
		if dst, err = startVM(dstArgv, dstEnv, m, "dst"); err != nil {
			return err.Error()
		}
		if m.vmm == "qemu-tls" {
			// TLS credentials are set before the destination listens,
			// over its QMP socket, once QEMU (slow to start in a busy
			// L1) has made it.
			if err := waitSocket(ctx, dstSock, dst, time.Minute); err != nil {
				return err.Error()
			}
			if err := qemuListenTLS(dstSock, addr); err != nil {
				return err.Error()
			}
		}
		if err := waitListening(ctx, addr, dst, time.Minute); err != nil {
			return err.Error()
		}
		// Each process's CPU time by thread across the migration: the
		// guest's (its vCPU thread) against the VMM's own.
		srcCPU := watchCPU(src.cmd.Process.Pid, 100*time.Millisecond)
		defer srcCPU.close()
		dstCPU := watchCPU(dst.cmd.Process.Pid, 100*time.Millisecond)
		defer dstCPU.close()
		s0, d0, t0 := srcCPU.now(), dstCPU.now(), time.Now()
		m.hb.mark()
		var vmmWhy string
		if m.vmm == "gvmm" {
			vmmWhy = m.gvmmMigrate(ctx, srcSock, addr, &r)
		} else if err := waitSocket(ctx, srcSock, src, time.Minute); err != nil {
			// Once seen missing in a qemu-tls round whose source
			// had booted; the wait tells a late socket from a gone one.
			vmmWhy = "source: " + err.Error()
		} else {
			vmmWhy = m.qemuMigrate(ctx, srcSock, addr, &r)
		}
		if vmmWhy != "" {
			return vmmWhy
		}
		s1, d1 := srcCPU.now(), dstCPU.now()
		m.say("CPU time over the %.2f s of the migration: source %s; destination %s",
			time.Since(t0).Seconds(), s1.sub(s0), d1.sub(d0))
		// The guest's first moments on the destination, against what
		// else this machine runs then (the source's teardown, for one).
		mb0, mt0, _ := machineCPU()
		time.Sleep(afterHandover)
		mb1, mt1, err := machineCPU()
		machine := "?"
		if err == nil {
			machine = fmt.Sprintf("%.2f s busy of %.2f s", (mb1 - mb0).Seconds(), (mt1 - mt0).Seconds())
		}
		m.say("CPU time in the %v after the migration returned: source %s; destination %s; the machine %s",
			afterHandover, srcCPU.now().sub(s1), dstCPU.now().sub(d1), machine)
		if err := m.hb.waitCountNudging(ctx, "dst", 50, 2*time.Minute, dst, m.say); err != nil {
			return fmt.Sprintf("heartbeat on the destination: %v", err)
		}
		if m.vmm == "gvmm" {
			if err := src.wait(30 * time.Second); err != nil {
				return fmt.Sprintf("source gvmm after the handover: %v", err)
			}
		}
		gap, clk, where, err := m.hb.gap()
		if err != nil {
			return err.Error()
		}
		m.say("longest heartbeat gap %.1f ms (guest clock %.0f ms), %s", gap, clk, where)
		r.GapMs, r.ClockGapMs = gap, clk
		return ""
	}()
	if dst != nil {
		dst.kill()
	}
	dumpDst()
	if why != "" {
		r.Why = why
		m.say("failed: %s; the last console lines:", why)
		for _, v := range []*vm{src, dst} {
			if v == nil {
				continue
			}
			for _, l := range v.lastLines() {
				fmt.Fprintf(m.w, "migbench: %s %d %s | %s\n", m.vmm, m.round, v.label, l)
			}
		}
		return r
	}
	r.OK = true
	return r
}

var gvmmResult = regexp.MustCompile(`migrated: total ([\d.]+) ms, downtime ([\d.]+) ms`)
var gvmmWire = regexp.MustCompile(`migrated: ([\d.]+) ?(B|KiB|MiB|GiB)? on the wire`)

// gvmmMigrate runs gvmm migrate and reads its final figures.
func (m *mig) gvmmMigrate(ctx context.Context, sock, addr string, r *benchfmt.MigResult) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.c.gvmm, "migrate", "--api-socket", sock, "--to", addr, "--insecure-key", m.key, "--compress", m.c.compress)
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		m.say("gvmm migrate: %s", l)
	}
	if ps := cmd.ProcessState; ps != nil {
		m.say("gvmm migrate (the command, not the VMM) used %.2f s of CPU", (ps.UserTime() + ps.SystemTime()).Seconds())
	}
	if err != nil {
		return fmt.Sprintf("gvmm migrate: %v", err)
	}
	mm := gvmmResult.FindStringSubmatch(string(out))
	if mm == nil {
		return "gvmm migrate printed no final figures"
	}
	r.TotalMs, _ = strconv.ParseFloat(mm[1], 64)
	r.DowntimeMs, _ = strconv.ParseFloat(mm[2], 64)
	if w := gvmmWire.FindStringSubmatch(string(out)); w != nil {
		f, _ := strconv.ParseFloat(w[1], 64)
		mult := map[string]float64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[w[2]]
		r.WireBytes = int64(f * mult)
	}
	return ""
}

// qemuMigrate drives the source QEMU over QMP.
func (m *mig) qemuMigrate(ctx context.Context, sock, addr string, r *benchfmt.MigResult) string {
	q, err := dialQMP(sock)
	if err != nil {
		return err.Error()
	}
	defer q.close()
	params := map[string]any{"max-bandwidth": int64(64) << 30}
	if m.vmm == "qemu-tls" {
		params["tls-creds"] = "tls0"
	}
	if _, err := q.do("migrate-set-parameters", params); err != nil {
		return err.Error()
	}
	if _, err := q.do("migrate", map[string]any{"uri": "tcp:" + addr}); err != nil {
		return err.Error()
	}
	deadline := time.Now().Add(5 * time.Minute)
	var settle time.Time // how long a "completed" without times is asked again
	for time.Now().Before(deadline) && ctx.Err() == nil {
		raw, err := q.do("query-migrate", nil)
		if err != nil {
			return err.Error()
		}
		var st struct {
			Status    string  `json:"status"`
			Total     float64 `json:"total-time"`
			Downtime  float64 `json:"downtime"`
			Setup     float64 `json:"setup-time"`
			ErrorDesc string  `json:"error-desc"`
			RAM       struct {
				Transferred int64 `json:"transferred"`
			} `json:"ram"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Sprintf("query-migrate: %v", err)
		}
		if st.Status == "completed" && settle.IsZero() {
			settle = time.Now().Add(time.Second)
		}
		switch st.Status {
		case "completed":
			if st.Total == 0 && time.Now().Before(settle) {
				// QEMU has been seen to answer "completed" with
				// total-time and downtime still 0; they follow.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			r.TotalMs, r.DowntimeMs, r.WireBytes = st.Total, st.Downtime, st.RAM.Transferred
			if st.Total == 0 {
				r.TotalMs, r.DowntimeMs = -1, -1 // not reported: not a measurement
			}
			m.say("QEMU query-migrate: %s", strings.TrimSpace(string(raw)))
			return ""
		case "failed", "cancelled":
			return fmt.Sprintf("QEMU migration %s: %s", st.Status, st.ErrorDesc)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "QEMU migration did not complete in 5 minutes"
}

// pskDir writes QEMU's TLS-PSK key file (keys.psk: "user:hexkey") with
// the migration key gvmm uses, in a fresh folder.
func (m *mig) pskDir() (string, error) {
	k, err := os.ReadFile(m.key)
	if err != nil {
		return "", err
	}
	d, err := os.MkdirTemp(m.c.dir, "migbench-psk-")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(d, "keys.psk"), []byte("migbench:"+hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		os.RemoveAll(d)
		return "", err
	}
	return d, nil
}

// waitSocket waits until the unix socket path exists, while v runs.
func waitSocket(ctx context.Context, path string, v *vm, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case err := <-v.waited:
			v.waited <- err
			return fmt.Errorf("the destination exited before making %s: %v", path, err)
		default:
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no %s after %v", path, timeout)
}

// qemuListenTLS makes a destination started with -incoming defer listen
// on addr for a TLS migration.
func qemuListenTLS(sock, addr string) error {
	q, err := dialQMP(sock)
	if err != nil {
		return err
	}
	defer q.close()
	if _, err := q.do("migrate-set-parameters", map[string]any{"tls-creds": "tls0"}); err != nil {
		return err
	}
	_, err = q.do("migrate-incoming", map[string]any{"uri": "tcp:" + addr})
	return err
}

// qmp is a minimal QMP client.
type qmp struct {
	c   net.Conn
	dec *json.Decoder
}

func dialQMP(path string) (*qmp, error) {
	var c net.Conn
	var err error
	for i := 0; i < 50; i++ {
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", path, err)
	}
	q := &qmp{c: c, dec: json.NewDecoder(c)}
	var greeting map[string]json.RawMessage
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := q.dec.Decode(&greeting); err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) close() { q.c.Close() }

// do runs one command and returns its "return" value; events are skipped.
func (q *qmp) do(cmd string, args map[string]any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.c.Write(b); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := q.dec.Decode(&resp); err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
		case resp.Error != nil:
			return nil, fmt.Errorf("QMP %s: %s", cmd, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

// beat is one heartbeat line as it arrived.
type beat struct {
	from string // "src" or "dst"
	at   time.Time
	seq  int
	mono int64 // guest CLOCK_MONOTONIC, ms
}

// beats collects the heartbeats of both sides of one migration.
type beats struct {
	mu    sync.Mutex
	all   []beat
	since int // index of the first beat after mark
	cond  chan struct{}
}

var hbLine = regexp.MustCompile(`gvmm-hb (\d+) (\d+) (\d+)`)

func (b *beats) add(from, line string, at time.Time) {
	mm := hbLine.FindStringSubmatch(line)
	if mm == nil {
		return
	}
	seq, _ := strconv.Atoi(mm[1])
	mono, _ := strconv.ParseInt(mm[2], 10, 64)
	b.mu.Lock()
	b.all = append(b.all, beat{from: from, at: at, seq: seq, mono: mono})
	b.mu.Unlock()
}

// mark notes where the migration starts: the gap is looked for after
// the last beat before it.
func (b *beats) mark() {
	b.mu.Lock()
	b.since = max(len(b.all)-1, 0)
	b.mu.Unlock()
}

func (b *beats) count(from string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, x := range b.all {
		if x.from == from {
			n++
		}
	}
	return n
}

func (b *beats) waitCount(ctx context.Context, from string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for b.count(from) < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d heartbeats in %v", b.count(from), n, timeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// waitCountNudging is waitCount for the destination's heartbeats: when
// none arrives for stallAfter, it types a newline on the console, once.
// Linux's 8250 driver sends pending output from its interrupt handler
// whatever raised the interrupt, so heartbeats that come back after the
// nudge mean the UART's transmit interrupt was lost (a VMM bug), while a
// guest that stays silent is hung.
func (b *beats) waitCountNudging(ctx context.Context, from string, n int, timeout time.Duration, v *vm, say func(string, ...any)) error {
	const stallAfter = 10 * time.Second
	deadline := time.Now().Add(timeout)
	last, lastAt, nudged, told := b.count(from), time.Now(), false, false
	for {
		c := b.count(from)
		switch {
		case c >= n:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("%d of %d heartbeats in %v (console nudged: %v)", c, n, timeout, nudged)
		case ctx.Err() != nil:
			return ctx.Err()
		case c != last:
			if nudged && !told {
				say("destination heartbeats came back after the nudge: a transmit interrupt was lost")
				told = true
			}
			last, lastAt = c, time.Now()
		case !nudged && time.Since(lastAt) > stallAfter:
			say("no heartbeat from the destination for %v after %d; typing a newline on its console", stallAfter, c)
			v.send("\n")
			nudged = true
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gap is the longest gap between consecutive heartbeats (in arrival
// order) from the mark on, and how far the guest clock moved across it.
// The heartbeat must go on without a hole in its sequence (but for one
// line cut in two at the switch of consoles).
func (b *beats) gap() (gapMs, clockMs float64, where string, _ error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.all[b.since:]
	if len(s) < 2 {
		return 0, 0, "", errors.New("too few heartbeats across the migration")
	}
	var best time.Duration
	for i := 1; i < len(s); i++ {
		// One beat may be lost where a line was cut in two by the
		// switch from one console to the other.
		if d := s[i].seq - s[i-1].seq; d != 1 && (d != 2 || s[i].from == s[i-1].from) {
			return 0, 0, "", fmt.Errorf("heartbeat %d (%s) followed %d (%s): the guest restarted or lost output", s[i].seq, s[i].from, s[i-1].seq, s[i-1].from)
		}
		if d := s[i].at.Sub(s[i-1].at); d > best {
			best, clockMs = d, float64(s[i].mono-s[i-1].mono)
			where = fmt.Sprintf("from %s beat %d at %s to %s beat %d at %s", s[i-1].from, s[i-1].seq,
				s[i-1].at.Format("15:04:05.000"), s[i].from, s[i].seq, s[i].at.Format("15:04:05.000"))
		}
	}
	return float64(best.Microseconds()) / 1000, clockMs, where, nil
}

// vm is one VMM process with its console.
type vm struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	label  string
	m      *mig
	waited chan error
	mu     sync.Mutex
	tail   []string
	lines  chan string // non-heartbeat lines; closed at EOF
}

func startVM(argv, env []string, m *mig, label string) (*vm, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// The VMM's own messages go through a pipe of their own: written to
	// the console's, a log line can land inside a heartbeat line.
	er, ew, err := os.Pipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, ew
	err = cmd.Start()
	pw.Close()
	ew.Close()
	if err != nil {
		pr.Close()
		er.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	v := &vm{cmd: cmd, stdin: stdin, label: label, m: m, waited: make(chan error, 1), lines: make(chan string, 4096)}
	go v.read(pr)
	go v.readLog(er)
	go func() { v.waited <- cmd.Wait() }()
	return v, nil
}

// read splits the console into lines, timestamps heartbeats on arrival,
// and passes the rest on (a prompt without its newline too).
func (v *vm) read(r io.ReadCloser) {
	defer close(v.lines)
	defer r.Close()
	buf := make([]byte, 64<<10)
	var part []byte
	for {
		n, err := r.Read(buf)
		at := time.Now()
		part = append(part, buf[:n]...)
		for {
			i := bytes.IndexByte(part, '\n')
			if i < 0 {
				break
			}
			v.line(strings.TrimRight(string(part[:i]), "\r"), at, true)
			part = part[i+1:]
		}
		// A prompt has no newline (and ash may follow it with a cursor
		// query): pass it on as it is.
		if bytes.Contains(part, []byte("# ")) || (err != nil && len(part) > 0) {
			v.line(string(part), at, false)
			part = nil
		}
		if err != nil {
			return
		}
	}
}

// readLog relays the VMM's timing lines from its stderr and keeps the
// rest in the tail shown on failure.
func (v *vm) readLog(r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		v.mu.Lock()
		v.tail = append(v.tail, line)
		if len(v.tail) > tailLines {
			v.tail = v.tail[1:]
		}
		v.mu.Unlock()
		if v.m.c.verbose || relayed(line) {
			fmt.Fprintf(v.m.w, "migbench: %s %d %s | %s\n", v.m.vmm, v.m.round, v.label, line)
		}
	}
}

// relayed says whether a VMM log line goes to the benchmark's output: the
// timing lines and each side's pass lines, whose times show how far the
// destination trails the source.
func relayed(line string) bool {
	for _, s := range []string{" timing", "migration received", `msg="migration pass"`, `msg="stream: pass applied"`} {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// line takes one console line; complete says it ended with its newline.
func (v *vm) line(line string, at time.Time, complete bool) {
	v.mu.Lock()
	v.tail = append(v.tail, line)
	if len(v.tail) > tailLines {
		v.tail = v.tail[1:]
	}
	v.mu.Unlock()
	if v.m.c.verbose {
		fmt.Fprintf(v.m.w, "migbench: %s %d %s | %s\n", v.m.vmm, v.m.round, v.label, line)
	}
	if strings.Contains(line, "gvmm-hb ") {
		// A heartbeat without its newline is one the switchover cut:
		// its start reached the source's console, which flushes it only
		// when it exits, and its end the destination's. Timed at that
		// flush it could land after the destination's next beat.
		if complete {
			v.m.hb.add(v.label, line, at)
		}
		return
	}
	select {
	case v.lines <- line:
	default: // nobody waits for these any more
	}
}

func (v *vm) lastLines() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.tail...)
}

func (v *vm) send(s string) { io.WriteString(v.stdin, s) }

func (v *vm) waitFor(ctx context.Context, re *regexp.Regexp, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-v.lines:
			if !ok {
				return errors.New("the VMM's output ended")
			}
			if re.MatchString(l) {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("waiting for %q: timed out", re)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wait waits for the process to exit by itself with status 0.
func (v *vm) wait(timeout time.Duration) error {
	select {
	case err := <-v.waited:
		v.waited <- err
		return err
	case <-time.After(timeout):
		return fmt.Errorf("still running after %v", timeout)
	}
}

func (v *vm) kill() {
	select {
	case err := <-v.waited:
		v.waited <- err
		return
	default:
	}
	syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	err := <-v.waited
	v.waited <- err
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitListening waits until something listens on addr, reading
// /proc/net/tcp rather than connecting: both receivers take the first
// connection as the migration's.
func waitListening(ctx context.Context, addr string, v *vm, timeout time.Duration) error {
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	want := fmt.Sprintf(":%04X", p)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case err := <-v.waited:
			v.waited <- err
			return fmt.Errorf("the destination exited before listening: %v", err)
		default:
		}
		b, _ := os.ReadFile("/proc/net/tcp")
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, timeout)
}

// dirtyArgs turns -dirty's MIB:PAGES_PER_SEC into the agent's arguments.
func dirtyArgs(s string) (string, error) {
	mib, rate, ok := strings.Cut(s, ":")
	m, err1 := strconv.Atoi(mib)
	r, err2 := strconv.Atoi(rate)
	if !ok || err1 != nil || err2 != nil || m < 1 || r < 0 {
		return "", fmt.Errorf("%q: want MIB:PAGES_PER_SEC, MIB >= 1, PAGES_PER_SEC >= 0", s)
	}
	return fmt.Sprintf("%d %d", m, r), nil
}
