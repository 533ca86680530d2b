package machine

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"govmm/boot"
	"govmm/boot/acpi"
	"govmm/devices/acpipm"
	"govmm/devices/i8042"
	"govmm/devices/pvpanic"
	"govmm/devices/serial"
	"govmm/vmm"
)

// Config describes the machine to build.
type Config struct {
	MemoryBytes uint64    // guest RAM
	NumVCPUs    int       // only 1 for now
	SerialOut   io.Writer // where the guest's console output goes
	KVMDevice   string    // default /dev/kvm
	TraceIO     io.Writer // if set, every port-I/O and MMIO access is logged here

	// Log receives device events worth a line on the terminal (a disk
	// server gone, a guest driver breaking the virtio rules); nil drops them.
	Log func(format string, args ...any)
	// Devices builds virtio devices from their specs on a migration
	// destination, which learns them from the source (virtio.go).
	Devices DeviceFactory
}

// Machine is a running PC: the KVM VM, its RAM, its devices and vCPUs.
type Machine struct {
	cfg Config
	kvm *vmm.KVM
	VM  *vmm.VM

	Serial  *serial.UART
	i8042   *i8042.Controller
	power   *acpipm.PM
	pvpanic *pvpanic.Device

	// origin says how the guest got here, once it has ("loaded a
	// kernel", "restored a saved state"): a machine is either booted or
	// restored, once. extraState holds AddState's sections (state.go).
	origin     string
	extraState []Stateful
	cpuid      [][]vmm.CPUIDEntry // per vCPU, the table given to KVM_SET_CPUID2
	virtio     []*virtioSlot      // plugged virtio devices, by slot (virtio.go)

	stopOnce sync.Once
	exitMu   sync.Mutex
	exit     Exit
}

