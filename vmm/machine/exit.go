package machine

import (
	"fmt"
	"strings"

	"govmm/vmm"
)

// ExitReason is why a machine stopped running.
type ExitReason int

const (
	ExitQuit     ExitReason = iota // the host asked (Ctrl-A x, a signal)
	ExitPowerOff                   // the guest powered off (ACPI S5)
	ExitReset                      // the guest asked for a reset (reboot)
	ExitPanic                      // the guest kernel panicked (pvpanic)
	ExitCrash                      // the vCPU could not go on: triple fault, emulation failure
	ExitMigrated                   // the guest was migrated and runs elsewhere now
)

func (r ExitReason) String() string {
	return [...]string{"stopped by the host", "guest powered off", "guest rebooted", "guest panicked", "guest crashed", "guest migrated"}[r]
}

// Exit is the outcome of Machine.Run.
type Exit struct {
	Reason ExitReason
	Detail string
	VCPU   int
	CPUs   []vmm.CPUSnapshot // every vCPU's state when it stopped
}

// Clean reports whether the guest ended the way a user wants: a poweroff,
// a reboot (govmm does not restart guests), or the user quitting.
func (e Exit) Clean() bool {
	return e.Reason == ExitQuit || e.Reason == ExitPowerOff || e.Reason == ExitReset || e.Reason == ExitMigrated
}

// CrashReport is what a person needs to start debugging a dead guest: why,
// and for each vCPU its registers and the instructions at RIP.
func (e Exit) CrashReport() string {
	var b strings.Builder
	fmt.Fprintf(&b, "govmm: %s: %s\n", e.Reason, e.Detail)
	for i, c := range e.CPUs {
		fmt.Fprintf(&b, "vCPU %d:\n%s", i, c.Report())
	}
	return b.String()
}
