package machine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"govmm/devices/acpipm"
	"govmm/devices/i8042"
	"govmm/devices/pvpanic"
	"govmm/devices/serial"
	"govmm/vmm"
)

// Saving and restoring a whole machine, minus its RAM: what a live
// migration sends once the guest is paused (RAM goes page by page, before
// and after), and what a snapshot would store next to a RAM image.
//
// The encoding is JSON, for three reasons:
//   - The blob arrives from another host and is treated as hostile.
//     encoding/json is a plain, bounded parser; encoding/gob says of itself
//     that it "is not designed to be hardened against adversarial inputs"
//     and may consume significant resources on them.
//   - It is self-describing: every field is named, so `jq` shows a student
//     (or an engineer debugging a failed migration) exactly what moved, and
//     a field that is missing or unknown is an error instead of a silent
//     zero (decoding is strict: DisallowUnknownFields).
//   - It is small enough not to matter: about 20 KiB per vCPU (the XSAVE
//     area and LAPIC page are base64), against megabytes of RAM.
//
// Layout, versioned QEMU-style (migration/savevm.c): a header with a magic
// string and the format version; the memory layout; per vCPU its CPUID
// table and vmm.CPUState; the vmm.VMState; then one section per device,
// each with a name and the version its writer used. A reader accepts a
// section whose version lies between the oldest it can read and the one
// it writes, and refuses anything else by name.

// stateMagic opens every machine state; it tells a govmm state from any
// other JSON.
const stateMagic = "govmm machine state"

// StateFormatVersion is the version of the envelope and of the vmm state
// it carries (CPUState, VMState). Bump it when either changes
// incompatibly; devices have their own section versions.
const StateFormatVersion = 2 // 2: virtio devices

// Limits on a decoded state. UNTRUSTED: they bound what a hostile blob can
// make the decoder allocate or the restore loop do.
const (
	maxStateBytes    = 16 << 20
	maxStateVCPUs    = 256
	maxStateRegions  = 64
	maxStateSections = 256
)

// Stateful is a device (or anything else) whose state travels with the
// machine, as a named, versioned section. The machine core knows devices
// only through this interface.
type Stateful interface {
	// StateName names the section, unique in the machine ("serial/com1").
	StateName() string
	// StateVersion is the version SaveState writes.
	StateVersion() int
	// MinStateVersion is the oldest version RestoreState accepts.
	MinStateVersion() int
	// SaveState encodes the current state.
	SaveState() ([]byte, error)
	// RestoreState decodes and applies a state of the given version, which
	// the machine has checked lies in [MinStateVersion, StateVersion]. It
	// must validate the data and leave the device unchanged on error.
	RestoreState(version int, data []byte) error
}

// savedMachine is the encoded form. Field names are the JSON keys.
type savedMachine struct {
	Magic   string
	Version int
	Memory  []savedRegion
	VCPUs   []savedVCPU
	VM      vmm.VMState
	Devices []Section
	Virtio  []virtioState // by slot; each names how to rebuild its device
}

type savedRegion struct {
	Start vmm.GPA
	Size  uint64
}

type savedVCPU struct {
	ID    int
	CPUID []vmm.CPUIDEntry // what the guest was shown; the destination shows the same
	State vmm.CPUState
}

// Section is one device's saved state.
type Section struct {
	Name    string
	Version int
	Data    json.RawMessage
}

// deviceState adapts a device's SaveState() S / RestoreState(S) error pair
// (the convention of every package under devices/) to Stateful, with S
// encoded as JSON. The devices stay unaware of sections and versions.
type deviceState[S any] struct {
	name             string
	version, minimum int
	save             func() S
	restore          func(S) error
}

func (d deviceState[S]) StateName() string          { return d.name }
func (d deviceState[S]) StateVersion() int          { return d.version }
func (d deviceState[S]) MinStateVersion() int       { return d.minimum }
func (d deviceState[S]) SaveState() ([]byte, error) { return json.Marshal(d.save()) }
func (d deviceState[S]) RestoreState(version int, data []byte) error {
	var s S
	if err := decodeStrict(data, &s); err != nil {
		return err
	}
	return d.restore(s)
}