// New builds the machine, in the order a PC comes to life: a VM, its RAM,
// the interrupt controllers and timer inside KVM, the devices on the buses,
// and finally the vCPUs, which need the irqchip to exist first.
func New(cfg Config) (*Machine, error) {
	if cfg.NumVCPUs != 1 {
		return nil, fmt.Errorf("--cpus %d: govmm runs one vCPU for now (SMP is a later issue)", cfg.NumVCPUs)
	}
	if cfg.KVMDevice == "" {
		cfg.KVMDevice = vmm.DefaultDevice
	}
	m := &Machine{cfg: cfg}
	steps := []struct {
		what string
		do   func() error
	}{
		{"opening KVM", m.openKVM},
		{"allocating guest memory", m.allocateMemory},
		{"creating interrupt controllers and timer", m.createIRQChipAndPIT},
		{"attaching devices", m.attachDevices},
		{"creating vCPUs", m.createVCPUs},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

func (m *Machine) openKVM() error {
	k, err := vmm.OpenKVM(m.cfg.KVMDevice)
	if err != nil {
		return err
	}
	m.kvm = k
	vm, err := k.CreateVM()
	if err != nil {
		return err
	}
	m.VM = vm
	// Intel VMX needs these pages for real-mode support; they live in the
	// MMIO hole just below the 4 GiB line, away from RAM and devices.
	if err := vm.SetIdentityMapAddr(IdentityMapAddr); err != nil {
		return err
	}
	return vm.SetTSSAddr(TSSAddr)
}

func (m *Machine) allocateMemory() error {
	mem, err := vmm.NewGuestMemory(RAMLayout(m.cfg.MemoryBytes))
	if err != nil {
		return err
	}
	return m.VM.SetMemory(mem)
}

func (m *Machine) createIRQChipAndPIT() error {
	if err := m.VM.CreateIRQChip(); err != nil {
		return err
	}
	return m.VM.CreatePIT()
}

// attachDevices places the board's devices on the buses. The addresses are
// the PC's traditional ones, which Linux probes without being told.
func (m *Machine) attachDevices() error {
	m.Serial = serial.New(m.cfg.SerialOut, m.VM.IRQ(COM1IRQ))
	m.i8042 = i8042.New(i8042.HandlerFunc(func() { m.stop(Exit{Reason: ExitReset, Detail: "reset through the i8042 keyboard controller"}) }))
	m.power = acpipm.New(acpipm.Funcs{
		OnPowerOff: func() { m.stop(Exit{Reason: ExitPowerOff, Detail: "ACPI S5 (poweroff)"}) },
		OnReset:    func() { m.stop(Exit{Reason: ExitReset, Detail: "ACPI reset register"}) },
	})
	m.pvpanic = pvpanic.New(pvpanic.Funcs{
		OnPanicked: func() { m.stop(Exit{Reason: ExitPanic, Detail: "the guest kernel reported a panic through pvpanic"}) },
	})
	pio := m.VM.PIO
	for _, d := range []struct {
		base, size uint64
		name       string
		dev        vmm.Device
	}{
		{COM1Port, serial.RegisterCount, "serial (COM1)", m.Serial},
		{i8042.DataPortAddr, 1, "i8042 data", m.i8042.Data()},
		{i8042.CommandPortAddr, 1, "i8042 command", m.i8042.Command()},
		{ACPIPMPort, acpipm.Size, "ACPI power management", m.power},
		{PVPanicPort, 1, "pvpanic", m.pvpanic},
	} {
		if err := pio.Register(d.base, d.size, d.name, d.dev); err != nil {
			return err
		}
	}
	if w := m.cfg.TraceIO; w != nil {
		var mu sync.Mutex
		trace := func(bus, dev string, addr uint64, data []byte, write bool) {
			dir := "read "
			if write {
				dir = "write"
			}
			if dev == "" {
				dev = "(no device)"
			}
			mu.Lock()
			fmt.Fprintf(w, "govmm: %s %s %#x % x  %s\n", bus, dir, addr, data, dev)
			mu.Unlock()
		}
		m.VM.PIO.SetTracer(trace)
		m.VM.MMIO.SetTracer(trace)
	}
	return nil
}

func (m *Machine) createVCPUs() error {
	supported, err := m.kvm.SupportedCPUID()
	if err != nil {
		return err
	}
	for id := 0; id < m.cfg.NumVCPUs; id++ {
		v, err := m.VM.CreateVCPU(id)
		if err != nil {
			return err
		}
		tscKHz, _ := v.TSCKHz() // 0 if unknown: the timing leaf is then omitted
		cpuid := vmm.GuestCPUID(supported, vmm.CPUIDConfig{
			VCPUID: id, TSCKHz: tscKHz,
			TSCDeadline: m.kvm.CheckExtension(vmm.CapTSCDeadlineTimer) > 0,
		})
		if err := v.SetCPUID(cpuid); err != nil {
			return err
		}
		m.cpuid = append(m.cpuid, cpuid)
		if err := v.SetMSRs(vmm.BootMSRs()); err != nil {
			return err
		}
		if err := v.SetFPU(vmm.BootFPU()); err != nil {
			return err
		}
		if xcr0, ok := vmm.BootXCR0(cpuid); ok && m.kvm.CheckExtension(vmm.CapXCRs) > 0 {
			if err := v.SetXCR0(xcr0); err != nil {
				return err
			}
		}
		if err := v.SetupVirtualWire(); err != nil {
			return err
		}
	}
	return nil
}

// LoadLinux writes the ACPI tables and the kernel into RAM and points the
// boot vCPU at the kernel's 64-bit entry point.
func (m *Machine) LoadLinux(k *boot.Kernel, cmdline string, initrd []byte) error {
	if m.origin != "" {
		return fmt.Errorf("loading Linux: this machine already %s", m.origin)
	}
	m.origin = "loaded a kernel"
	tables, err := acpi.Build(acpi.Config{
		Base:        uint64(boot.ACPIAddr),
		NumVCPUs:    m.cfg.NumVCPUs,
		PVPanicPort: PVPanicPort,
		PMBase:      ACPIPMPort,
		VirtioMMIO:  m.acpiVirtio(),
	})
	if err != nil {
		return fmt.Errorf("building ACPI tables: %w", err)
	}
	if _, err := m.VM.Memory.WriteAt(tables.Data, int64(tables.Base)); err != nil {
		return fmt.Errorf("writing ACPI tables: %w", err)
	}
	if _, err := boot.Load(m.VM.Memory, k, boot.Config{
		Cmdline:  cmdline,
		Initrd:   initrd,
		ACPIRSDP: vmm.GPA(tables.RSDP),
	}); err != nil {
		return err
	}
	return boot.SetupBootVCPU(m.VM.VCPUs()[0])
}

// Run starts every vCPU on its own goroutine and blocks until the machine
// stops: the guest powered off, reset, panicked or crashed, or Stop was
// called. The first reason wins.
func (m *Machine) Run() Exit {
	m.resumeDevices() // a restored machine's devices wait for this
	vcpus := m.VM.VCPUs()
	var wg sync.WaitGroup
	for _, v := range vcpus {
		wg.Add(1)
		go func(v *vmm.VCPU) {
			defer wg.Done()
			info := v.Run()
			m.vcpuStopped(v, info)
		}(v)
	}
	wg.Wait()
	m.exitMu.Lock()
	defer m.exitMu.Unlock()
	for _, v := range vcpus {
		if info := v.Wait(); info != nil {
			m.exit.CPUs = append(m.exit.CPUs, info.CPU)
		}
	}
	return m.exit
}

// vcpuStopped turns a vCPU's own stop (a triple fault, an emulation
// failure) into the machine's exit, and stops the other vCPUs.
func (m *Machine) vcpuStopped(v *vmm.VCPU, info *vmm.StopInfo) {
	e := Exit{VCPU: v.ID, Detail: info.Detail}
	switch info.Reason {
	case vmm.StopRequested:
		m.stop(Exit{Reason: ExitQuit}) // no-op if a device already gave a reason
		return
	case vmm.StopTripleFault:
		e.Reason = ExitCrash
		e.Detail = "triple fault (KVM_EXIT_SHUTDOWN)"
		if c := info.CPU; c.Valid && c.Regs.RIP == 0xfff0 && c.Sregs.CS.Selector == 0xf000 {
			// AMD's KVM re-initialises the vCPU on a shutdown intercept
			// (svm.c shutdown_interception: "VMCB is undefined after a
			// SHUTDOWN intercept"), so the registers below are the reset
			// state, not the faulting one.
			e.Detail += "; the registers below are the CPU's reset state (KVM on AMD re-initialises a vCPU that triple-faults); the guest's console shows what it was doing"
		}
	case vmm.StopSystemEvent:
		switch info.Event {
		case vmm.SystemEventShutdown:
			e.Reason = ExitPowerOff
		case vmm.SystemEventReset:
			e.Reason = ExitReset
		default:
			e.Reason = ExitCrash
		}
	default:
		e.Reason = ExitCrash
		e.Detail = info.Reason.String() + ": " + info.Detail
	}
	m.stop(e)
}

// stop records why the machine is stopping (first caller wins) and asks
// every vCPU to stop. Device callbacks call it from a vCPU thread, so it
// must not wait for vCPUs.
func (m *Machine) stop(e Exit) {
	m.stopOnce.Do(func() {
		m.exitMu.Lock()
		m.exit = e
		m.exitMu.Unlock()
		for _, v := range m.VM.VCPUs() {
			v.Stop()
		}
	})
}

// Stop ends the machine from the host side (Ctrl-A x, a signal).
func (m *Machine) Stop(detail string) { m.stop(Exit{Reason: ExitQuit, Detail: detail}) }

// Pause parks every vCPU at an instruction boundary, then quiesces the
// devices: once it returns, neither the guest nor a device goroutine
// changes RAM or device state until Resume.
func (m *Machine) Pause() error {
	var errs []error
	for _, v := range m.VM.VCPUs() {
		if err := v.Pause(); err != nil {
			errs = append(errs, err)
		}
	}
	m.pauseDevices()
	return errors.Join(errs...)
}

// Resume restarts the devices, then the paused vCPUs.
func (m *Machine) Resume() {
	m.resumeDevices()
	for _, v := range m.VM.VCPUs() {
		v.Resume()
	}
}

// Registers reports where every vCPU is: it pauses the machine (unless it
// is paused already), takes each vCPU's registers and the code at RIP, and
// resumes it. One report per vCPU, in the crash report's format.
func (m *Machine) Registers(alreadyPaused bool) ([]string, error) {
	if !alreadyPaused {
		if err := m.Pause(); err != nil {
			return nil, err
		}
		defer m.Resume()
	}
	var out []string
	for _, v := range m.VM.VCPUs() {
		s := v.Snapshot()
		out = append(out, fmt.Sprintf("vCPU %d:\n%s", v.ID, s.Report()))
	}
	return out, nil
}

// logf passes a device event to Config.Log.
func (m *Machine) logf(format string, args ...any) {
	if m.cfg.Log != nil {
		m.cfg.Log(format, args...)
	}
}

// Close releases the VM, its memory and the devices' goroutines.
func (m *Machine) Close() {
	if m.VM != nil {
		m.closeVirtio()
	}
	if m.Serial != nil {
		m.Serial.Close()
	}
	if m.VM != nil {
		mem := m.VM.Memory
		m.VM.Close()
		if mem != nil {
			mem.Close()
		}
	}
	if m.kvm != nil {
		m.kvm.Close()
	}
}
