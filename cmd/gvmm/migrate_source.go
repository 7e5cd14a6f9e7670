package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/gvmm/gvmm/api"
	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/vmm"
)

// Defaults of gvmm migrate.
const (
	defaultConnections = 4
	maxConnections     = 16
	dialTimeout        = 10 * time.Second
)

// readKeyFile reads a 32-byte migration key: the raw bytes, or 64
// hexadecimal digits (a trailing newline allowed). A key file others can
// read is refused.
func readKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if len(b) == 32 {
		return b, nil
	}
	if s := strings.TrimSpace(string(b)); len(s) == 64 {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("key file %s: want 32 bytes or 64 hex digits, found %d bytes", path, len(b))
}

// migrateOut runs a migration of m requested through the API. On success
// the machine is handed over (gvmm run then exits 0); on failure it runs on.
func migrateOut(ctx context.Context, m *vmm.Machine, req api.MigrateRequest, progress func(api.Progress), log *slog.Logger) (api.MigrateResult, error) {
	key, err := readKeyFile(req.KeyFile)
	if err != nil {
		return api.MigrateResult{}, err
	}
	n := req.Connections
	if n == 0 {
		n = defaultConnections
	}
	if n < 1 || n > maxConnections {
		return api.MigrateResult{}, fmt.Errorf("connections %d is outside 1..%d", n, maxConnections)
	}
	info, err := m.MigrationInfo()
	if err != nil {
		return api.MigrateResult{}, err
	}
	conns, err := dialAll(ctx, req.To, n)
	if err != nil {
		return api.MigrateResult{}, err
	}
	opts := migration.Options{
		MaxDowntime: time.Duration(req.DowntimeMs) * time.Millisecond,
		Timeout:     time.Duration(req.TimeoutSec) * time.Second,
		CPU:         info,
		Logger:      log.With("migration", req.To),
		Progress: func(p migration.Progress) {
			progress(api.Progress{
				Pass: p.Pass, PagesSent: p.PagesSent, DirtyPages: p.Dirty, TotalPages: p.GuestPages,
				BandwidthMBps: p.Bandwidth / 1e6, ThrottlePercent: p.Throttle,
			})
		},
	}
	st, err := migration.Migrate(ctx, sourceMachine{m}, conns, key, opts)
	if err != nil {
		return api.MigrateResult{}, err
	}
	m.HandedOver()
	return api.MigrateResult{
		TotalMs:         ms(st.Total),
		DowntimeMs:      ms(st.Downtime),
		LastPassMs:      ms(st.Pause + st.FinalPass),
		StateMs:         ms(st.StateSave + st.StateSend),
		RestoreMs:       ms(st.AckWait),
		WireBytes:       st.WireBytes,
		PagesSent:       st.Pages + st.ZeroPages,
		ZeroPages:       st.ZeroPages,
		CompressedPages: st.CompressedPages,
		Passes:          st.Passes,
		MaxThrottle:     st.Throttle,
	}, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// dialAll opens n connections to addr; on error none stays open.
func dialAll(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("connect to %s: %w", addr, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

var errNoMachine = errors.New("no machine is running")