// stateSections lists every section of this machine in a fixed order:
// the board's devices, then those added with AddState.
func (m *Machine) stateSections() []Stateful {
	list := []Stateful{
		deviceState[serial.State]{"serial/com1", 1, 1, m.Serial.SaveState, m.Serial.RestoreState},
		deviceState[i8042.State]{"i8042", 1, 1, m.i8042.SaveState, m.i8042.RestoreState},
		deviceState[acpipm.State]{"acpi-pm", 1, 1, m.power.SaveState, m.power.RestoreState},
		deviceState[pvpanic.State]{"pvpanic", 1, 1, m.pvpanic.SaveState, m.pvpanic.RestoreState},
	}
	return append(list, m.extraState...)
}

// AddState registers another section (a device added after New). Names
// must be unique.
func (m *Machine) AddState(s Stateful) error {
	for _, o := range m.stateSections() {
		if o.StateName() == s.StateName() {
			return fmt.Errorf("machine state: a section named %q already exists", s.StateName())
		}
	}
	m.extraState = append(m.extraState, s)
	return nil
}

// SaveState encodes the machine's vCPU, KVM and device state; guest RAM is
// not included. Every vCPU must be paused (Pause), or not yet started.
func (m *Machine) SaveState() ([]byte, error) {
	s := savedMachine{Magic: stateMagic, Version: StateFormatVersion}
	for _, r := range m.VM.Memory.Regions() {
		s.Memory = append(s.Memory, savedRegion{r.Start, r.Size})
	}
	for _, v := range m.VM.VCPUs() {
		st, err := v.SaveState()
		if err != nil {
			return nil, err
		}
		// The table govmm gave KVM, not KVM_GET_CPUID2's answer: that is
		// what the guest was told, and what the destination checks against
		// its KVM_GET_SUPPORTED_CPUID. (PVM answers KVM_GET_CPUID2 with
		// host bits it never offered as supported.)
		if err := checkPageTableRoot(v.ID, st.Sregs, m.VM.Memory); err != nil {
			return nil, err
		}
		s.VCPUs = append(s.VCPUs, savedVCPU{ID: v.ID, CPUID: m.cpuid[v.ID], State: st})
	}
	var err error
	if s.VM, err = m.VM.SaveState(); err != nil {
		return nil, err
	}
	for _, d := range m.stateSections() {
		data, err := d.SaveState()
		if err != nil {
			return nil, fmt.Errorf("saving %s: %w", d.StateName(), err)
		}
		s.Devices = append(s.Devices, Section{Name: d.StateName(), Version: d.StateVersion(), Data: data})
	}
	if s.Virtio, err = m.saveVirtio(); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the end of the JSON value")
	}
	return nil
}

// decodeState parses and checks a machine state without touching any
// machine: structure, sizes, counts and every vCPU and VM value. What it
// cannot check alone (does this layout, this CPU, this device list fit
// the destination?) RestoreState checks next.
//
// UNTRUSTED: blob comes from the network or a file.
func decodeState(blob []byte) (*savedMachine, error) {
	if len(blob) > maxStateBytes {
		return nil, fmt.Errorf("machine state is %d bytes, more than the %d a govmm state can be", len(blob), maxStateBytes)
	}
	var s savedMachine
	if err := decodeStrict(blob, &s); err != nil {
		return nil, fmt.Errorf("machine state is not valid: %w", err)
	}
	if s.Magic != stateMagic {
		return nil, fmt.Errorf("not a govmm machine state (magic %q)", s.Magic)
	}
	if s.Version != StateFormatVersion {
		return nil, fmt.Errorf("machine state format version %d; this govmm reads version %d", s.Version, StateFormatVersion)
	}
	if len(s.Memory) == 0 || len(s.Memory) > maxStateRegions {
		return nil, fmt.Errorf("machine state has %d memory regions, want 1-%d", len(s.Memory), maxStateRegions)
	}
	if len(s.VCPUs) == 0 || len(s.VCPUs) > maxStateVCPUs {
		return nil, fmt.Errorf("machine state has %d vCPUs, want 1-%d", len(s.VCPUs), maxStateVCPUs)
	}
	for i, v := range s.VCPUs {
		if v.ID != i {
			return nil, fmt.Errorf("machine state: vCPU %d has id %d", i, v.ID)
		}
		if len(v.CPUID) == 0 || len(v.CPUID) > 256 {
			return nil, fmt.Errorf("machine state: vCPU %d has %d CPUID entries, want 1-256", i, len(v.CPUID))
		}
		if err := v.State.Validate(); err != nil {
			return nil, fmt.Errorf("machine state: vCPU %d: %w", i, err)
		}
	}
	if err := s.VM.Validate(); err != nil {
		return nil, fmt.Errorf("machine state: %w", err)
	}
	if len(s.Devices) > maxStateSections {
		return nil, fmt.Errorf("machine state has %d device sections, at most %d", len(s.Devices), maxStateSections)
	}
	seen := map[string]bool{}
	for _, d := range s.Devices {
		if d.Name == "" || seen[d.Name] {
			return nil, fmt.Errorf("machine state: device section name %q is empty or repeated", d.Name)
		}
		seen[d.Name] = true
	}
	if len(s.Virtio) > MaxVirtioDevices {
		return nil, fmt.Errorf("machine state has %d virtio devices, the board has %d slots", len(s.Virtio), MaxVirtioDevices)
	}
	for i, v := range s.Virtio {
		if v.Device.Kind == "" {
			return nil, fmt.Errorf("machine state: virtio slot %d names no device kind", i)
		}
	}
	return &s, nil
}

