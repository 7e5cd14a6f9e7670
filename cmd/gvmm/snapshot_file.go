package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/migration/snapshot"
	"github.com/gvmm/gvmm/vmm"
)

// writeSnapshot pauses m, quiesces its devices, writes its memory and state
// to a new file at path (mode 0600: it holds everything the guest knows),
// and lets it go on as it was (running, or paused if the user had paused
// it). A failed snapshot leaves no file behind.
func writeSnapshot(ctx context.Context, m *vmm.Machine, path string) (res api.SnapshotResult, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	info, err := m.MigrationInfo()
	if err != nil {
		return res, err
	}
	wasPaused := m.Status().State == "paused"
	start := time.Now()
	if err := m.Pause(ctx); err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if wasPaused {
			m.Unquiesce()
		} else if rerr := m.Resume(); rerr != nil && err == nil {
			err = fmt.Errorf("snapshot: resume: %w", rerr)
		}
		res.PausedMs = ms(time.Since(start))
	}()
	if err := m.Quiesce(ctx); err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	comps, err := m.SaveState(ctx)
	if err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	cw := &countingWriter{w: f}
	bw := bufio.NewWriterSize(cw, 1<<20)
	if err := snapshot.Write(ctx, bw, regionsOf(m), toMigrationComponents(comps),
		snapshot.Meta{Created: time.Now(), Machine: info}); err != nil {
		return res, fmt.Errorf("snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return res, fmt.Errorf("snapshot: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("snapshot: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return res, fmt.Errorf("snapshot: close %s: %w", path, err)
	}
	return api.SnapshotResult{Path: path, Bytes: cw.n}, nil
}

type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// deviceOverrides are the devices given on the command line of gvmm run
// --restore or gvmm receive: each kind given replaces the saved machine's
// devices of that kind (same count, same order).
type deviceOverrides struct {
	disks   []vmm.DiskConfig
	nets    []vmm.NetConfig
	channel string
}

// apply puts the overrides into cfg, refusing a different device count.
func (o deviceOverrides) apply(cfg *vmm.Config) error {
	if len(o.disks) > 0 {
		if len(o.disks) != len(cfg.Disks) {
			return fmt.Errorf("the VM has %d disks, %d --disk given", len(cfg.Disks), len(o.disks))
		}
		cfg.Disks = o.disks
	}
	if len(o.nets) > 0 {
		if len(o.nets) != len(cfg.Nets) {
			return fmt.Errorf("the VM has %d network devices, %d --net given", len(cfg.Nets), len(o.nets))
		}
		cfg.Nets = o.nets
	}
	if o.channel != "" {
		if cfg.Channel == "" {
			return errors.New("the VM has no channel device; --channel cannot add one")
		}
		cfg.Channel = o.channel
	}
	return nil
}

// incomingConfig turns a source's encoded MigrationInfo into the Config
// of a machine to restore into, with the overrides applied.
func incomingConfig(infoBytes []byte, o deviceOverrides, base vmm.Config) (vmm.Config, vmm.MigrationInfo, error) {
	info, err := vmm.DecodeMigrationInfo(infoBytes)
	if err != nil {
		return vmm.Config{}, info, err
	}
	cfg, err := info.Description.Config()
	if err != nil {
		return vmm.Config{}, info, err
	}
	if err := o.apply(&cfg); err != nil {
		return vmm.Config{}, info, err
	}
	cfg.Console, cfg.KVMPath, cfg.Log = base.Console, base.KVMPath, base.Log
	cfg.MemguardInjectFaults, cfg.MemguardMaxRegions = base.MemguardInjectFaults, base.MemguardMaxRegions
	if err := cfg.Validate(); err != nil {
		return vmm.Config{}, info, err
	}
	return cfg, info, nil
}

// openSnapshot reads a snapshot file's header and builds the machine to
// restore it into, fills its memory and returns it with the state to
// restore once its vCPUs are parked.
func openSnapshot(ctx context.Context, path string, o deviceOverrides, base vmm.Config) (*vmm.Machine, []vmm.StateComponent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	r, err := snapshot.NewReader(bufio.NewReaderSize(f, 1<<20), snapshot.Limits{})
	if err != nil {
		return nil, nil, fmt.Errorf("restore %s: %w", path, err)
	}
	cfg, info, err := incomingConfig(r.Meta().Machine, o, base)
	if err != nil {
		return nil, nil, fmt.Errorf("restore %s: %w", path, err)
	}
	m, err := vmm.New(cfg)
	if err != nil {
		return nil, nil, explainNewError(err)
	}
	if err := m.CheckCompatible(info); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("restore %s: %w", path, err)
	}
	comps, err := r.Restore(ctx, regionsOf(m))
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("restore %s: %w", path, err)
	}
	return m, fromMigrationComponents(comps), nil
}
