package machine

import (
	"fmt"
	"sync"

	"govmm/migration"
	"govmm/vmm"
)

// The machine as package migration sees it. migration knows nothing about
// KVM; these two adapters translate its Source and Target calls into the
// machine's own operations. Reading order: migration/doc.go first.

// MigrationSource returns the running machine as a migration source. Its
// Stop ends Run with ExitMigrated once the guest runs on the destination.
func (m *Machine) MigrationSource() migration.Source { return &source{m: m} }

type source struct{ m *Machine }

func regionsOf(mem *vmm.GuestMemory) []migration.Region {
	var out []migration.Region
	for _, r := range mem.Regions() {
		out = append(out, migration.Region{Start: uint64(r.Start), Size: r.Size})
	}
	return out
}

func (s *source) MemoryLayout() []migration.Region { return regionsOf(s.m.VM.Memory) }

func (s *source) ReadPage(gpa uint64, buf []byte) error {
	_, err := s.m.VM.Memory.ReadAt(buf, int64(gpa))
	return err
}

func (s *source) StartDirtyTracking() error { return s.m.VM.StartDirtyLog() }
func (s *source) StopDirtyTracking() error  { return s.m.VM.StopDirtyLog() }

func (s *source) DirtyPages() ([]uint64, error) {
	bitmaps, err := s.m.VM.DirtyLog()
	if err != nil {
		return nil, err
	}
	return gpasOf(bitmaps), nil
}

// PeekDirtyPages makes the source a migration.DirtyPeeker, through KVM's
// manual dirty-log mode (vmm.VM.PeekDirtyLog).
func (s *source) PeekDirtyPages() ([]uint64, bool, error) {
	bitmaps, ok, err := s.m.VM.PeekDirtyLog()
	if err != nil || !ok {
		return nil, ok, err
	}
	return gpasOf(bitmaps), true, nil
}

func gpasOf(bitmaps []vmm.DirtyBitmap) []uint64 {
	var out []uint64
	for _, b := range bitmaps {
		for _, gpa := range b.GPAs() {
			out = append(out, uint64(gpa))
		}
	}
	return out
}

// Pause stops the guest for the final round, and hands a shared network
// backend's traffic to the destination: from here on, frames for the guest
// queue up on the destination's side of the TAP.
func (s *source) Pause() error {
	err := s.m.Pause()
	s.m.handOverTraffic(false)
	return err
}

// Resume runs the guest here again after a failed migration.
func (s *source) Resume() error {
	s.m.handOverTraffic(true)
	s.m.Resume()
	return nil
}

func (s *source) SaveState() ([]byte, error) { return s.m.SaveState() }
func (s *source) Stop() {
	s.m.stop(Exit{Reason: ExitMigrated, Detail: "the guest now runs on the destination"})
}

// Destination builds a machine from an incoming migration: Receive calls
// PrepareMemory first, which creates the machine with the source's memory
// size; the caller then takes it with Machine() and waits on Exit().
type Destination struct {
	cfg Config // MemoryBytes is taken from the stream

	mu      sync.Mutex
	m       *Machine
	exit    chan Exit
	started bool
	zero    [migration.PageSize]byte
}

// NewDestination prepares to receive a machine built with cfg (its
// MemoryBytes is ignored: the source's layout decides).
func NewDestination(cfg Config) *Destination {
	return &Destination{cfg: cfg, exit: make(chan Exit, 1)}
}

// PrepareMemory builds the machine. The layout must be exactly what this
// govmm would build for that much RAM: anything else is not a govmm source
// of a compatible version.
func (d *Destination) PrepareMemory(layout []migration.Region) error {
	var total uint64
	for _, r := range layout {
		total += r.Size
	}
	want := RAMLayout(total)
	if len(want) != len(layout) {
		return fmt.Errorf("memory layout of %d regions does not match this machine's %d for %d MiB", len(layout), len(want), total>>20)
	}
	for i, r := range layout {
		if uint64(want[i].Start) != r.Start || want[i].Size != r.Size {
			return fmt.Errorf("memory region %d is %#x+%#x, this machine would have %#x+%#x", i, r.Start, r.Size, want[i].Start, want[i].Size)
		}
	}
	cfg := d.cfg
	cfg.MemoryBytes = total
	m, err := New(cfg)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.m = m
	d.mu.Unlock()
	return nil
}

// WritePage stores a page of guest RAM; empty data is a page of zeroes.
func (d *Destination) WritePage(gpa uint64, data []byte) error {
	if len(data) == 0 {
		data = d.zero[:]
	}
	_, err := d.m.VM.Memory.WriteAt(data, int64(gpa))
	return err
}

// ReadPage reads back a page of guest RAM, for migration.Options.Verify
// (it makes Destination a migration.PageReader).
func (d *Destination) ReadPage(gpa uint64, buf []byte) error {
	_, err := d.m.VM.Memory.ReadAt(buf[:migration.PageSize], int64(gpa))
	return err
}

// RestoreState applies the machine state (vCPUs, irqchips, clock, devices).
func (d *Destination) RestoreState(blob []byte) error { return d.m.RestoreState(blob) }

// Resume starts the vCPUs; the machine's exit arrives on Exit().
func (d *Destination) Resume() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil || d.started {
		return fmt.Errorf("destination machine not ready to resume")
	}
	d.started = true
	// The devices take the traffic over and announce the guest's new
	// place; the guest's own announcement (a config-change interrupt) is
	// held until Run resumes the devices.
	d.m.handOverTraffic(true)
	d.m.announce()
	go func() { d.exit <- d.m.Run() }()
	return nil
}

// Machine returns the machine once PrepareMemory has built it, else nil.
func (d *Destination) Machine() *Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m
}

// Exit delivers the machine's exit after Resume.
func (d *Destination) Exit() <-chan Exit { return d.exit }
