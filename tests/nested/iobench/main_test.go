package main

import (
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/gvmm/gvmm/tests/nested/internal/benchfmt"
)

func TestSplitLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    io.Reader
		want []string
	}{
		{"lines", strings.NewReader("a\r\nb\n\nc"), []string{"a", "b", "", "c"}},
		// Byte by byte, the prompt is whole once "# " has come.
		{"prompt alone", iotest.OneByteReader(strings.NewReader("x\nguest# ")), []string{"x", "guest# "}},
		{"prompt then echo", io.MultiReader(strings.NewReader("up\nguest# \x1b[6n"), strings.NewReader("ls\nout\n")),
			[]string{"up", "guest# \x1b[6n", "ls", "out"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := make(chan string, 100)
			splitLines(tc.r, ch)
			close(ch)
			var got []string
			for l := range ch {
				got = append(got, l)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseAgent(t *testing.T) {
	out := []string{"agent disk read /dev/vda 64; echo ...", "gvmm-iobench: op=blk-read bytes=67108864 ns=2000000000"}
	r, err := parseAgent(out, benchfmt.TestBlkRead)
	if err != nil || !r.OK || r.Bytes != 64<<20 || r.MiBps() != 32 {
		t.Errorf("parseAgent: %+v, %v", r, err)
	}
	if _, err := parseAgent(out, benchfmt.TestBlkWrite); err == nil {
		t.Error("parseAgent found a blk-write result in a read's output")
	}
}

func TestArgv(t *testing.T) {
	c := config{mem: "256M", cpus: 1, kernel: "K", initrd: "I", gvmm: "gvmm", qemu: "qemu", qemuData: "/q"}
	for _, tc := range []struct {
		vmm  string
		want []string
	}{
		{"gvmm", []string{"--disk img", "--net tap=t0,mac=" + guestMAC, "--memory 256M", "--cpus 1"}},
		{"qemu", []string{"-L /q", "-m 256M", "-smp 1",
			"-drive file=img,format=raw,if=none,id=d0,cache=writeback,aio=threads",
			"-netdev tap,id=n0,ifname=t0,script=no,downscript=no,vhost=off"}},
	} {
		a, err := c.argv(tc.vmm, "img", "t0")
		if err != nil {
			t.Fatal(err)
		}
		line := strings.Join(a, " ")
		for _, w := range tc.want {
			if !strings.Contains(line, w) {
				t.Errorf("%s: %q lacks %q", tc.vmm, line, w)
			}
		}
	}
	if _, err := c.argv("qemu-microvm", "img", "t0"); err == nil {
		t.Error("argv accepted an unknown VMM")
	}
}

func TestCounterLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{"/sys/block/vda/stat: 67 0 131096 490", true},
		{" 26:        132   PCI-MSI 16385-edge      virtio0-req.0", true},
		{"/sys/class/net/eth0/statistics/tx_packets: 2825", true},
		{"guest# for f in /sys/block/vda/stat /sys/class/net/eth0/statistics/tx_packets", false},
		{"ys/class/net/eth0/statistics/rx_packets; do echo \"$f: $(cat $f)\"; done; grep -i", false},
		{"guest# ", false},
	} {
		if got := counterLine.MatchString(tc.line); got != tc.want {
			t.Errorf("counterLine.MatchString(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	// 52 fields, as Linux 6.x writes them; the name holds a space and a ')'.
	fields := make([]string, 50)
	for i := range fields {
		fields[i] = "0"
	}
	fields[0] = "S"
	fields[14-3], fields[15-3], fields[43-3] = "120", "30", "100"
	good := "4242 (CPU 0/KVM) x) " + strings.Join(fields, " ")
	tests := []struct {
		name    string
		line    string
		want    threadCPU
		wantErr bool
	}{
		{"vcpu", good, threadCPU{User: 120, Sys: 30, Guest: 100}, false},
		{"no name", "4242 S 1 2 3", threadCPU{}, true},
		{"short", "4242 (x) S 1 2 3", threadCPU{}, true},
		{"not a number", strings.Replace(good, " 120 ", " x ", 1), threadCPU{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat(tt.line)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("parseStat = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestSplitCPU(t *testing.T) {
	before := map[string]threadCPU{
		"1": {User: 10, Sys: 5},              // main loop
		"2": {User: 100, Sys: 20, Guest: 90}, // vCPU
		"3": {User: 7},                       // ends before the second sample
	}
	after := map[string]threadCPU{
		"1": {User: 30, Sys: 15},
		"2": {User: 200, Sys: 30, Guest: 170},
		"4": {User: 3, Sys: 1}, // a new worker
	}
	got := splitCPU(before, after)
	want := cpuSplit{VCPU: 1100, Guest: 800, VCPUSys: 100, Other: 340, OtherSys: 110, Busiest: 300, OtherThreads: 2,
		Top: []threadUse{{"1", 300}, {"4", 40}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("splitCPU = %+v, want %+v", got, want)
	}
	if got := usualCalls(map[string]int{"232": 5, "running": 9, "0": 1, "1": 1}); got != "running:9/232:5/0:1" {
		t.Fatalf("usualCalls = %q", got)
	}
}
