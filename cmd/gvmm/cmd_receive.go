package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gvmm/gvmm/memguard"
	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/migration/gate"
	"github.com/gvmm/gvmm/policy"
	"github.com/gvmm/gvmm/tpm"
	"github.com/gvmm/gvmm/vmm"
)

const receiveSynopsis = `--listen HOST:PORT --state DIR --tpm URI [--disk ...] [--net ...] [--channel PATH] [flags]
       gvmm receive --listen HOST:PORT --insecure-key FILE [...]

Waits for one incoming live migration from "gvmm migrate", then runs the VM
with its serial console on this terminal, as gvmm run does.

First this host opens its sealed state (--state, unsealed with --tpm by a
measured launch of this gvmm), authenticates the source host over mutual
TLS, checks the VM's signed policy and this host's migrate-in policy,
attests its TPM and gvmm to the source (and has the source attest, if its
policy requires), and receives a fresh migration key that only this
process can open. Every decision is in DIR/audit.log. A refusal exits with
status 3. If the source refuses this host only for outdated measurements
and --update-cmd is given, gvmm runs CMD (with GVMM_REMEDIATION set to the
JSON of what is required), which must replace the gvmm executable (and,
for a host sealed to an approval key, add an approval of the new build);
then gvmm starts again from the new executable, measured afresh, and waits
for the source's retry.

The machine's shape comes from the source; its backings never do: every
disk, TAP and channel of the VM must be given here with --disk, --net and
--channel (disk images must hold the same data: shared or copied storage),
and a source that describes a device this host was not given one for is
refused. If anything fails before the VM runs here, gvmm exits non-zero
and the source keeps the VM.

--insecure-key FILE skips the handshake and uses a pre-shared 32-byte key
(the same file on both hosts): for tests of the migration engine only.`

// maxRemediationRounds bounds how often gvmm receive updates itself and
// starts again for one source.
const maxRemediationRounds = 3

func receiveCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "receive", receiveSynopsis)
	listen := fs.String("listen", "", "`HOST:PORT` to accept the migration on (required)")
	state := fs.String("state", "", "this host's state `directory` (gvmm host init, gvmm policy init)")
	tpmURI := fs.String("tpm", tpm.DefaultURI, "this host's TPM `URI` (as given to gvmm host init)")
	updateCmd := fs.String("update-cmd", "", "shell `command` that updates gvmm when the source refuses this host for outdated measurements; gvmm then restarts measured afresh")
	keyFile := fs.String("insecure-key", "", "INSECURE test mode: pre-shared 32-byte key `file`, no policy and no attestation")
	apiSocket := fs.String("api-socket", "", "serve the control API on a unix socket at `path` once the VM runs")
	kvmPath := fs.String("kvm", "/dev/kvm", "KVM device `path`")
	var disks diskFlags
	fs.Var(&disks, "disk", "disk image `PATH[,readonly]` for each of the VM's disks, in order (required if it has disks)")
	var nets netFlags
	fs.Var(&nets, "net", "TAP `tap=NAME[,bridge=BR][,mac=MAC]` for each of the VM's network devices, in order (required if it has any)")
	channel := fs.String("channel", "", "channel socket `path` (required if the VM has a channel device)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *listen == "" {
		return usageError("missing --listen HOST:PORT")
	}
	if (*keyFile == "") == (*state == "") {
		return usageError("give --state DIR (with --tpm URI), or --insecure-key FILE for the insecure test mode")
	}
	if *updateCmd != "" && *state == "" {
		return usageError("--update-cmd needs --state")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	e.log.Info("waiting for a migration", "listen", ln.Addr())

	var (
		key *memguard.Secret
		acc *gate.Accepted
		dst *gate.Destination
	)
	if *keyFile != "" {
		if key, err = readKeySecret(*keyFile); err != nil {
			return err
		}
		fmt.Fprintln(e.stderr, "gvmm: WARNING: --insecure-key: no policy, no attestation, a pre-shared key")
	} else {
		acc, dst, err = gateIn(ctx, e, ln, *state, *tpmURI, *updateCmd)
		if err != nil {
			return err
		}
		defer dst.Host.Close()
		key = acc.Key
	}
	defer key.Destroy()

	con, err := newConsole(e.stdin)
	if err != nil {
		return err
	}
	defer con.restore()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	holder := machineHolder{log: e.log, workers: e.procs}
	stopAPI, err := serveAPI(ctx, cancel, *apiSocket, &holder, e)
	if err != nil {
		return err
	}
	defer stopAPI()

	base := vmm.Config{Console: e.stdout, KVMPath: *kvmPath, Log: e.log}
	overrides := deviceOverrides{disks: disks, nets: nets, channel: *channel}
	built := make(chan *vmm.Machine, 1)
	type outcome struct {
		res migration.Result
		err error
	}
	received := make(chan outcome, 1)
	// A CPU profile (GVMM_CPUPROFILE) covers the incoming migration only:
	// it stops once the stream is in.
	stopProfile, err := startCPUProfile()
	if err != nil {
		return err
	}
	var profileOnce sync.Once
	endProfile := func() {
		profileOnce.Do(func() {
			if err := stopProfile(); err != nil {
				e.log.Warn("CPU profile", "err", err)
			}
		})
	}
	defer endProfile()
	go func() {
		res, err := migration.Receive(ctx, ln, key.Bytes(), nil, migration.ReceiveOptions{
			Logger: e.log,
			// The source's machine description arrives before any page:
			// build the machine to receive into from it.
			Prepare: func(infoBytes []byte) (migration.Destination, error) {
				cfg, info, err := incomingConfig(infoBytes, keepGuestMACs(infoBytes, overrides), base)
				if err != nil {
					return nil, err
				}
				if err := ownBackingsOnly(cfg, overrides); err != nil {
					return nil, err
				}
				m, err := vmm.New(cfg)
				if err != nil {
					return nil, explainNewError(err)
				}
				if err := m.CheckCompatible(info); err != nil {
					m.Close()
					return nil, err
				}
				built <- m
				return destMachine{m: m, opts: vmm.RestoreOptions{AdvanceClock: true}}, nil
			},
		})
		received <- outcome{res, err}
	}()
	var m *vmm.Machine
	select {
	case m = <-built:
	case o := <-received:
		return fmt.Errorf("receive: %w", o.err)
	}
	defer m.Close()
	holder.set(m)
	start := time.Now()
	reason, err := runMachine(ctx, m, con, func(ctx context.Context) error {
		o := <-received
		endProfile()
		if o.err == nil {
			// Only now do vCPUs run here; while the stream came in, its
			// decryption had the CPUs to itself.
			addVCPUProcs(e.procs, m.Description().CPUs)
		}
		if o.err == nil && acc != nil {
			// The VM is here: keep its policy, so that it can leave again.
			if err := dst.Commit(acc); err != nil {
				fmt.Fprintf(e.stderr, "gvmm: WARNING: %v\n", err)
			}
		}
		if o.err == nil {
			fmt.Fprintf(e.stderr, "gvmm: migration received: %s on the wire, %d pages (%d zero), transfer %.0f ms, restore %.1f ms; the VM runs here now\n",
				vmm.FormatSize(o.res.Stream.WireBytes), o.res.Stream.Pages+o.res.Stream.ZeroPages, o.res.Stream.ZeroPages,
				ms(o.res.Transfer), ms(o.res.Restore))
		}
		return o.err
	})
	holder.retire()
	e.log.Debug("machine ended", "after", time.Since(start))
	if err != nil {
		return err
	}
	switch reason {
	case vmm.ExitPowerOff, vmm.ExitReboot:
		return nil
	case vmm.ExitMigrated:
		fmt.Fprintln(e.stderr, "gvmm: the VM was migrated and now runs on the destination")
		return nil
	}
	if con.escaped() {
		return nil
	}
	return &exitError{code: 130, msg: "interrupted"}
}

// ownBackingsOnly refuses a machine built from the source's description
// with a disk, TAP or channel this host was not given on its command line:
// the source's names for them mean nothing here, and opening them would
// let a source choose this host's files and interfaces.
func ownBackingsOnly(cfg vmm.Config, o deviceOverrides) error {
	switch {
	case len(cfg.Disks) > 0 && len(o.disks) == 0:
		return fmt.Errorf("the source's VM has %d disk(s): give this host's with --disk (gvmm receive opens only backings named on its own command line)", len(cfg.Disks))
	case len(cfg.Nets) > 0 && len(o.nets) == 0:
		return fmt.Errorf("the source's VM has %d network device(s): give this host's TAPs with --net (gvmm receive opens only backings named on its own command line)", len(cfg.Nets))
	case cfg.Channel != "" && o.channel == "":
		return errors.New("the source's VM has a channel device: give this host's socket with --channel (gvmm receive opens only backings named on its own command line)")
	}
	return nil
}

// keepGuestMACs gives each --net without a mac= the MAC the guest's NIC
// had on the source: a MAC is what the guest sees, not a host backing, and
// changing it under a running guest breaks its network.
func keepGuestMACs(infoBytes []byte, o deviceOverrides) deviceOverrides {
	info, err := vmm.DecodeMigrationInfo(infoBytes)
	if err != nil {
		return o // incomingConfig reports it
	}
	src, err := info.Description.Config()
	if err != nil || len(src.Nets) != len(o.nets) {
		return o
	}
	nets := append([]vmm.NetConfig(nil), o.nets...)
	for i := range nets {
		if nets[i].MAC == nil {
			nets[i].MAC = src.Nets[i].MAC
		}
	}
	o.nets = nets
	return o
}

