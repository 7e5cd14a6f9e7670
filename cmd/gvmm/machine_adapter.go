package main

import (
	"context"
	"errors"

	"github.com/gvmm/gvmm/migration"
	"github.com/gvmm/gvmm/vmm"
)

// sourceMachine presents a running vmm.Machine to the migration engine.
type sourceMachine struct {
	m *vmm.Machine
}

var _ migration.Source = sourceMachine{}

func (s sourceMachine) Regions() []migration.Region { return regionsOf(s.m) }

func (s sourceMachine) StartDirtyLog() error           { return s.m.StartDirtyLog() }
func (s sourceMachine) TakeDirty() ([][]uint64, error) { return s.m.TakeDirty() }
func (s sourceMachine) StopDirtyLog() error            { return s.m.StopDirtyLog() }
func (s sourceMachine) Throttle(percent int)           { s.m.Throttle(percent) }

// Pause parks the vCPUs, then quiesces the devices; a failure undoes both.
func (s sourceMachine) Pause(ctx context.Context) error {
	if err := s.m.Pause(ctx); err != nil {
		return err
	}
	if err := s.m.Quiesce(ctx); err != nil {
		return errors.Join(err, s.m.Resume())
	}
	return nil
}

func (s sourceMachine) Resume(context.Context) error { return s.m.Resume() }

func (s sourceMachine) SaveState(ctx context.Context) ([]migration.Component, error) {
	comps, err := s.m.SaveState(ctx)
	if err != nil {
		return nil, err
	}
	return toMigrationComponents(comps), nil
}

// destMachine presents a machine built to receive (Config.Incoming, Run
// started so its vCPUs are parked) to the migration engine.
type destMachine struct {
	m    *vmm.Machine
	opts vmm.RestoreOptions
}

var _ migration.ZeroedDestination = destMachine{}

func (d destMachine) Regions() []migration.Region { return regionsOf(d.m) }

// MemoryIsZero: a machine built to receive has fresh RAM that nothing was
// loaded into, and its vCPUs wait for the migration's end to run.
func (d destMachine) MemoryIsZero() bool { return true }

func (d destMachine) RestoreState(ctx context.Context, comps []migration.Component) error {
	if err := d.m.Pause(ctx); err != nil { // waits until every vCPU parked
		return err
	}
	return d.m.RestoreState(ctx, fromMigrationComponents(comps), d.opts)
}

func regionsOf(m *vmm.Machine) []migration.Region {
	var out []migration.Region
	for _, r := range m.Memory().Regions() {
		out = append(out, migration.Region{GPA: r.GPA, Data: r.Data})
	}
	return out
}

func toMigrationComponents(comps []vmm.StateComponent) []migration.Component {
	out := make([]migration.Component, len(comps))
	for i, c := range comps {
		out[i] = migration.Component{ID: c.ID, Data: c.Data}
	}
	return out
}

func fromMigrationComponents(comps []migration.Component) []vmm.StateComponent {
	out := make([]vmm.StateComponent, len(comps))
	for i, c := range comps {
		out[i] = vmm.StateComponent{ID: c.ID, Data: c.Data}
	}
	return out
}
