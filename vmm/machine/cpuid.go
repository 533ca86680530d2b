package machine

import (
	"fmt"
	"strings"

	"govmm/vmm"
)

// CPU compatibility for migration. A running guest has read CPUID once, at
// boot, and uses what it found (AVX2 in memcpy, XSAVE features in context
// switches) without asking again. The destination shows the guest the
// source's CPUID table, so every feature in it must really be there: a
// feature the destination's KVM cannot offer (KVM_GET_SUPPORTED_CPUID)
// would make the guest fault on its first such instruction. Cloud
// Hypervisor and QEMU refuse such a migration up front; so does govmm.

// featureReg names one register of one CPUID leaf whose bits are feature
// flags (Intel SDM Vol. 2A "CPUID"; AMD APM Vol. 3 Appendix E; KVM's
// Documentation/virt/kvm/x86/cpuid.rst for 0x40000001).
type featureReg struct {
	leaf, subleaf uint32
	reg           string // "eax", "ebx", "ecx", "edx"
	ignore        uint32 // bits that are not host features (see below)
}

// Bits ignored because they describe the VM or the guest's own settings,
// not the host CPU: leaf 1 ECX.hypervisor and ECX.TSC-deadline are set by
// vmm.GuestCPUID; leaf 1 ECX.OSXSAVE and leaf 7 ECX.OSPKE mirror the guest's
// CR4 (KVM updates them at run time).
const (
	bitHypervisor  = 1 << 31
	bitTSCDeadline = 1 << 24
	bitOSXSAVE     = 1 << 27
	bitOSPKE       = 1 << 4
)

var featureRegs = []featureReg{
	{0x1, 0, "ecx", bitHypervisor | bitOSXSAVE},
	{0x1, 0, "edx", 0},
	{0x7, 0, "ebx", 0},
	{0x7, 0, "ecx", bitOSPKE},
	{0x7, 0, "edx", 0},
	{0x7, 1, "eax", 0},
	{0xd, 0, "eax", 0}, // XCR0 bits the guest may enable
	{0xd, 0, "edx", 0},
	{0xd, 1, "eax", 0}, // XSAVEOPT, XSAVEC, XSAVES...
	{0x80000001, 0, "ecx", 0},
	{0x80000001, 0, "edx", 0},
	{0x80000007, 0, "edx", 0}, // invariant TSC
	{0x80000008, 0, "ebx", 0},
	{0x40000001, 0, "eax", 0}, // KVM paravirtual features: kvmclock, PV EOI...
}

// featureNames names the bits a reader is most likely to meet in an error.
var featureNames = map[string]string{
	"1.ecx.0": "SSE3", "1.ecx.9": "SSSE3", "1.ecx.19": "SSE4.1", "1.ecx.20": "SSE4.2",
	"1.ecx.21": "x2APIC", "1.ecx.22": "MOVBE", "1.ecx.23": "POPCNT", "1.ecx.25": "AES",
	"1.ecx.26": "XSAVE", "1.ecx.28": "AVX", "1.ecx.29": "F16C", "1.ecx.30": "RDRAND",
	"1.ecx.12": "FMA", "1.ecx.1": "PCLMULQDQ",
	"7.ebx.3": "BMI1", "7.ebx.5": "AVX2", "7.ebx.8": "BMI2", "7.ebx.9": "ERMS",
	"7.ebx.16": "AVX512F", "7.ebx.18": "RDSEED", "7.ebx.19": "ADX", "7.ebx.29": "SHA",
	"7.ecx.9": "VAES", "7.ecx.10": "VPCLMULQDQ",
	"80000001.ecx.0": "LAHF_LM", "80000001.ecx.5": "ABM/LZCNT", "80000001.edx.27": "RDTSCP",
	"80000007.edx.8": "invariant TSC", "40000001.eax.3": "kvmclock (KVM_FEATURE_CLOCKSOURCE2)",
}

func reg(e vmm.CPUIDEntry, name string) uint32 {
	switch name {
	case "eax":
		return e.EAX
	case "ebx":
		return e.EBX
	case "ecx":
		return e.ECX
	default:
		return e.EDX
	}
}

func findLeaf(table []vmm.CPUIDEntry, leaf, subleaf uint32) (vmm.CPUIDEntry, bool) {
	for _, e := range table {
		if e.Function == leaf && e.Index == subleaf {
			return e, true
		}
	}
	// Leaves without sub-leaves may be listed with any index.
	for _, e := range table {
		if e.Function == leaf && subleaf == 0 {
			return e, true
		}
	}
	return vmm.CPUIDEntry{}, false
}

// CheckCPUID reports every CPU feature in guest (the CPUID table a guest
// was booted with) that supported (this host's KVM_GET_SUPPORTED_CPUID)
// lacks. tscDeadline says whether this KVM emulates the LAPIC TSC-deadline
// timer, which KVM_GET_SUPPORTED_CPUID does not list but vmm.GuestCPUID
// adds when KVM_CAP_TSC_DEADLINE_TIMER is present.
func CheckCPUID(guest, supported []vmm.CPUIDEntry, tscDeadline bool) error {
	var missing []string
	for _, f := range featureRegs {
		g, ok := findLeaf(guest, f.leaf, f.subleaf)
		if !ok {
			continue
		}
		want := reg(g, f.reg) &^ f.ignore
		if f.leaf == 1 && f.reg == "ecx" && tscDeadline {
			want &^= bitTSCDeadline
		}
		var have uint32
		if s, ok := findLeaf(supported, f.leaf, f.subleaf); ok {
			have = reg(s, f.reg)
		}
		lack := want &^ have
		for bit := 0; bit < 32; bit++ {
			if lack&(1<<bit) == 0 {
				continue
			}
			key := fmt.Sprintf("%x.%s.%d", f.leaf, f.reg, bit)
			desc := fmt.Sprintf("CPUID %#x.%d %s bit %d", f.leaf, f.subleaf, strings.ToUpper(f.reg), bit)
			if name := featureNames[key]; name != "" {
				desc += " (" + name + ")"
			}
			missing = append(missing, desc)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("this host's CPU (as KVM offers it) lacks features the guest was booted with: %s; migrate to a host with the same or a newer CPU",
			strings.Join(missing, ", "))
	}
	return nil
}
