package vmm_test

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"govmm/vmm"
	"govmm/vmm/testguest"
)

// Helpers for the tests that run testguest's CPL3 programs (dirty_test.go,
// state_test.go). They live in package vmm_test because testguest imports
// vmm.

// doorbell is the MMIO device at testguest.Doorbell: each 8-byte write the
// guest makes is sent on rang.
type doorbell struct{ rang chan uint64 }

func (d *doorbell) Read(off uint64, data []byte) {}
func (d *doorbell) Write(off uint64, data []byte) {
	if len(data) == 8 {
		d.rang <- binary.LittleEndian.Uint64(data)
	}
}

// guestVM is a VM running (or ready to run) one testguest program.
type guestVM struct {
	vm   *vmm.VM
	vcpu *vmm.VCPU
	bell *doorbell
	done chan *vmm.StopInfo
}

// newGuestVM builds a VM with the given RAM layout (the first region must
// start at 0 and hold testguest.MinRAM), with an in-kernel irqchip and PIT
// as govmm's machine has, one vCPU with the host's CPUID, and program
// loaded. With load false the RAM is left empty and the vCPU in its reset
// state: a migration destination.
func newGuestVM(t *testing.T, layout []vmm.MemoryRegion, program []byte, load bool) *guestVM {
	t.Helper()
	if _, err := os.Stat(vmm.DefaultDevice); err != nil {
		t.Skipf("no %s on this machine: %v", vmm.DefaultDevice, err)
	}
	k, err := vmm.OpenKVM(vmm.DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	vm, err := k.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := vmm.NewGuestMemory(layout)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.SetMemory(mem); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreatePIT(); err != nil {
		t.Fatal(err)
	}
	v, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	g := &guestVM{vm: vm, vcpu: v, bell: &doorbell{rang: make(chan uint64, 16)}, done: make(chan *vmm.StopInfo, 1)}
	t.Cleanup(func() {
		if v.State() != vmm.VCPUCreated {
			v.Stop()
			v.Wait()
		}
		vm.Close()
		mem.Close()
	})
	supported, err := k.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCPUID(vmm.GuestCPUID(supported, vmm.CPUIDConfig{VCPUID: 0})); err != nil {
		t.Fatal(err)
	}
	if err := vm.MMIO.Register(uint64(testguest.Doorbell), vmm.PageSize, "doorbell", g.bell); err != nil {
		t.Fatal(err)
	}
	if load {
		if err := testguest.Load(mem, program); err != nil {
			t.Fatal(err)
		}
		if err := testguest.SetupVCPU(v); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// start runs the vCPU on its own goroutine.
func (g *guestVM) start() {
	go func() { g.done <- g.vcpu.Run() }()
}

// waitBell waits for the guest to ring the doorbell with want.
func (g *guestVM) waitBell(t *testing.T, want uint64) {
	t.Helper()
	select {
	case got := <-g.bell.rang:
		if got != want {
			t.Fatalf("doorbell rang with %d, want %d", got, want)
		}
	case info := <-g.done:
		t.Fatalf("vCPU stopped (%v: %s) before ringing the doorbell\n%s", info.Reason, info.Detail, info.CPU.Report())
	case <-time.After(30 * time.Second):
		t.Fatalf("no doorbell %d within 30s", want)
	}
}

// page reads the 8-byte value at the start of a page.
func page(t *testing.T, mem *vmm.GuestMemory, gpa vmm.GPA) uint64 {
	t.Helper()
	var b [8]byte
	if _, err := mem.ReadAt(b[:], int64(gpa)); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
