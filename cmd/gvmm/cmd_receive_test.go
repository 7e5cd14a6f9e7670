package main

import (
	"strings"
	"testing"

	"github.com/gvmm/gvmm/vmm"
)

// TestOwnBackingsOnly: gvmm receive builds its machine only with backings
// named on its own command line; a source description with a device of a
// kind the destination was not given is refused.
func TestOwnBackingsOnly(t *testing.T) {
	disk := []vmm.DiskConfig{{Path: "/dst/disk.img"}}
	nets := []vmm.NetConfig{{TAP: "tap-dst"}}
	for _, tc := range []struct {
		name string
		cfg  vmm.Config
		o    deviceOverrides
		want string // "" for accepted
	}{
		{"no devices", vmm.Config{}, deviceOverrides{}, ""},
		{"disk given", vmm.Config{Disks: disk}, deviceOverrides{disks: disk}, ""},
		{"source's disk path", vmm.Config{Disks: []vmm.DiskConfig{{Path: "/etc/shadow"}}}, deviceOverrides{}, "--disk"},
		{"source's TAP", vmm.Config{Nets: []vmm.NetConfig{{TAP: "eth0"}}}, deviceOverrides{disks: disk}, "--net"},
		{"source's channel socket", vmm.Config{Channel: "/run/other.sock"}, deviceOverrides{}, "--channel"},
		{"all given", vmm.Config{Disks: disk, Nets: nets, Channel: "/dst/ch"}, deviceOverrides{disks: disk, nets: nets, channel: "/dst/ch"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ownBackingsOnly(tc.cfg, tc.o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want a refusal naming %s", err, tc.want)
			}
		})
	}
}
