package vmm

import (
	"testing"
	"time"

	"github.com/gvmm/gvmm/kvm"
)

func TestNsToTicks(t *testing.T) {
	for _, tc := range []struct {
		ns   int64
		khz  uint32
		want int64
	}{
		{0, 2_000_000, 0},
		{1_000_000, 2_000_000, 2_000_000},                               // 1 ms at 2 GHz
		{1_500_000, 3_000_000, 4_500_000},                               // 1.5 ms at 3 GHz
		{999, 1_000_000, 999},                                           // under a millisecond
		{-2_000_000, 1_000_000, -2_000_000},                             // backwards
		{int64(time.Hour), 5_000_000, 18_000_000_000_000},               // an hour at 5 GHz
		{int64(30 * 24 * time.Hour), 5_000_000, 12_960_000_000_000_000}, // a month: no overflow
	} {
		if got := nsToTicks(tc.ns, tc.khz); got != tc.want {
			t.Errorf("nsToTicks(%d, %d) = %d, want %d", tc.ns, tc.khz, got, tc.want)
		}
	}
}

// TestMigratedTSCOffset follows a guest TSC through a migration: whatever
// the hosts' TSCs read, the guest's TSC on the destination is the one it
// had at the source's clock read, plus the kvmclock advance in ticks.
func TestMigratedTSCOffset(t *testing.T) {
	const khz = 2_500_000 // 2.5 GHz: 2.5 ticks a nanosecond
	one := uint64(1)
	negOfs := 0 - one<<45
	for _, tc := range []struct {
		name             string
		srcTSC, dstTSC   uint64 // host TSCs at each side's clock read
		srcOfs           uint64 // source's guest TSC offset
		srcClock, dstClk uint64 // kvmclock (ns) read on each side
	}{
		{"same host, 80 ms away", 1_000_000_000, 1_200_000_000, 0, 5e9, 5e9 + 80e6},
		{"host behind the guest", 10, 7_000_000_000_000, 1 << 40, 1e12, 1e12 + 2e9},
		{"negative offset", 1 << 50, 3 << 48, negOfs, 7e9, 7e9 + 1e6},
		{"nothing elapsed", 123456789, 987654321, 42, 9e9, 9e9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := kvm.ClockData{Clock: tc.srcClock, HostTSC: tc.srcTSC}
			dst := kvm.ClockData{Clock: tc.dstClk, HostTSC: tc.dstTSC}
			ofs := migratedTSCOffset(src, dst, tc.srcOfs, khz)
			guestSrc := tc.srcTSC + tc.srcOfs // at the source's clock read
			guestDst := tc.dstTSC + ofs       // at the destination's
			want := guestSrc + uint64(nsToTicks(int64(tc.dstClk-tc.srcClock), khz))
			if guestDst != want {
				t.Errorf("guest TSC on the destination %d, want %d (moved on %d ticks, want %d)",
					guestDst, want, int64(guestDst-guestSrc), int64(want-guestSrc))
			}
		})
	}
}

func TestTSCJumpOK(t *testing.T) {
	const khz = 1_000_000 // 1 tick a nanosecond
	slack := uint64(tscSlack)
	back := func(n uint64) uint64 { return 0 - n }
	for _, tc := range []struct {
		name   string
		jump   uint64 // ofsNew - ofsMSR, modulo 2^64
		awayNs int64
		ok     bool
	}{
		{"the time away", 80e6, 80e6, true},
		{"none", 0, 80e6, true},
		{"within the slack past it", 80e6 + slack, 80e6, true},
		{"past the slack", 80e6 + slack + 1, 80e6, false},
		{"a little back", back(1e6), 80e6, true},
		{"back past the slack", back(slack + 1), 80e6, false},
		{"a source scaled elsewhere", 1 << 50, 80e6, false},
		{"kvmclock went back", 0, -1, false},
		{"away longer than maxAway", 0, int64(maxAway) + 1, false},
		{"away as long as maxAway", 0, int64(maxAway), true},
	} {
		if got := tscJumpOK(1<<62+tc.jump, 1<<62, tc.awayNs, khz); got != tc.ok {
			t.Errorf("%s: tscJumpOK = %v, want %v", tc.name, got, tc.ok)
		}
	}
}
