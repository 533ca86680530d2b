package machine

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"govmm/vmm"
)

func TestRAMLayoutSplitsAroundTheMMIOHole(t *testing.T) {
	for _, c := range []struct {
		size uint64
		want []vmm.MemoryRegion
	}{
		{512 << 20, []vmm.MemoryRegion{{Start: 0, Size: 512 << 20}}},
		{3 << 30, []vmm.MemoryRegion{{Start: 0, Size: 3 << 30}}},
		{4 << 30, []vmm.MemoryRegion{{Start: 0, Size: 3 << 30}, {Start: 4 << 30, Size: 1 << 30}}},
		{512<<20 + 100, []vmm.MemoryRegion{{Start: 0, Size: 512 << 20}}},
	} {
		got := RAMLayout(c.size)
		if len(got) != len(c.want) {
			t.Fatalf("RAMLayout(%#x) = %+v", c.size, got)
		}
		for i := range got {
			if got[i].Start != c.want[i].Start || got[i].Size != c.want[i].Size {
				t.Errorf("RAMLayout(%#x)[%d] = %#x+%#x, want %#x+%#x", c.size, i, got[i].Start, got[i].Size, c.want[i].Start, c.want[i].Size)
			}
		}
	}
}

func TestOnlyOneVCPUForNow(t *testing.T) {
	_, err := New(Config{MemoryBytes: 64 << 20, NumVCPUs: 2})
	if err == nil || !strings.Contains(err.Error(), "--cpus 2") {
		t.Fatalf("error %v", err)
	}
}

// newTestMachine builds the real machine on this host's /dev/kvm and points
// its vCPU at a tiny real-mode program at 0x1000. A handful of
// instructions run fast even where KVM emulates real mode (PVM).
func newTestMachine(t *testing.T, code []byte) (*Machine, *bytes.Buffer) {
	t.Helper()
	if _, err := os.Stat(vmm.DefaultDevice); err != nil {
		t.Skipf("no %s: %v", vmm.DefaultDevice, err)
	}
	var out bytes.Buffer
	m, err := New(Config{MemoryBytes: 64 << 20, NumVCPUs: 1, SerialOut: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if _, err := m.VM.Memory.WriteAt(code, 0x1000); err != nil {
		t.Fatal(err)
	}
	v := m.VM.VCPUs()[0]
	sregs, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if err := v.SetSregs(sregs); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(vmm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	return m, &out
}

// outb assembles "mov dx, port; mov al, value; out dx, al".
func outb(port uint16, value byte) []byte {
	return []byte{0xba, byte(port), byte(port >> 8), 0xb0, value, 0xee}
}

// The guest prints "hi" on COM1, then powers off through the ACPI sleep
// control register with SLP_TYP=5 and SLP_EN, as Linux's acpi_power_off
// does: the machine stops with ExitPowerOff and the UART output arrived.
func TestGuestPowerOffStopsTheMachine(t *testing.T) {
	code := append(outb(COM1Port, 'h'), outb(COM1Port, 'i')...)
	code = append(code, outb(ACPIPMPort, 5<<2|1<<5)...)
	code = append(code, 0xeb, 0xfe) // jmp $ (never reached)
	m, out := newTestMachine(t, code)
	e := m.Run()
	if e.Reason != ExitPowerOff || !e.Clean() {
		t.Fatalf("exit %v (%s), want power off", e.Reason, e.Detail)
	}
	if out.String() != "hi" {
		t.Fatalf("serial output %q", out.String())
	}
}

// A pvpanic write is a guest panic: a non-clean exit whose crash report
// names the reason and shows the registers and the code at RIP.
func TestPVPanicGivesACrashReport(t *testing.T) {
	code := append(outb(PVPanicPort, 1), 0xeb, 0xfe)
	m, _ := newTestMachine(t, code)
	e := m.Run()
	if e.Reason != ExitPanic || e.Clean() {
		t.Fatalf("exit %v, want panic", e.Reason)
	}
	r := e.CrashReport()
	for _, want := range []string{"guest panicked", "RIP=", "code at RIP", "jmp"} {
		if !strings.Contains(r, want) {
			t.Errorf("crash report lacks %q:\n%s", want, r)
		}
	}
}

// The i8042 reset line (Linux's reboot=k) ends the machine as a reset.
func TestKeyboardControllerReset(t *testing.T) {
	m, _ := newTestMachine(t, append(outb(0x64, 0xfe), 0xeb, 0xfe))
	if e := m.Run(); e.Reason != ExitReset || !e.Clean() {
		t.Fatalf("exit %v, want reset", e.Reason)
	}
}

// Stop from the host (Ctrl-A x) ends a guest that spins forever.
func TestHostStopEndsASpinningGuest(t *testing.T) {
	m, _ := newTestMachine(t, []byte{0xeb, 0xfe})
	done := make(chan Exit, 1)
	go func() { done <- m.Run() }()
	for m.VM.VCPUs()[0].State() != vmm.VCPURunning { // stop it while it runs guest code
		time.Sleep(time.Millisecond)
	}
	m.Stop("test")
	if e := <-done; e.Reason != ExitQuit || e.Detail != "test" {
		t.Fatalf("exit %+v", e)
	}
}