// RestoreState loads a state made by SaveState into this machine, which
// must be freshly built by New with the same Config and must not have run
// or loaded a kernel: the destination of a migration calls New, receives
// RAM, then RestoreState instead of LoadLinux, then Run.
//
// Everything that can be checked is checked before the first change:
// format and values (decodeState), memory layout, vCPU count, CPU
// compatibility, and that every device section is known, in a version
// this govmm reads. If an error comes later (KVM refusing a value), the
// machine is half restored and must be closed.
//
// Order: CPUID, then each vCPU (vmm.VCPU.RestoreState documents the order
// inside a vCPU), then the VM-wide state (irqchips after the LAPICs, the
// kvmclock last), then the devices, whose state does not depend on KVM's.
func (m *Machine) RestoreState(blob []byte) error {
	if m.origin != "" {
		return fmt.Errorf("restoring machine state: this machine already %s; restore into a fresh one", m.origin)
	}
	vcpus := m.VM.VCPUs()
	for _, v := range vcpus {
		if v.State() != vmm.VCPUCreated {
			return fmt.Errorf("restoring machine state: vCPU %d has already run", v.ID)
		}
	}
	s, err := decodeState(blob)
	if err != nil {
		return err
	}
	if err := m.checkCompatible(s); err != nil {
		return err
	}
	if err := m.rebuildVirtio(s.Virtio); err != nil {
		return err
	}
	sections := m.stateSections()
	byName := map[string]Stateful{}
	for _, d := range sections {
		byName[d.StateName()] = d
	}
	for _, d := range s.Devices {
		dev := byName[d.Name]
		if dev == nil {
			return fmt.Errorf("machine state has a section for device %q, which this machine does not have", d.Name)
		}
		if d.Version < dev.MinStateVersion() || d.Version > dev.StateVersion() {
			return fmt.Errorf("device %q state is version %d; this govmm reads versions %d-%d",
				d.Name, d.Version, dev.MinStateVersion(), dev.StateVersion())
		}
	}
	for _, d := range sections {
		if !hasSection(s.Devices, d.StateName()) {
			return fmt.Errorf("machine state has no section for device %q", d.StateName())
		}
	}

	m.origin = "restored a saved state"
	for i, v := range vcpus {
		saved := s.VCPUs[i]
		if err := v.SetCPUID(saved.CPUID); err != nil {
			return fmt.Errorf("vCPU %d: %w", v.ID, err)
		}
		m.cpuid[i] = saved.CPUID
		if err := m.matchTSC(v, saved.CPUID); err != nil {
			return err
		}
		if err := v.RestoreState(saved.State); err != nil {
			return err
		}
	}
	if err := m.VM.RestoreState(s.VM); err != nil {
		return err
	}
	for _, d := range s.Devices {
		if err := byName[d.Name].RestoreState(d.Version, d.Data); err != nil {
			return fmt.Errorf("restoring device %q: %w", d.Name, err)
		}
	}
	return m.restoreVirtio(s.Virtio)
}

func hasSection(list []Section, name string) bool {
	for _, d := range list {
		if d.Name == name {
			return true
		}
	}
	return false
}

