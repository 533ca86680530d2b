package vmm

// CPUID is how a guest kernel discovers its CPU. govmm starts from what KVM
// supports on this host (KVM_GET_SUPPORTED_CPUID) and adjusts the few leaves
// that describe the machine rather than the CPU: the vCPU's APIC ID and the
// hypervisor leaves that tell Linux it runs on KVM and how fast the TSC is.

// CPUIDConfig describes the machine-specific parts of CPUID.
type CPUIDConfig struct {
	VCPUID      int    // this vCPU's index and APIC ID
	TSCKHz      uint32 // guest TSC frequency, from KVM_GET_TSC_KHZ
	TSCDeadline bool   // KVM_CAP_TSC_DEADLINE_TIMER: advertise the LAPIC TSC-deadline mode
}

// CPUID leaves and bits used below (Intel SDM Vol. 2A "CPUID"; KVM's
// Documentation/virt/kvm/x86/cpuid.rst for the 0x400000xx leaves).
const (
	cpuidLeafFeatures    = 0x1        // EBX[31:24] initial APIC ID, ECX feature flags
	cpuidLeafTopology    = 0xB        // extended topology: EDX = x2APIC ID
	cpuidLeafTopologyV2  = 0x1F       // V2 extended topology: EDX = x2APIC ID
	cpuidLeafHypervisor  = 0x40000000 // EAX = max hypervisor leaf, EBX:ECX:EDX = "KVMKVMKVM\0\0\0"
	cpuidLeafKVMFeatures = 0x40000001 // KVM paravirt features: kvmclock, async PF, ...
	cpuidLeafTiming      = 0x40000010 // EAX = TSC kHz, EBX = APIC bus kHz (VMware/QEMU "timing" leaf)

	cpuidECXTSCDeadline = 1 << 24 // leaf 1 ECX: TSC-deadline LAPIC timer mode
	cpuidECXHypervisor  = 1 << 31 // leaf 1 ECX: running under a hypervisor
)

// apicBusKHz is the LAPIC timer's input clock as KVM emulates it: one tick
// per nanosecond (arch/x86/kvm/lapic.c, APIC_BUS_CYCLE_NS = 1).
const apicBusKHz = 1000000

// GuestCPUID adapts the host-supported CPUID to one vCPU of this machine.
//
// Why each change:
//   - leaf 1 EBX[31:24] and leaf 0xB/0x1F EDX carry the APIC ID; they must
//     match the MADT (ACPI) the guest reads, or Linux refuses the CPU.
//   - leaf 1 ECX.hypervisor makes Linux look for the 0x400000xx leaves, where
//     KVM's leaf 0x40000001 advertises kvmclock: Linux then takes the TSC
//     frequency from kvmclock instead of calibrating it against the PIT,
//     which is slow and unreliable under nested virtualization.
//   - leaf 0x40000010 reports the TSC and APIC-bus frequencies directly,
//     for guests that read it.
func GuestCPUID(supported []CPUIDEntry, cfg CPUIDConfig) []CPUIDEntry {
	out := make([]CPUIDEntry, 0, len(supported)+1)
	haveTiming := false
	for _, e := range supported {
		switch e.Function {
		case cpuidLeafFeatures:
			e.EBX = e.EBX&0x00ffffff | uint32(cfg.VCPUID)<<24
			e.ECX |= cpuidECXHypervisor
			if cfg.TSCDeadline {
				e.ECX |= cpuidECXTSCDeadline
			}
		case cpuidLeafTopology, cpuidLeafTopologyV2:
			e.EDX = uint32(cfg.VCPUID)
		case cpuidLeafHypervisor:
			if cfg.TSCKHz != 0 && e.EAX < cpuidLeafTiming {
				e.EAX = cpuidLeafTiming
			}
		case cpuidLeafTiming:
			haveTiming = true
			if cfg.TSCKHz != 0 {
				e.EAX, e.EBX = cfg.TSCKHz, apicBusKHz
			}
		}
		out = append(out, e)
	}
	if cfg.TSCKHz != 0 && !haveTiming {
		out = append(out, CPUIDEntry{Function: cpuidLeafTiming, EAX: cfg.TSCKHz, EBX: apicBusKHz})
	}
	return out
}
