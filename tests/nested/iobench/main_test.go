package main

import (
	"io"
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
