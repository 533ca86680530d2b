// Package vmm is govmm's core: the KVM API in Go, guest memory, vCPUs and
// the buses that carry a guest's I/O to devices. It knows nothing about
// any particular device or board; package machine assembles a PC from it.
//
// # How a guest instruction reaches a device
//
//	guest: out 0x3f8, al
//	  │  the CPU leaves guest mode (a VM exit); KVM cannot handle port
//	  │  0x3f8 itself, so KVM_RUN returns with exit_reason = KVM_EXIT_IO
//	  ▼
//	VCPU.Run (vcpu_run.go) reads the kvm_run page: direction, size, port,
//	  │  and the data KVM placed in the page
//	  ▼
//	VM.PIO, a Bus (bus.go): finds the device registered for the port and
//	  │  calls Device.Write(port - base, data)
//	  ▼
//	the device (e.g. devices/serial) acts; for an IN, it fills data, and
//	the next KVM_RUN hands the value to the guest's AL register.
//
// MMIO works the same way through VM.MMIO with KVM_EXIT_MMIO, for
// guest-physical addresses that are not RAM.
//
// # Files, in reading order
//
//   - kvm.go: ioctl numbers, exit reasons, and the C structs as Go types.
//   - kvm_unsafe.go: the only unsafe code: passing those structs to ioctl.
//   - system.go: /dev/kvm, capabilities, creating a VM.
//   - memory.go: guest RAM and the single bounds check every access takes.
//   - vm.go: memory slots, the in-kernel irqchip and PIT, interrupt lines.
//   - vcpu.go: register access (regs, sregs, FPU, MSRs, LAPIC, CPUID...).
//   - vcpu_run.go: the vCPU state machine (Running/Paused/Stopped), pausing
//     from another goroutine with immediate_exit and a signal, exit dispatch.
//   - cpuid.go, vcpu_setup.go: what firmware would set up before an OS runs.
//   - crash.go: the crash report: registers and code at RIP via x86asm.
//   - bus.go: address ranges → devices.
//   - eventfd.go: ioeventfd and irqfd, the paths by which virtio devices
//     hear the guest and interrupt it without stopping a vCPU.
//   - dirty.go: which pages changed, for live migration: KVM's dirty log
//     plus the VMM's own writes.
//   - state.go: a vCPU's and the VM's complete KVM state, saved and
//     restored in the order KVM needs (CPUState, VMState).
//
// Package testguest builds tiny 64-bit user-mode guests for tests of
// dirty logging, state and migration that run at native speed on any KVM.
//
// Next: package machine (vmm/machine), which builds a PC out of these parts.
//
// Reference: Documentation/virt/kvm/api.rst in the Linux tree; each ioctl
// wrapper names the section it follows.
package vmm
