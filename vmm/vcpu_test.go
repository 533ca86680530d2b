package vmm

import (
	"encoding/binary"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests run tiny hand-assembled real-mode guests on the host's
// /dev/kvm. They execute a handful of instructions, so they are fast even
// where KVM emulates real mode instruction by instruction (PVM; see
// shared/notes/environment.md).

// newTestVM makes a VM with 64 KiB of RAM at GPA 0 and code at 0x1000.
func newTestVM(t *testing.T, irqchip bool, code []byte) (*VM, *VCPU) {
	t.Helper()
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s on this machine: %v", DefaultDevice, err)
	}
	k, err := OpenKVM(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	vm, err := k.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	mem := newTestMemory(t, MemoryRegion{Start: 0, Size: 0x10000})
	if err := vm.SetMemory(mem); err != nil {
		t.Fatal(err)
	}
	if irqchip {
		if err := vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
	}
	v, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if _, err := mem.WriteAt(code, 0x1000); err != nil {
		t.Fatal(err)
	}
	sregs, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := v.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return vm, v
}

type testDevice struct {
	mu     sync.Mutex
	reads  []uint64
	writes map[uint64][]byte
	answer byte
}

func (d *testDevice) Read(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reads = append(d.reads, off)
	for i := range data {
		data[i] = d.answer
	}
}

func (d *testDevice) Write(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.writes == nil {
		d.writes = map[uint64][]byte{}
	}
	d.writes[off] = append(d.writes[off], data...)
}

// A guest that talks to one port-I/O and one MMIO device, then halts:
//
//	mov dx, 0x3f8 ; mov al, 'A' ; out dx, al   → port 0x3f8 (offset 0) gets 'A'
//	add dx, 5 ; in al, dx                       → port 0x3fd (offset 5) read: 0x5a
//	mov bx, 0x2000 ; mov ds, bx
//	mov [0x10], al                              → MMIO 0x20010 (offset 0x10) gets 0x5a
//	mov al, [0x20]                              → MMIO 0x20020 (offset 0x20) read: 0x33
//	sub dx, 5 ; out dx, al                      → port 0x3f8 gets 0x33
//	hlt
var ioGuest = []byte{
	0xba, 0xf8, 0x03, 0xb0, 'A', 0xee,
	0x83, 0xc2, 0x05, 0xec,
	0xbb, 0x00, 0x20, 0x8e, 0xdb,
	0xa2, 0x10, 0x00,
	0xa0, 0x20, 0x00,
	0x83, 0xea, 0x05, 0xee,
	0xf4,
}

func TestExitsReachTheRightDevice(t *testing.T) {
	vm, v := newTestVM(t, false, ioGuest)
	uart := &testDevice{answer: 0x5a}
	mmio := &testDevice{answer: 0x33}
	if err := vm.PIO.Register(0x3f8, 8, "uart", uart); err != nil {
		t.Fatal(err)
	}
	if err := vm.MMIO.Register(0x20000, 0x1000, "mmio", mmio); err != nil {
		t.Fatal(err)
	}
	info := runWithTimeout(t, v, 30*time.Second)
	if info.Reason != StopHalted {
		t.Fatalf("stopped with %v (%s), want halted\n%s", info.Reason, info.Detail, info.CPU.Report())
	}
	if got := string(uart.writes[0]); got != "A\x33" {
		t.Errorf("port 0x3f8 received %q, want \"A\\x33\"", got)
	}
	if len(uart.reads) != 1 || uart.reads[0] != 5 {
		t.Errorf("port reads at offsets %v, want [5]", uart.reads)
	}
	if got := mmio.writes[0x10]; len(got) != 1 || got[0] != 0x5a {
		t.Errorf("MMIO offset 0x10 received %x, want 5a (the value read from the port)", got)
	}
	if len(mmio.reads) != 1 || mmio.reads[0] != 0x20 {
		t.Errorf("MMIO reads at %v, want [0x20]", mmio.reads)
	}
	if info.CPU.Regs.RIP != 0x1000+uint64(len(ioGuest)) {
		t.Errorf("halted at RIP %#x, want just after the hlt (%#x)", info.CPU.Regs.RIP, 0x1000+len(ioGuest))
	}
	if v.State() != VCPUStopped {
		t.Errorf("state %v after halt", v.State())
	}
}

func runWithTimeout(t *testing.T, v *VCPU, d time.Duration) *StopInfo {
	t.Helper()
	done := make(chan *StopInfo, 1)
	go func() { done <- v.Run() }()
	select {
	case info := <-done:
		return info
	case <-time.After(d):
		v.Stop()
		t.Fatalf("vCPU did not stop within %v", d)
		return nil
	}
}

// counterGuest increments the word at 0x500 forever:
//
//	l: inc word [0x500] ; jmp l
var counterGuest = []byte{0xff, 0x06, 0x00, 0x05, 0xeb, 0xfa}

func readCounter(vm *VM) uint16 {
	b, _ := vm.Memory.Slice(0x500, 2)
	return binary.LittleEndian.Uint16(b)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPauseResumeStopFromAnotherGoroutine(t *testing.T) {
	vm, v := newTestVM(t, false, counterGuest)
	done := make(chan *StopInfo, 1)
	go func() { done <- v.Run() }()

	waitUntil(t, "the guest to start counting", func() bool { return readCounter(vm) > 0 })
	if err := v.Pause(); err != nil {
		t.Fatal(err)
	}
	if v.State() != VCPUPaused {
		t.Fatalf("state %v after Pause", v.State())
	}
	frozen := readCounter(vm)
	time.Sleep(50 * time.Millisecond)
	if c := readCounter(vm); c != frozen {
		t.Fatalf("counter moved from %d to %d while paused", frozen, c)
	}
	// While paused, vCPU state is readable on the vCPU's own thread.
	var rip uint64
	var err error
	v.Do(func() {
		var r Regs
		r, err = v.GetRegs()
		rip = r.RIP
	})
	if err != nil || rip < 0x1000 || rip >= 0x1000+uint64(len(counterGuest)) {
		t.Fatalf("paused at RIP %#x (err %v), want inside the loop", rip, err)
	}

	v.Resume()
	waitUntil(t, "the counter to move after Resume", func() bool { return readCounter(vm) != frozen })

	// Pause and resume many times in a row: no kick may be lost.
	for i := 0; i < 20; i++ {
		if err := v.Pause(); err != nil {
			t.Fatal(err)
		}
		v.Resume()
	}

	v.Stop()
	select {
	case info := <-done:
		if info.Reason != StopRequested {
			t.Fatalf("stopped with %v, want stop requested", info.Reason)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not stop the vCPU")
	}
	if err := v.Pause(); err == nil {
		t.Fatal("Pause of a stopped vCPU succeeded")
	}
}

// With the in-kernel irqchip, HLT does not exit to the VMM: the vCPU thread
// sleeps inside KVM_RUN. Pausing it needs the signal kick, not just
// immediate_exit.
func TestPauseWhileHaltedInKernel(t *testing.T) {
	_, v := newTestVM(t, true, []byte{0xfa, 0xf4, 0xeb, 0xfd}) // cli; l: hlt; jmp l
	done := make(chan *StopInfo, 1)
	go func() { done <- v.Run() }()
	waitUntil(t, "the vCPU to run", func() bool { return v.State() == VCPURunning })
	time.Sleep(20 * time.Millisecond) // let it reach the hlt
	paused := make(chan error, 1)
	go func() { paused <- v.Pause() }()
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Pause of a vCPU halted in the kernel did not return")
	}
	v.Stop()
	if info := <-done; info.Reason != StopRequested {
		t.Fatalf("stopped with %v", info.Reason)
	}
}

func TestCrashSnapshotDisassembles(t *testing.T) {
	_, v := newTestVM(t, false, ioGuest)
	info := runWithTimeout(t, v, 30*time.Second)
	if !info.CPU.Valid {
		t.Fatalf("no snapshot: %s", info.CPU.Err)
	}
	// After the hlt, RIP points past the program: zero bytes there decode
	// as "add [bx+si], al" in 16-bit mode.
	rep := info.CPU.Report()
	for _, want := range []string{"RIP=", "mode=16-bit", "code at RIP", "add"} {
		if !contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