// gateIn opens this host's sealed state and runs the destination's side
// of the handshake on ln. After a refusal for outdated measurements, with
// an update command, it runs the command and starts this gvmm again from
// the (new) executable; it does not return then.
func gateIn(ctx context.Context, e *env, ln net.Listener, state, tpmURI, updateCmd string) (*gate.Accepted, *gate.Destination, error) {
	cfg, err := tpm.ParseURI(tpmURI)
	if err != nil {
		return nil, nil, usageError("%v", err)
	}
	if err := checkStateTPM(cfg); err != nil {
		return nil, nil, err
	}
	tp, err := tpm.Open(ctx, cfg, e.log)
	if err != nil {
		return nil, nil, err
	}
	defer tp.Close()
	op, err := gate.OpenHost(ctx, tp, state, gate.OpenOptions{NeedState: true, Logger: e.log})
	if r := (*gate.RefusedError)(nil); errors.As(err, &r) {
		fmt.Fprintf(e.stderr, "gate: this host refuses every migration: %v\n", err)
		return nil, nil, &exitError{code: 3, msg: "cannot open this host's sealed state"}
	} else if err != nil {
		return nil, nil, err
	}
	h := op.Host
	if ev := op.Log.Events; len(ev) > 0 && ev[0].Type == tpm.EventExecutable {
		fmt.Fprintf(e.stderr, "gate: host %s (%s) opened its sealed state; measured gvmm sha256 %x\n", h.Self.Name, h.Self.ID(), ev[0].Data)
	}
	d := &gate.Destination{Host: h, Report: func(l string) { fmt.Fprintf(e.stderr, "gate: %s\n", l) }}
	acc, err := d.Accept(ctx, ln)
	if err == nil {
		return acc, d, nil
	}
	h.Close()
	var r *gate.RefusedError
	if !errors.As(err, &r) {
		return nil, nil, err
	}
	dec := r.Decision
	if !r.Remote {
		fmt.Fprintf(e.stderr, "gate: migrate-in refused (%s) by rule %s: %s\n", dec.Stage, dec.Rule, dec.Reason)
		return nil, nil, &exitError{code: 3, msg: "migration refused by this host's policy"}
	}
	fmt.Fprintf(e.stderr, "gate: refused by the source (%s) by rule %s: %s\n", dec.Stage, dec.Rule, dec.Reason)
	rem := dec.Remediation
	if rem == nil || updateCmd == "" {
		return nil, nil, &exitError{code: 3, msg: "migration refused by the source"}
	}
	for _, m := range rem.Acceptable {
		fmt.Fprintf(e.stderr, "gate: required: gvmm %s (sha256 %s); this host runs %s\n", m.Version, m.Executable, rem.Have)
	}
	return nil, nil, remediate(ctx, e, ln, tp, rem, updateCmd)
}

// remediate runs the update command and starts gvmm again from its
// executable with the same arguments: a fresh process is a fresh measured
// launch of whatever the update installed.
func remediate(ctx context.Context, e *env, ln net.Listener, tp *tpm.TPM, rem *policy.Remediation, updateCmd string) error {
	round, _ := strconv.Atoi(os.Getenv("GVMM_REMEDIATION_ROUND"))
	if round >= maxRemediationRounds {
		return &exitError{code: 3, msg: fmt.Sprintf("still refused after %d updates; giving up", round)}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("remediate: find own executable: %w", err)
	}
	b, err := json.Marshal(rem)
	if err != nil {
		return fmt.Errorf("remediate: %w", err)
	}
	fmt.Fprintf(e.stderr, "gate: running the update command: %s\n", updateCmd)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", updateCmd)
	cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
	cmd.Env = append(os.Environ(), "GVMM_REMEDIATION="+string(b), "GVMM_EXECUTABLE="+exe)
	if err := cmd.Run(); err != nil {
		return &exitError{code: 3, msg: fmt.Sprintf("update command failed: %v", err)}
	}
	if d, err := tpm.FileDigest(exe); err == nil {
		fmt.Fprintf(e.stderr, "gate: updated; %s is now sha256 %x; starting again to measure it\n", exe, d)
	}
	// Nothing of this process may survive into the next: the listener
	// and the TPM are closed, the key never existed.
	ln.Close()
	tp.Close()
	env := append(os.Environ(), fmt.Sprintf("GVMM_REMEDIATION_ROUND=%d", round+1))
	if err := syscall.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("remediate: start %s again: %w", exe, err)
	}
	return nil
}
