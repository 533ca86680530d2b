package vmm

import (
	"strings"
	"testing"
)

func TestOpenKVMErrorsNameTheProblem(t *testing.T) {
	for path, want := range map[string]string{
		"/nonexistent/kvm": "does not exist: this host has no KVM",
		"/dev/null":        "is not a KVM device",
	} {
		k, err := OpenKVM(path)
		if err == nil {
			k.Close()
			t.Errorf("OpenKVM(%s) succeeded", path)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("OpenKVM(%s): %v; want it to say %q", path, err, want)
		}
	}
}

func TestGuestCPUIDDescribesTheMachine(t *testing.T) {
	supported := []CPUIDEntry{
		{Function: 0x1, EBX: 0xff00_0800, ECX: 0},
		{Function: 0xb, Index: 1, EDX: 7},
		{Function: cpuidLeafHypervisor, EAX: 0x40000001, EBX: 0x4b4d564b},
		{Function: cpuidLeafKVMFeatures, EAX: 0x1},
	}
	out := GuestCPUID(supported, CPUIDConfig{VCPUID: 3, TSCKHz: 2_500_000, TSCDeadline: true})
	find := func(fn uint32) CPUIDEntry {
		for _, e := range out {
			if e.Function == fn {
				return e
			}
		}
		t.Fatalf("leaf %#x missing", fn)
		return CPUIDEntry{}
	}
	if e := find(1); e.EBX>>24 != 3 || e.EBX&0xffffff != 0x000800 || e.ECX&cpuidECXHypervisor == 0 || e.ECX&cpuidECXTSCDeadline == 0 {
		t.Errorf("leaf 1: %+v", e)
	}
	if e := find(0xb); e.EDX != 3 {
		t.Errorf("leaf 0xb x2APIC id %d, want 3", e.EDX)
	}
	if e := find(cpuidLeafHypervisor); e.EAX != cpuidLeafTiming {
		t.Errorf("max hypervisor leaf %#x, want %#x", e.EAX, cpuidLeafTiming)
	}
	if e := find(cpuidLeafTiming); e.EAX != 2_500_000 || e.EBX != apicBusKHz {
		t.Errorf("timing leaf %+v", e)
	}
	if len(supported) != 4 || supported[0].EBX != 0xff00_0800 {
		t.Error("GuestCPUID modified its input")
	}
}
