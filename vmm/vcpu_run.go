package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// VCPUState is where a vCPU is in its life (after Firecracker's explicit
// vCPU state machine):
//
//	Created ──Run──▶ Running ◀──Resume── Paused
//	                    │  └──Pause──────────▲
//	                    └──Stop / fatal exit──▶ Stopped (from Paused too)
//
// Only the vCPU's own thread changes state; other goroutines ask for a
// state (Pause, Resume, Stop) and wait until the vCPU reaches it.
type VCPUState int

const (
	VCPUCreated VCPUState = iota
	VCPURunning
	VCPUPaused
	VCPUStopped
)

func (s VCPUState) String() string {
	return [...]string{"created", "running", "paused", "stopped"}[s]
}

// StopReason says why a vCPU left its run loop for good.
type StopReason int

const (
	StopRequested     StopReason = iota // Stop() was called (the machine is shutting down)
	StopHalted                          // HLT with no in-kernel irqchip to wake it (tiny test guests)
	StopTripleFault                     // KVM_EXIT_SHUTDOWN: the guest triple-faulted or reset via a bad IDT
	StopSystemEvent                     // KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown/reset/crash)
	StopInternalError                   // KVM_EXIT_INTERNAL_ERROR, e.g. an instruction KVM cannot emulate
	StopFailEntry                       // KVM_EXIT_FAIL_ENTRY: the hardware refused the guest state
	StopUnhandledExit                   // an exit reason govmm does not handle
	StopRunError                        // KVM_RUN itself failed
)

func (r StopReason) String() string {
	return [...]string{"stop requested", "halted", "triple fault", "system event",
		"KVM internal error", "VM entry failed", "unhandled exit", "KVM_RUN failed"}[r]
}

// StopInfo describes a stopped vCPU: why, and the CPU state at that moment,
// captured on the vCPU's own thread so that a crash report shows exactly what
// the guest was doing.
type StopInfo struct {
	Reason StopReason
	Detail string // exit-specific text: error codes, event type
	Event  uint32 // SystemEvent type for StopSystemEvent
	CPU    CPUSnapshot
}

// kickSignal interrupts a vCPU thread blocked in KVM_RUN. Go's runtime
// installs a handler for it that ignores it when no one has called
// signal.Notify, so the only effect is that KVM_RUN returns EINTR (QEMU uses
// SIGUSR1 the same way, as SIG_IPI).
const kickSignal = unix.SIGUSR1

// Run executes the vCPU until it stops, on the calling goroutine, which it
// locks to its OS thread: KVM expects KVM_RUN from one thread, and kicks are
// signals sent to that thread. Exits are dispatched to the VM's buses. Run
// returns why the vCPU stopped.
func (v *VCPU) Run() *StopInfo {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	v.mu.Lock()
	v.tid = unix.Gettid()
	v.mu.Unlock()

	for {
		if info := v.waitToRun(); info != nil {
			return v.finish(info)
		}
		err := runOnce(v.fd)
		v.pendingCompletion = false
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue // a kick: go back and look at what was asked
			}
			return v.finish(&StopInfo{Reason: StopRunError, Detail: err.Error()})
		}
		if info := v.handleExit(); info != nil {
			return v.finish(info)
		}
	}
}

// waitToRun is the state machine's decision point before each KVM_RUN: run,
// park while paused (running queued work), or stop.
func (v *VCPU) waitToRun() *StopInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	for {
		switch v.want {
		case VCPUStopped:
			return &StopInfo{Reason: StopRequested}
		case VCPUPaused:
			if v.pendingCompletion {
				// Let KVM finish the I/O instruction we just emulated,
				// without running guest code: immediate_exit makes KVM_RUN
				// return EINTR right after completing it.
				v.run[runImmediateExit] = 1
				v.mu.Unlock()
				runOnce(v.fd)
				v.mu.Lock()
				v.pendingCompletion = false
				continue
			}
			v.setState(VCPUPaused)
			for len(v.work) > 0 {
				f := v.work[0]
				v.work = v.work[1:]
				v.mu.Unlock()
				f()
				v.mu.Lock()
			}
			if v.want == VCPUPaused {
				v.changed.Wait()
			}
		case VCPURunning:
			// Cleared under the lock: a Pause or Stop that arrives after
			// this point sets it again, so KVM_RUN returns at once instead
			// of missing the request (api.rst "immediate_exit").
			v.run[runImmediateExit] = 0
			v.setState(VCPURunning)
			return nil
		}
	}
}

func (v *VCPU) setState(s VCPUState) {
	if v.state != s {
		v.state = s
		v.changed.Broadcast()
	}
}

func (v *VCPU) finish(info *StopInfo) *StopInfo {
	info.CPU = v.snapshot()
	v.mu.Lock()
	v.exit = info
	v.setState(VCPUStopped)
	v.want = VCPUStopped
	work := v.work
	v.work = nil
	v.mu.Unlock()
	for _, f := range work { // nobody will run them now; let waiters go
		f()
	}
	return info
}

// request records what other goroutines want and kicks the vCPU out of
// KVM_RUN so it notices.
func (v *VCPU) request(s VCPUState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.want == VCPUStopped {
		return // stopping is final
	}
	v.want = s
	v.changed.Broadcast()
	if s != VCPURunning && v.state == VCPURunning {
		v.run[runImmediateExit] = 1
		if v.tid != 0 {
			unix.Tgkill(unix.Getpid(), v.tid, kickSignal)
		}
	}
}

