package vmm

import "testing"

type recorder struct{ writes []uint16 }

func (r *recorder) PortRead(off uint16, d []byte) {
	for i := range d {
		d[i] = byte(off)
	}
}
func (r *recorder) PortWrite(off uint16, d []byte) { r.writes = append(r.writes, off) }

func TestIOBus(t *testing.T) {
	var b ioBus
	a, c := &recorder{}, &recorder{}
	b.add(0x3f8, 8, a)
	b.add(0x70, 2, c)
	d := []byte{0}
	tests := []struct {
		port    uint16
		claimed bool
		want    byte
	}{
		{0x3f8, true, 0}, {0x3ff, true, 7}, {0x400, false, 0xff}, {0x3f7, false, 0xff},
		{0x71, true, 1}, {0x72, false, 0xff}, {0, false, 0xff}, {0xffff, false, 0xff},
	}
	for _, tt := range tests {
		if got := b.read(tt.port, d); got != tt.claimed || d[0] != tt.want {
			t.Errorf("read %#x: claimed %v value %#x, want %v %#x", tt.port, got, d[0], tt.claimed, tt.want)
		}
	}
	b.write(0x3fd, d)
	if len(a.writes) != 1 || a.writes[0] != 5 {
		t.Errorf("write offsets %v", a.writes)
	}
}

func TestPowerPorts(t *testing.T) {
	tests := []struct {
		name string
		port uint16
		val  byte
		want powerEvent
	}{
		{"ACPI S5", portSleepCtl, sleepEnableBit | sleepTypeS5<<2, powerOff},
		{"sleep type without enable", portSleepCtl, sleepTypeS5 << 2, 0},
		{"S3 is not power off", portSleepCtl, sleepEnableBit | 3<<2, 0},
		{"wake status clear", portSleepStatus, 0x80, 0},
		{"ACPI reset", portResetReg, resetValue, powerReset},
		{"i8042 reset", portI8042Cmd, 0xfe, powerReset},
		{"i8042 other", portI8042Cmd, 0xad, 0},
		{"cf9 reset", portResetCF9, 0x06, powerReset},
		{"cf9 without reset bit", portResetCF9, 0x02, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got powerEvent
			note := func(e powerEvent) { got = e }
			var b ioBus
			b.add(portI8042Cmd, 1, &powerPorts{base: portI8042Cmd, notify: note})
			b.add(portSleepCtl, 8, &powerPorts{base: portSleepCtl, notify: note})
			b.add(portPCIAddr, 8, newPCIBus(note))
			b.write(tt.port, []byte{tt.val})
			if got != tt.want {
				t.Fatalf("event %v, want %v", got, tt.want)
			}
		})
	}
}
