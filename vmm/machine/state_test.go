package machine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"govmm/vmm"
	"govmm/vmm/testguest"
)

// These tests run testguest's Counter program, 64-bit user-mode code that
// runs at native speed on any KVM including PVM, on the real machine:
// in-kernel irqchip and PIT, the board's devices, the machine's CPUID and
// MSRs.

const stateTestRAM = 8 << 20

// newCountingMachine builds a machine; with load, it is ready to run
// Counter, otherwise it is a blank migration destination.
func newCountingMachine(t *testing.T, load bool) *Machine {
	t.Helper()
	if _, err := os.Stat(vmm.DefaultDevice); err != nil {
		t.Skipf("no %s: %v", vmm.DefaultDevice, err)
	}
	m, err := New(Config{MemoryBytes: stateTestRAM, NumVCPUs: 1, SerialOut: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if load {
		if err := testguest.Load(m.VM.Memory, testguest.Counter); err != nil {
			t.Fatal(err)
		}
		if err := testguest.SetupVCPU(m.VM.VCPUs()[0]); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// running starts m and returns a function that stops it and waits.
func running(t *testing.T, m *Machine) (stop func()) {
	done := make(chan Exit, 1)
	go func() { done <- m.Run() }()
	return func() {
		m.Stop("test over")
		select {
		case e := <-done:
			if e.Reason != ExitQuit {
				t.Errorf("machine ended with %v (%s), want a host stop\n%s", e.Reason, e.Detail, e.CrashReport())
			}
		case <-time.After(30 * time.Second):
			t.Error("machine did not stop")
		}
	}
}

func lastPage(m *Machine) uint64 {
	b, _ := m.VM.Memory.Slice(testguest.DataEnd-vmm.PageSize, 8)
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 | uint64(b[4])<<32
}

func waitPasses(t *testing.T, m *Machine, n uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for lastPage(m) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not reach pass %d (at %d)", n, lastPage(m))
		}
		time.Sleep(time.Millisecond)
	}
}

// savedRegs decodes a state and returns its vCPU 0 registers.
func savedRegs(t *testing.T, blob []byte) vmm.Regs {
	t.Helper()
	s, err := decodeState(blob)
	if err != nil {
		t.Fatal(err)
	}
	return s.VCPUs[0].State.Regs
}

func copyMachineRAM(t *testing.T, dst, src *Machine) {
	t.Helper()
	for _, r := range src.VM.Memory.Regions() {
		from, err := src.VM.Memory.Slice(r.Start, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dst.VM.Memory.WriteAt(from, int64(r.Start)); err != nil {
			t.Fatal(err)
		}
	}
}

// A migration without the network: pause A, save, copy RAM, restore into a
// fresh B, run B. B continues A's loop, and a device register written on A
// (the UART scratch register) reads back on B.
func TestMachineStateMovesARunningGuest(t *testing.T) {
	a := newCountingMachine(t, true)
	a.VM.PIO.Write(COM1Port+7, []byte{0x5a}) // UART SCR
	a.VM.PIO.Write(COM1Port+3, []byte{0x1b}) // UART LCR: 8 bits, even parity
	stopA := running(t, a)
	defer stopA()
	waitPasses(t, a, 3)
	if _, err := a.SaveState(); err == nil {
		t.Fatal("SaveState of a running machine succeeded")
	}
	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	blob, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("machine state: %d bytes, saved in %v", len(blob), time.Since(start))
	regs := savedRegs(t, blob)
	if err := testguest.CheckCounter(a.VM.Memory, regs); err != nil {
		t.Fatalf("A at the save: %v", err)
	}

	b := newCountingMachine(t, false)
	copyMachineRAM(t, b, a)
	start = time.Now()
	if err := b.RestoreState(blob); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored in %v", time.Since(start))
	for off, want := range map[uint64]byte{7: 0x5a, 3: 0x1b} {
		got := []byte{0}
		b.VM.PIO.Read(COM1Port+off, got)
		if got[0] != want {
			t.Errorf("B's UART register %d reads %#x, want %#x as on A", off, got[0], want)
		}
	}
	if err := b.RestoreState(blob); err == nil || !strings.Contains(err.Error(), "fresh") {
		t.Errorf("second RestoreState: %v, want a 'restore into a fresh one' error", err)
	}
	if err := b.LoadLinux(nil, "", nil); err == nil || !strings.Contains(err.Error(), "restored") {
		t.Errorf("LoadLinux after RestoreState: %v, want refused", err)
	}
	after, err := b.SaveState() // B has not run: its state is A's
	if err != nil {
		t.Fatal(err)
	}
	if got := savedRegs(t, after); got != regs {
		t.Errorf("B's registers after restore %+v, want A's %+v", got, regs)
	}

	stopB := running(t, b)
	defer stopB()
	waitPasses(t, b, regs.RAX+3)
	if err := b.Pause(); err != nil {
		t.Fatal(err)
	}
	blobB, err := b.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	regsB := savedRegs(t, blobB)
	if regsB.RAX < regs.RAX+3 {
		t.Errorf("B's pass counter %d, want at least %d", regsB.RAX, regs.RAX+3)
	}
	if err := testguest.CheckCounter(b.VM.Memory, regsB); err != nil {
		t.Errorf("B after running on: %v", err)
	}
}

// editState decodes a valid blob, applies edit and encodes it again.
func editState(t testing.TB, blob []byte, edit func(s *savedMachine)) []byte {
	var s savedMachine
	if err := json.Unmarshal(blob, &s); err != nil {
		t.Fatal(err)
	}
	edit(&s)
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// missingFeature returns a leaf-7 EBX bit this host's KVM does not offer.
func missingFeature(t *testing.T, m *Machine) uint32 {
	supported, err := m.kvm.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	have, _ := findLeaf(supported, 7, 0)
	for bit := 0; bit < 32; bit++ {
		if have.EBX&(1<<bit) == 0 {
			return 1 << bit
		}
	}
	t.Skip("this host offers every leaf-7 EBX feature")
	return 0
}

// Bad states are refused with an error that names the problem, before
// anything changes: after all of them, the same destination still takes
// the good state.
func TestRestoreRejectsBadStates(t *testing.T) {
	src := newCountingMachine(t, true)
	good, err := src.SaveState() // not started: a valid state all the same
	if err != nil {
		t.Fatal(err)
	}
	dst := newCountingMachine(t, false)
	noFeature := missingFeature(t, dst)
	edit := func(f func(s *savedMachine)) []byte { return editState(t, good, f) }
	for _, c := range []struct {
		name string
		blob []byte
		want string
	}{
		{"empty", nil, "not valid"},
		{"not JSON", []byte("hello"), "not valid"},
		{"truncated", good[:len(good)/2], "not valid"},
		{"trailing data", append(append([]byte{}, good...), "{}"...), "data after the end"},
		{"too large", make([]byte, maxStateBytes+1), "more than"},
		{"unknown field", bytes.Replace(good, []byte(`{"Magic"`), []byte(`{"Extra":1,"Magic"`), 1), "unknown field"},
		{"wrong magic", edit(func(s *savedMachine) { s.Magic = "QEVM" }), "not a govmm machine state"},
		{"newer format", edit(func(s *savedMachine) { s.Version = StateFormatVersion + 1 }), fmt.Sprintf("format version %d", StateFormatVersion+1)},
		{"virtio without kind", edit(func(s *savedMachine) { s.Virtio = []virtioState{{}} }), "virtio slot 0 names no device kind"},
		{"virtio without factory", edit(func(s *savedMachine) { s.Virtio = []virtioState{{Device: DeviceSpec{Kind: "blk", Spec: "x.img"}}} }), "no way to build them"},
		{"other memory size", edit(func(s *savedMachine) { s.Memory[0].Size *= 2 }), "same --mem"},
		{"no memory", edit(func(s *savedMachine) { s.Memory = nil }), "0 memory regions"},
		{"no vCPUs", edit(func(s *savedMachine) { s.VCPUs = nil }), "0 vCPUs"},
		{"two vCPUs", edit(func(s *savedMachine) {
			v := s.VCPUs[0]
			v.ID = 1
			s.VCPUs = append(s.VCPUs, v)
		}), "same --cpus"},
		{"vCPU id", edit(func(s *savedMachine) { s.VCPUs[0].ID = 7 }), "has id 7"},
		{"no CPUID", edit(func(s *savedMachine) { s.VCPUs[0].CPUID = nil }), "0 CPUID entries"},
		{"CPU feature missing here", edit(func(s *savedMachine) {
			for i, e := range s.VCPUs[0].CPUID {
				if e.Function == 7 && e.Index == 0 {
					s.VCPUs[0].CPUID[i].EBX |= noFeature
				}
			}
		}), "lacks features the guest was booted with"},
		{"page tables outside RAM", edit(func(s *savedMachine) {
			s.VCPUs[0].State.Sregs.CR0 |= 1<<31 | 1 // PG, PE
			s.VCPUs[0].State.Sregs.CR3 = 0x1017ac000
		}), "CR3 0x1017ac000 does not point into guest RAM"},
		{"short LAPIC", edit(func(s *savedMachine) { s.VCPUs[0].State.LAPIC = s.VCPUs[0].State.LAPIC[:10] }), "LAPIC state is 10 bytes"},
		{"duplicate MSR", edit(func(s *savedMachine) {
			s.VCPUs[0].State.MSRs = append(s.VCPUs[0].State.MSRs, s.VCPUs[0].State.MSRs[0])
		}), "appears twice"},
		{"PIT mode", edit(func(s *savedMachine) { s.VM.PIT.Channels[0].Mode = 9 }), "PIT channel 0"},
		{"short IOAPIC", edit(func(s *savedMachine) { s.VM.IOAPIC = s.VM.IOAPIC[:3] }), "IOAPIC state is 3 bytes"},
		{"unknown device", edit(func(s *savedMachine) {
			s.Devices = append(s.Devices, Section{Name: "virtio-net", Version: 1, Data: json.RawMessage("{}")})
		}), `device "virtio-net", which this machine does not have`},
		{"missing device", edit(func(s *savedMachine) { s.Devices = s.Devices[:len(s.Devices)-1] }), `no section for device "pvpanic"`},
		{"repeated device", edit(func(s *savedMachine) { s.Devices = append(s.Devices, s.Devices[0]) }), "empty or repeated"},
		{"newer device", edit(func(s *savedMachine) { s.Devices[0].Version = 2 }), `"serial/com1" state is version 2; this govmm reads versions 1-1`},
	} {
		err := dst.RestoreState(c.blob)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: RestoreState = %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if err := dst.RestoreState(good); err != nil {
		t.Fatalf("the good state, after the bad ones: %v", err)
	}
}

// Device data is checked by the device itself, after the vCPUs were
// restored; the machine is then unusable, but the error names the device
// and the value.
func TestRestoreRejectsBadDeviceData(t *testing.T) {
	src := newCountingMachine(t, true)
	good, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, device, data, want string
	}{
		{"bad value", "acpi-pm", `{"SleepType":9,"WakeStatus":false}`, `device "acpi-pm"`},
		{"unknown field", "pvpanic", `{"Reported":0,"Bogus":1}`, "unknown field"},
		{"wrong type", "serial/com1", `{"IER":"x"}`, `device "serial/com1"`},
	} {
		blob := editState(t, good, func(s *savedMachine) {
			for i := range s.Devices {
				if s.Devices[i].Name == c.device {
					s.Devices[i].Data = json.RawMessage(c.data)
				}
			}
		})
		dst := newCountingMachine(t, false)
		err := dst.RestoreState(blob)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: RestoreState = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

func TestCheckCPUIDNamesMissingFeatures(t *testing.T) {
	supported := []vmm.CPUIDEntry{
		{Function: 1, ECX: 1 << 28},           // AVX
		{Function: 7, Index: 0, EBX: 1 << 3},  // BMI1
		{Function: 0x40000001, EAX: 1<<3 | 1}, // kvmclock
	}
	guest := []vmm.CPUIDEntry{
		{Function: 1, ECX: 1<<28 | bitHypervisor | bitOSXSAVE | bitTSCDeadline},
		{Function: 7, Index: 0, EBX: 1<<3 | 1<<5}, // + AVX2
		{Function: 0x40000001, EAX: 1 << 3},
	}
	err := CheckCPUID(guest, supported, true)
	if err == nil || !strings.Contains(err.Error(), "CPUID 0x7.0 EBX bit 5 (AVX2)") {
		t.Fatalf("CheckCPUID = %v, want AVX2 named", err)
	}
	if strings.Contains(err.Error(), "bit 31") || strings.Contains(err.Error(), "bit 27") || strings.Contains(err.Error(), "bit 24") {
		t.Errorf("CheckCPUID blamed a VM-defined bit: %v", err)
	}
	if err := CheckCPUID(guest, supported, false); err == nil || !strings.Contains(err.Error(), "EBX bit 5") || !strings.Contains(err.Error(), "ECX bit 24") {
		t.Errorf("without TSC-deadline support: %v, want bits 5 and 24 named", err)
	}
	guest[1].EBX = 1 << 3
	if err := CheckCPUID(guest, supported, true); err != nil {
		t.Errorf("compatible CPUID refused: %v", err)
	}
}

// sampleState is a structurally valid state built without KVM, the seed
// of the fuzz target.
func sampleState() []byte {
	s := savedMachine{
		Magic: stateMagic, Version: StateFormatVersion,
		Memory: []savedRegion{{0, stateTestRAM}},
		VCPUs: []savedVCPU{{ID: 0, CPUID: []vmm.CPUIDEntry{{Function: 1, EAX: 0x800f12}},
			State: vmm.CPUState{
				LAPIC: make([]byte, vmm.LAPICSize), XSAVE: make([]byte, vmm.XSAVESize),
				MSRs: []vmm.MSR{{Index: 0x10, Data: 12345}},
				XCRs: []vmm.XCR{{XCR: 0, Value: 3}},
			}}},
		VM: vmm.VMState{PICMaster: make([]byte, vmm.IRQChipSize), PICSlave: make([]byte, vmm.IRQChipSize),
			IOAPIC: make([]byte, vmm.IRQChipSize)},
		Devices: []Section{{Name: "pvpanic", Version: 1, Data: json.RawMessage(`{"Reported":0}`)}},
	}
	b, _ := json.Marshal(s)
	return b
}

// The decoder sees hostile bytes: it must never panic, and what it accepts
// must survive a round trip unchanged.
func FuzzDecodeState(f *testing.F) {
	good := sampleState()
	f.Add(good)
	f.Add(good[:len(good)/3])
	f.Add([]byte(`{"Magic":"govmm machine state","Version":1}`))
	f.Add([]byte(`{"Magic":"govmm machine state","Version":1,"Memory":[{"Start":0,"Size":1}],"VCPUs":[{"ID":0}]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add(bytes.Replace(good, []byte(`"LAPIC":"`), []byte(`"LAPIC":"AAAA`), 1))
	f.Fuzz(func(t *testing.T, blob []byte) {
		s, err := decodeState(blob)
		if err != nil {
			if s != nil {
				t.Fatal("decodeState returned a state with an error")
			}
			return
		}
		again, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("re-encoding an accepted state: %v", err)
		}
		s2, err := decodeState(again)
		if err != nil {
			t.Fatalf("an accepted state does not decode again: %v", err)
		}
		third, _ := json.Marshal(s2)
		if !bytes.Equal(again, third) {
			t.Fatal("an accepted state changes on a round trip")
		}
	})
}

func TestSampleStateDecodes(t *testing.T) {
	if _, err := decodeState(sampleState()); err != nil {
		t.Fatalf("the fuzz seed is not a valid state: %v", err)
	}
}