// waitFor blocks until the vCPU's state is s (or it has stopped).
func (v *VCPU) waitFor(s VCPUState) VCPUState {
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.state != s && v.state != VCPUStopped {
		// The signal can land just before the thread enters KVM_RUN, in
		// which case immediate_exit catches it; but a kick can also arrive
		// while the thread is in the VMM handling an exit and be consumed
		// there. Re-kick on every wake-up until the state is reached.
		if v.state == VCPURunning && v.want != VCPURunning && v.tid != 0 {
			v.run[runImmediateExit] = 1
			unix.Tgkill(unix.Getpid(), v.tid, kickSignal)
		}
		v.changed.Wait()
	}
	return v.state
}

// Pause stops the vCPU at an instruction boundary, with any pending I/O
// completed, and waits until it is parked. Safe from any goroutine.
func (v *VCPU) Pause() error {
	v.request(VCPUPaused)
	if v.waitFor(VCPUPaused) != VCPUPaused {
		return fmt.Errorf("vCPU %d stopped before it could pause", v.ID)
	}
	return nil
}

// Resume lets a paused vCPU run again.
func (v *VCPU) Resume() {
	v.request(VCPURunning)
}

// Stop asks the vCPU to leave its run loop for good. It does not wait: a
// device callback running on this very vCPU's thread may call it.
func (v *VCPU) Stop() {
	v.request(VCPUStopped)
}

// Wait blocks until the vCPU has stopped and returns why.
func (v *VCPU) Wait() *StopInfo {
	v.waitFor(VCPUStopped)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exit
}

// State returns the vCPU's current state.
func (v *VCPU) State() VCPUState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state
}

// Do runs f on the vCPU's thread while it is paused, and waits for it.
// Saving and restoring vCPU state goes through Do, since KVM wants vCPU
// ioctls from the thread that runs the vCPU. If the vCPU has not started yet
// or has stopped, f runs on the caller's goroutine instead.
func (v *VCPU) Do(f func()) {
	v.mu.Lock()
	if v.state != VCPUPaused {
		v.mu.Unlock()
		f()
		return
	}
	done := make(chan struct{})
	v.work = append(v.work, func() { f(); close(done) })
	v.changed.Broadcast()
	v.mu.Unlock()
	<-done
}

// handleExit dispatches one exit. It returns non-nil when the vCPU cannot
// continue.
func (v *VCPU) handleExit() *StopInfo {
	reason := binary.LittleEndian.Uint32(v.run[runExitReason:])
	switch reason {
	case ExitIO:
		v.handleIO()
		v.pendingCompletion = true
		return nil
	case ExitMMIO:
		v.handleMMIO()
		v.pendingCompletion = true
		return nil
	case ExitIntr:
		return nil
	case ExitHLT:
		return &StopInfo{Reason: StopHalted}
	case ExitShutdown:
		return &StopInfo{Reason: StopTripleFault, Detail: "KVM_EXIT_SHUTDOWN"}
	case ExitSystemEvent:
		t := binary.LittleEndian.Uint32(v.run[runSystemEventType:])
		return &StopInfo{Reason: StopSystemEvent, Event: t, Detail: fmt.Sprintf("system event type %d", t)}
	case ExitFailEntry:
		code := binary.LittleEndian.Uint64(v.run[runFailEntryReason:])
		return &StopInfo{Reason: StopFailEntry, Detail: fmt.Sprintf("hardware entry failure reason %#x", code)}
	case ExitInternalError:
		sub := binary.LittleEndian.Uint32(v.run[runInternalSuberror:])
		n := min(binary.LittleEndian.Uint32(v.run[runInternalNData:]), 16)
		detail := fmt.Sprintf("suberror %d (%s)", sub, internalErrorNames[sub])
		for i := uint32(0); i < n; i++ {
			detail += fmt.Sprintf(" %#x", binary.LittleEndian.Uint64(v.run[runInternalData+8*i:]))
		}
		return &StopInfo{Reason: StopInternalError, Detail: detail}
	default:
		name := exitNames[reason]
		if name == "" {
			name = "?"
		}
		return &StopInfo{Reason: StopUnhandledExit, Detail: fmt.Sprintf("exit reason %d (KVM_EXIT_%s)", reason, name)}
	}
}

// handleIO serves KVM_EXIT_IO. For string instructions (rep ins/outs) KVM
// batches count accesses of size bytes each in the data area of kvm_run.
//
// UNTRUSTED: size, count and data_offset are written by KVM, not the guest,
// but are checked against the kvm_run mapping anyway so that a kernel bug
// cannot become an out-of-range slice.
func (v *VCPU) handleIO() {
	dir := v.run[runIODirection]
	size := uint64(v.run[runIOSize])
	port := uint64(binary.LittleEndian.Uint16(v.run[runIOPort:]))
	count := uint64(binary.LittleEndian.Uint32(v.run[runIOCount:]))
	off := binary.LittleEndian.Uint64(v.run[runIODataOffset:])
	if size == 0 || size > 8 || off > uint64(len(v.run)) || count*size > uint64(len(v.run))-off {
		return
	}
	for i := uint64(0); i < count; i++ {
		data := v.run[off+i*size : off+(i+1)*size]
		if dir == ioDirectionOut {
			v.vm.PIO.Write(port, data)
		} else {
			v.vm.PIO.Read(port, data)
		}
	}
}

// handleMMIO serves KVM_EXIT_MMIO: one access of 1-8 bytes.
func (v *VCPU) handleMMIO() {
	addr := binary.LittleEndian.Uint64(v.run[runMMIOPhysAddr:])
	n := binary.LittleEndian.Uint32(v.run[runMMIOLen:])
	if n == 0 || n > 8 {
		return
	}
	data := v.run[runMMIOData : runMMIOData+int(n)]
	if v.run[runMMIOIsWrite] != 0 {
		v.vm.MMIO.Write(addr, data)
	} else {
		v.vm.MMIO.Read(addr, data)
	}
}
