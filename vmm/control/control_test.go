package control

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"govmm/migration"
)

// fakeVM records what the API asked of it.
type fakeVM struct {
	paused   bool
	vcpusErr error
}

func (f *fakeVM) Status() Status {
	st := Status{State: "running", MemoryBytes: 512 << 20, VCPUs: 1}
	if f.paused {
		st.State = "paused"
	}
	return st
}
func (f *fakeVM) Pause() error  { f.paused = true; return nil }
func (f *fakeVM) Resume() error { f.paused = false; return nil }
func (f *fakeVM) Migrate(context.Context, MigrateRequest, func(migration.Round)) (*migration.Report, error) {
	return nil, errors.New("not in this test")
}
func (f *fakeVM) VCPUs() ([]string, error) {
	return []string{"vCPU 0:\n  RIP=ffffffff81000000"}, f.vcpusErr
}

func TestStatusPauseResumeVCPUs(t *testing.T) {
	vm := &fakeVM{}
	path := filepath.Join(t.TempDir(), "api.sock")
	s, err := Listen(path, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Dial(path)

	if st, err := c.Status(); err != nil || st.State != "running" || st.VCPUs != 1 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	if err := c.Pause(); err != nil || !vm.paused {
		t.Fatalf("pause: %v, paused=%v", err, vm.paused)
	}
	if st, _ := c.Status(); st.State != "paused" {
		t.Errorf("status after pause = %q", st.State)
	}
	if err := c.Resume(); err != nil || vm.paused {
		t.Fatalf("resume: %v, paused=%v", err, vm.paused)
	}
	got, err := c.VCPUs()
	if err != nil || !slices.Equal(got, []string{"vCPU 0:\n  RIP=ffffffff81000000"}) {
		t.Fatalf("vcpus = %q, %v", got, err)
	}
	vm.vcpusErr = errors.New("KVM_GET_REGS: bad file descriptor")
	if _, err := c.VCPUs(); err == nil || !strings.Contains(err.Error(), "KVM_GET_REGS") {
		t.Errorf("vcpus with a failing VM: %v, want the VM's error", err)
	}
}