// checkCompatible checks that a decoded state fits this machine: same RAM
// layout, same number of vCPUs, and a CPU that has every feature the guest
// was shown.
func (m *Machine) checkCompatible(s *savedMachine) error {
	mine := m.VM.Memory.Regions()
	same := len(mine) == len(s.Memory)
	for i := 0; same && i < len(mine); i++ {
		same = mine[i].Start == s.Memory[i].Start && mine[i].Size == s.Memory[i].Size
	}
	if !same {
		var theirs, ours []string
		for _, r := range s.Memory {
			theirs = append(theirs, fmt.Sprintf("%#x+%#x", r.Start, r.Size))
		}
		for _, r := range mine {
			ours = append(ours, fmt.Sprintf("%#x+%#x", r.Start, r.Size))
		}
		return fmt.Errorf("machine state has memory %v, this machine %v: start it with the same --mem", theirs, ours)
	}
	if n := len(m.VM.VCPUs()); len(s.VCPUs) != n {
		return fmt.Errorf("machine state has %d vCPUs, this machine %d: start it with the same --cpus", len(s.VCPUs), n)
	}
	supported, err := m.kvm.SupportedCPUID()
	if err != nil {
		return err
	}
	for i, v := range s.VCPUs {
		if err := CheckCPUID(v.CPUID, supported, m.kvm.CheckExtension(vmm.CapTSCDeadlineTimer) > 0); err != nil {
			return fmt.Errorf("vCPU %d: %w", i, err)
		}
		if err := checkPageTableRoot(i, v.State.Sregs, m.VM.Memory); err != nil {
			return err
		}
	}
	return nil
}

// checkPageTableRoot refuses a vCPU with paging on whose CR3 does not point
// into guest RAM: its next TLB miss walks page tables that do not exist,
// and the guest hangs in a loop of nested page faults (KVM cannot emulate
// a page walk through MMIO) or triple-faults. The source checks before it
// sends a state it cannot mean, the destination before it restores one.
//
// UNTRUSTED on the destination: the state comes from the source.
func checkPageTableRoot(id int, sr vmm.Sregs, mem *vmm.GuestMemory) error {
	const cr0PG = 1 << 31
	if sr.CR0&cr0PG == 0 {
		return nil
	}
	// CR3 bits 51:12 hold the root's address (Intel SDM Vol. 3A §4.5;
	// with PAE the root is 32-byte aligned, and Slice checks the same).
	root := vmm.GPA(sr.CR3 & 0x000f_ffff_ffff_f000)
	if _, err := mem.Slice(root, 8); err != nil {
		return fmt.Errorf("vCPU %d: CR3 %#x does not point into guest RAM (paging is on): the page tables' root is not memory", id, sr.CR3)
	}
	return nil
}

// tscTolerancePPM is how far the destination's TSC frequency may be from
// the one the guest was told (CPUID 0x40000010) without scaling: NTP
// corrects up to 500 ppm, and two hosts of the same model calibrate a few
// ppm apart.
const tscTolerancePPM = 250

// matchTSC keeps the guest's TSC running at the frequency the guest was
// told. Without KVM_CAP_TSC_CONTROL, KVM runs the guest TSC at the host's
// rate, so a destination that differs more than the tolerance is refused:
// the guest would keep time wrongly. kvmclock would stay right (KVM
// recomputes its scale per host), but the guest may use the TSC directly.
func (m *Machine) matchTSC(v *vmm.VCPU, cpuid []vmm.CPUIDEntry) error {
	var want uint32
	for _, e := range cpuid {
		if e.Function == 0x40000010 {
			want = e.EAX
		}
	}
	have, err := v.TSCKHz()
	if want == 0 || err != nil {
		return nil // the guest was not told a frequency, or we cannot tell ours
	}
	diff := int64(have) - int64(want)
	if diff < 0 {
		diff = -diff
	}
	if diff*1_000_000 <= int64(want)*tscTolerancePPM {
		return nil
	}
	if m.kvm.CheckExtension(vmm.CapTSCControl) > 0 {
		return v.SetTSCKHz(want)
	}
	return fmt.Errorf("vCPU %d: the guest's TSC runs at %d kHz, this host's at %d kHz, and this KVM cannot scale it (no KVM_CAP_TSC_CONTROL)", v.ID, want, have)
}
