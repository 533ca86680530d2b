package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"govmm/migration"
	"govmm/vmm/control"
	"govmm/vmm/machine"
)

// liveVM is a running machine as the control API and the console's
// Ctrl-A m see it: status, pause, resume, and migrating it away.
type liveVM struct {
	m      *machine.Machine
	kernel string

	mu        sync.Mutex
	paused    bool
	migrating bool
}

func (v *liveVM) Status() control.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	state := "running"
	switch {
	case v.migrating:
		state = "migrating"
	case v.paused:
		state = "paused"
	}
	return control.Status{State: state, MemoryBytes: v.m.VM.Memory.Size(), VCPUs: len(v.m.VM.VCPUs()), Kernel: v.kernel}
}

func (v *liveVM) Pause() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.m.Pause(); err != nil {
		return err
	}
	v.paused = true
	return nil
}

func (v *liveVM) Resume() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.m.Resume()
	v.paused = false
	return nil
}

func (v *liveVM) VCPUs() ([]string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m.Registers(v.paused)
}

// Migrate connects to the destination and runs the pre-copy protocol
// (package migration). On success the machine has been stopped by the
// protocol's commit and Run returns ExitMigrated; on failure the guest
// runs here again, except when the outcome is unknown (the commit was sent
// but not acknowledged), in which case it stays paused for a person to
// decide — running it here could run it twice.
func (v *liveVM) Migrate(ctx context.Context, req control.MigrateRequest, progress func(migration.Round)) (*migration.Report, error) {
	v.mu.Lock()
	if v.migrating {
		v.mu.Unlock()
		return nil, fmt.Errorf("a migration is already in progress")
	}
	if v.paused {
		v.mu.Unlock()
		return nil, fmt.Errorf("the VM is paused; resume it before migrating")
	}
	v.migrating = true
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.migrating = false
		v.mu.Unlock()
	}()

	var d net.Dialer
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := d.DialContext(dialCtx, "tcp", req.To)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("migration failed: cannot reach the destination %s: %v; the VM keeps running here", req.To, err)
	}
	defer conn.Close()
	host, _ := os.Hostname()
	opts := migration.Options{
		MaxBandwidth:   req.MaxBandwidth,
		Adaptive:       req.Adaptive,
		StartBandwidth: req.StartBandwidth,
		DowntimeLimit:  time.Duration(req.DowntimeLimitMS) * time.Millisecond,
		MaxRounds:      req.MaxRounds,
		Verify:         req.Verify,
		Name:           fmt.Sprintf("%s pid %d", host, os.Getpid()),
	}
	report, err := migration.Send(ctx, conn, v.m.MigrationSource(), opts, progress)
	if err != nil {
		if errors.Is(err, migration.ErrOutcomeUnknown) {
			v.mu.Lock()
			v.paused = true
			v.mu.Unlock()
			return report, fmt.Errorf("migration outcome unknown: %v; the VM is PAUSED here: if it does not run on %s, resume it here (curl -X POST .../resume)", err, req.To)
		}
		return report, err // Send's error says the VM still runs here
	}
	return report, nil
}

// defaultAPIPath is where a VM's control socket goes unless --api says
// otherwise: one per govmm process, in the user's runtime directory.
func defaultAPIPath() string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	return filepath.Join(dir, fmt.Sprintf("govmm-%d.sock", os.Getpid()))
}

// findAPI picks the control socket for `govmm migrate` without --api: the
// only live govmm socket, if there is exactly one.
func findAPI() (string, error) {
	var live []string
	for _, dir := range []string{os.Getenv("XDG_RUNTIME_DIR"), os.TempDir()} {
		if dir == "" {
			continue
		}
		matches, _ := filepath.Glob(filepath.Join(dir, "govmm-*.sock"))
		for _, p := range matches {
			if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
				c.Close()
				live = append(live, p)
			}
		}
	}
	switch len(live) {
	case 0:
		return "", fmt.Errorf("no running govmm found; give its control socket with --api")
	case 1:
		return live[0], nil
	default:
		return "", fmt.Errorf("several govmm are running (%v); choose one with --api", live)
	}
}
