package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/vmm"
)

const receiveSynopsis = `--listen HOST:PORT --key FILE [--api-socket PATH] [--disk ...] [--net ...] [--channel PATH]

Waits for one incoming live migration from "gvmm migrate", then runs the VM
with its serial console on this terminal, as gvmm run does. The machine's
shape and devices come from the source; its disks, TAPs and channel socket
are opened under the same names unless --disk, --net or --channel name
others (disk images must hold the same data: shared or copied storage).
The stream is encrypted and authenticated with the 32-byte key in FILE. If
anything fails before the VM runs here, gvmm exits non-zero and the source
keeps the VM.`

func receiveCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "receive", receiveSynopsis)
	listen := fs.String("listen", "", "`HOST:PORT` to accept the migration on (required)")
	keyFile := fs.String("key", "", "pre-shared migration key `file` (32 bytes; required)")
	apiSocket := fs.String("api-socket", "", "serve the control API on a unix socket at `path` once the VM runs")
	kvmPath := fs.String("kvm", "/dev/kvm", "KVM device `path`")
	var disks diskFlags
	fs.Var(&disks, "disk", "disk image `PATH[,readonly]` replacing the source's (repeatable, all or none)")
	var nets netFlags
	fs.Var(&nets, "net", "TAP `tap=NAME[,bridge=BR][,mac=MAC]` replacing the source's (repeatable, all or none)")
	channel := fs.String("channel", "", "channel socket `path` replacing the source's")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *listen == "" || *keyFile == "" {
		return usageError("missing --listen HOST:PORT or --key FILE")
	}
	key, err := readKeyFile(*keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	e.log.Info("waiting for a migration", "listen", ln.Addr())

	con, err := newConsole(e.stdin)
	if err != nil {
		return err
	}
	defer con.restore()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	holder := machineHolder{log: e.log}
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
	go func() {
		res, err := migration.Receive(ctx, ln, key, nil, migration.ReceiveOptions{
			Logger: e.log,
			// The source's machine description arrives before any page:
			// build the machine to receive into from it.
			Prepare: func(infoBytes []byte) (migration.Destination, error) {
				cfg, info, err := incomingConfig(infoBytes, overrides, base)
				if err != nil {
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
		if o.err == nil {
			fmt.Fprintf(e.stderr, "gvmm: migration received: %s on the wire, %d pages (%d zero), transfer %.0f ms, restore %.1f ms; the VM runs here now\n",
				vmm.FormatSize(o.res.Stream.WireBytes), o.res.Stream.Pages+o.res.Stream.ZeroPages, o.res.Stream.ZeroPages,
				ms(o.res.Transfer), ms(o.res.Restore))
		}
		return o.err
	})
	holder.set(nil)
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
