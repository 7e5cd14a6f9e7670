package vmm

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads a size such as "512M", "2G", "65536K" or "1048576"
// (bytes). Suffixes are binary (K = 1024) and case-insensitive; an
// optional trailing "B" or "iB" is accepted.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "IB")
	if len(u) > 1 {
		u = strings.TrimSuffix(u, "B")
	}
	shift := 0
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift != 0 {
			u = u[:n-1]
		}
	}
	v, err := strconv.ParseUint(u, 10, 64)
	if err != nil || u == "" {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional K, M, G or T suffix", s)
	}
	if shift > 0 && v > (^uint64(0))>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return v << shift, nil
}

// FormatSize prints a byte count with the largest exact binary suffix.
func FormatSize(v uint64) string {
	for _, u := range []struct {
		shift  uint
		suffix string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if v >= 1<<u.shift && v%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", v>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%d", v)
}
