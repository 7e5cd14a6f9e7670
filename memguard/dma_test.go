package memguard

import (
	"errors"
	"testing"
)

type devMem struct{ hostFake }

func (devMem) MarkDirty(uint64, uint64) {}

func TestDMA(t *testing.T) {
	e := newEnv(t, 2, Config{})
	mustRegister(e, userVA+pageSize, pageSize, Integrity)
	dev := e.g.DMA(devMem{hostFake{e.m}})
	tests := []struct {
		name   string
		gpa, n uint64
		write  bool
		ok     bool
	}{
		{"before", dataBase, pageSize, false, true},
		{"into", dataBase + pageSize - 1, 2, false, false},
		{"write into", dataBase + pageSize + 8, 8, true, false},
		{"after", dataBase + 2*pageSize, 16, true, true},
	}
	for _, tt := range tests {
		var err error
		if tt.write {
			err = dev.WriteAt(make([]byte, tt.n), tt.gpa)
		} else {
			_, err = dev.Slice(tt.gpa, tt.n)
		}
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrProtectedDMA)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	if v := e.g.Status().Violations; v != 2 {
		t.Errorf("violations %d", v)
	}
}
