package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"govmm/boot"
	"govmm/cmd/govmm/console"
	"govmm/guest"
	"govmm/vmm/control"
	"govmm/vmm/machine"
)

// DefaultCmdline is what every guest gets before the user's --cmdline:
//   - console=ttyS0: the kernel's console is the 16550A at 0x3f8;
//   - reboot=acpi: reboot through the FADT reset register. Without it, a
//     hardware-reduced ACPI platform makes Linux reboot through EFI, then
//     the BIOS (arch/x86/kernel/reboot.c reboot_init, efi_reboot_required),
//     and a VMM without firmware never sees the request: the vCPU jumps
//     into the empty reset vector and spins;
//   - panic=-1: a panic before pvpanic is loaded reboots at once, which ends
//     govmm, instead of spinning forever;
//   - pci=off: there is no PCI host bridge yet, so do not probe for one.
const DefaultCmdline = "console=ttyS0 reboot=acpi panic=-1 pci=off"

type runOptions struct {
	Kernel    string
	Memory    uint64
	CPUs      int
	Initrd    string
	Cmdline   string
	Modules   string
	Busybox   string
	KVMDevice string
	TraceIO   string
	API       string
	Disks     []string // --disk specs, in order: vda, vdb, ...
	Nets      []string // --net specs, in order: eth0, eth1, ...
}

// run is `govmm run`, the boot sequence from a file name to a guest shell.
// Each step is one call; read them in order.
func run(o runOptions) error {
	// 1. Read and check the kernel before touching KVM, so a wrong path or
	//    a broken file is reported as such.
	kernel, err := boot.LoadKernel(o.Kernel)
	if err != nil {
		return err
	}

	// 2. The machine: VM, RAM, interrupt controllers, devices, vCPUs. It
	//    comes before the initramfs so that a host without usable KVM is
	//    told so at once.
	m, err := newMachine(o, kernel)
	if err != nil {
		return err
	}
	defer m.Close()

	// 2b. Its virtio devices: a disk for each --disk, a NIC for each --net.
	if err := plugDevices(m, o.Disks, o.Nets, deviceFactory(logToTerminal, false)); err != nil {
		return err
	}

	// 3. The initramfs: the user's, or govmm's default one built now.
	//    (boot.Load checks that kernel and initrd fit in --mem.)
	initrd, err := loadInitrd(o, kernel)
	if err != nil {
		return err
	}

	// 4. What firmware and a boot loader would do: ACPI tables, kernel,
	//    initrd, command line, and the boot vCPU at the 64-bit entry point.
	cmdline := strings.TrimSpace(DefaultCmdline + " " + o.Cmdline)
	if err := m.LoadLinux(kernel, cmdline, initrd); err != nil {
		return err
	}

	// 5. Attach the terminal and the control socket, run until the guest
	//    powers off, reboots, panics, crashes or migrates away.
	return attach(m, o.API, kernel.ReleaseName(), m.Run)
}

// attach connects a machine to the user: the terminal in raw mode with the
// Ctrl-A keys, the control API on a unix socket, and host signals. wait
// runs (or waits for) the machine; its exit becomes govmm's exit status.
func attach(m *machine.Machine, apiPath, kernel string, wait func() machine.Exit) error {
	vm := &liveVM{m: m, kernel: kernel}
	if apiPath == "" {
		apiPath = defaultAPIPath()
	}
	api, err := control.Listen(apiPath, vm)
	if err != nil {
		return err
	}
	defer api.Close()
	fmt.Fprintf(os.Stderr, "govmm: control socket %s (Ctrl-A h for console keys)\n", apiPath)

	restore, err := console.MakeRaw(os.Stdin)
	if err != nil {
		return err
	}
	defer restore()
	con := console.New(os.Stdin, os.Stderr, m.Serial.InputWriter(), func() { m.Stop("Ctrl-A x") })
	con.Bind(console.Command{Key: 'm', Help: "migrate the VM to another govmm (asks for host:port)",
		Prompt: "migrate to (host:port of govmm receive): ",
		RunLine: func(to string) {
			go migrateFromConsole(vm, to)
		}})
	go con.Run()
	stopOnSignals(m)

	exit := wait()
	restore()
	if exit.Reason == machine.ExitMigrated {
		// Let the migrate client read its final answer before we go.
		select {
		case <-api.MigrationFinished():
		case <-time.After(5 * time.Second):
		}
		fmt.Fprintln(os.Stderr, "govmm: the guest now runs on the destination; exiting")
	}
	return report(exit)
}

// newMachine builds the machine `govmm run` asked for.
func newMachine(o runOptions, kernel *boot.Kernel) (*machine.Machine, error) {
	if err := checkMemory(o.Memory, kernel, 0); err != nil {
		return nil, err
	}
	cfg := machine.Config{
		MemoryBytes: o.Memory,
		NumVCPUs:    o.CPUs,
		SerialOut:   os.Stdout,
		KVMDevice:   o.KVMDevice,
		Log:         logToTerminal,
	}
	if o.TraceIO != "" {
		f, err := os.Create(o.TraceIO) // closed when govmm exits
		if err != nil {
			return nil, fmt.Errorf("--trace-io: %w", err)
		}
		cfg.TraceIO = f
	}
	return machine.New(cfg)
}

// checkMemory refuses a --mem the kernel cannot boot in, naming the least
// that would do.
func checkMemory(mem uint64, k *boot.Kernel, initrdSize int) error {
	if need := boot.MinMemory(k, initrdSize); mem < need {
		return fmt.Errorf("--mem %dM is too small for this kernel and initrd: give at least --mem %dM", mem>>20, (need+(1<<20)-1)>>20)
	}
	return nil
}

// loadInitrd reads --initrd or builds the default initramfs whose /init is
// govmm itself (package guest).
func loadInitrd(o runOptions, k *boot.Kernel) ([]byte, error) {
	if o.Initrd != "" {
		b, err := os.ReadFile(o.Initrd)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("initrd %s: no such file", o.Initrd)
			}
			return nil, fmt.Errorf("initrd: %w", err)
		}
		return b, nil
	}
	archive, warnings, err := guest.BuildInitramfs(guest.InitramfsOptions{
		KernelVersion: k.Version,
		ModulesDir:    o.Modules,
		BusyboxPath:   o.Busybox,
	})
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "govmm: warning: %s\n", w)
	}
	if err != nil {
		return nil, fmt.Errorf("building the default initramfs: %w", err)
	}
	return archive, nil
}

// stopOnSignals ends the VM cleanly when govmm is interrupted or killed
// politely, so the terminal is restored.
func stopOnSignals(m *machine.Machine) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGINT, unix.SIGTERM, unix.SIGHUP)
	go func() {
		s := <-ch
		m.Stop("signal " + s.String())
	}()
}

// report turns the machine's exit into govmm's exit status: 0 when the
// guest powered off or rebooted or the user quit, 2 with a crash report when
// the guest died.
func report(e machine.Exit) error {
	if e.Clean() {
		if e.Reason == machine.ExitReset {
			fmt.Fprintln(os.Stderr, "govmm: guest rebooted; govmm does not restart guests, run it again")
		}
		return nil
	}
	fmt.Fprint(os.Stderr, "\r\n"+e.CrashReport())
	return &exitError{code: 2, err: errors.New("")} // the report said it all
}
