package vmm

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// Dirty-page tracking: which pages of guest RAM changed since the last look.
// Live migration's pre-copy (Clark et al., NSDI 2005) sends all of RAM once,
// then, round after round, only the pages written since the previous round,
// until few enough remain to stop the guest and send the rest.
//
// Two writers change guest RAM, and each needs its own log:
//
//   - the guest, logged by KVM. With KVM_MEM_LOG_DIRTY_PAGES on a memory
//     slot, KVM write-protects the slot's pages and records the first write
//     to each in a bitmap (Documentation/virt/kvm/api.rst
//     KVM_SET_USER_MEMORY_REGION, KVM_GET_DIRTY_LOG). It costs the guest a
//     fault per page per round, so it is on only while migrating.
//   - the VMM itself (boot code, later virtio devices writing buffers).
//     KVM never sees those writes: they go straight to the host mapping.
//     Cloud Hypervisor learned this the hard way; GuestMemory keeps its own
//     bitmap, fed by WriteAt and MarkDirty, and DirtyLog ORs it in.
//
// Harvesting KVM's log: plain KVM_GET_DIRTY_LOG returns the bitmap and, in
// the same call, clears it and write-protects every page again, all under
// the VM's MMU lock. With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled, GET
// only copies the bitmap and KVM_CLEAR_DIRTY_LOG re-protects just the pages
// that were dirty, which is cheaper for large, mostly clean guests
// (api.rst KVM_CLEAR_DIRTY_LOG). govmm uses the manual mode when KVM has it.

// Structs of the dirty-log ioctls (include/uapi/linux/kvm.h).
type (
	// dirtyLog is struct kvm_dirty_log.
	dirtyLog struct {
		Slot   uint32
		_      uint32
		Bitmap uint64 // void __user *dirty_bitmap: one bit per page, in unsigned longs
	}
	// clearDirtyLog is struct kvm_clear_dirty_log.
	clearDirtyLog struct {
		Slot      uint32
		NumPages  uint32
		FirstPage uint64
		Bitmap    uint64
	}
	// enableCap is struct kvm_enable_cap (KVM_ENABLE_CAP).
	enableCap struct {
		Cap   uint32
		Flags uint32
		Args  [4]uint64
		_     [64]uint8
	}
)

// dirtyLogManualProtectEnable is KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, the
// bit of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's argument that turns manual
// mode on. govmm does not set KVM_DIRTY_LOG_INITIALLY_SET: pre-copy sends
// every page in its first round anyway, and an all-set initial bitmap would
// hide which pages the guest actually wrote.
const dirtyLogManualProtectEnable = 1 << 0

// dirtyLogState is the VM's side of dirty logging.
type dirtyLogState struct {
	mu       sync.Mutex
	on       bool
	manual   bool // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled on the VM
	noManual bool // tests: use plain KVM_GET_DIRTY_LOG even if manual mode exists
}

// DirtyBitmap lists the dirty pages of one RAM region: bit i of the
// bitmap (Bits[i/64] bit i%64) is the page at Start + i*PageSize. It is the
// layout of KVM's own dirty bitmap.
type DirtyBitmap struct {
	Start GPA
	Pages uint64 // number of pages the region holds
	Bits  []uint64
}

// Count is the number of dirty pages.
func (b DirtyBitmap) Count() int {
	n := 0
	for _, w := range b.Bits {
		n += bits.OnesCount64(w)
	}
	return n
}

// IsDirty reports whether the page holding gpa is marked.
func (b DirtyBitmap) IsDirty(gpa GPA) bool {
	if gpa < b.Start {
		return false
	}
	i := uint64(gpa-b.Start) / PageSize
	return i < b.Pages && b.Bits[i/64]&(1<<(i%64)) != 0
}

// GPAs lists the dirty pages' addresses in ascending order.
func (b DirtyBitmap) GPAs() []GPA {
	var out []GPA
	for j, w := range b.Bits {
		for w != 0 {
			i := uint64(j*64 + bits.TrailingZeros64(w))
			out = append(out, b.Start+GPA(i*PageSize))
			w &= w - 1
		}
	}
	return out
}

// StartDirtyLog turns on dirty-page tracking for every memory slot and for
// the VMM's own writes. Pages written from now on show up in DirtyLog. Call
// it before copying RAM for the first pre-copy round, so that no write made
// during that copy is lost.
func (vm *VM) StartDirtyLog() error {
	vm.dirty.mu.Lock()
	defer vm.dirty.mu.Unlock()
	if vm.Memory == nil {
		return errors.New("dirty logging: the VM has no memory")
	}
	if vm.dirty.on {
		return errors.New("dirty logging is already on")
	}
	if !vm.dirty.manual && !vm.dirty.noManual && vm.kvm.CheckExtension(CapManualDirtyLog2)&dirtyLogManualProtectEnable != 0 {
		c := enableCap{Cap: CapManualDirtyLog2, Args: [4]uint64{dirtyLogManualProtectEnable}}
		if _, err := ioctlPtr(vm.fd, kvmEnableCap, &c); err != nil {
			return fmt.Errorf("KVM_ENABLE_CAP KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: %w", err)
		}
		vm.dirty.manual = true
	}
	// The VMM's log first: a VMM write racing with the slot flag change
	// is then caught by at least one of the two logs.
	vm.Memory.startTracking()
	if err := vm.setSlotFlags(memLogDirtyPages); err != nil {
		vm.Memory.stopTracking()
		vm.setSlotFlags(0)
		return err
	}
	vm.dirty.on = true
	return nil
}

// StopDirtyLog turns dirty-page tracking off again (after a migration
// completed or was abandoned), giving the guest back its full speed.
func (vm *VM) StopDirtyLog() error {
	vm.dirty.mu.Lock()
	defer vm.dirty.mu.Unlock()
	if !vm.dirty.on {
		return nil
	}
	vm.dirty.on = false
	vm.Memory.stopTracking()
	return vm.setSlotFlags(0)
}

// DirtyLogging reports whether StartDirtyLog is in effect.
func (vm *VM) DirtyLogging() bool {
	vm.dirty.mu.Lock()
	defer vm.dirty.mu.Unlock()
	return vm.dirty.on
}

// DirtyLog returns, per RAM region in GPA order, the pages written since
// StartDirtyLog or the previous DirtyLog, by the guest or by the VMM, and
// starts a new logging interval. Safe while vCPUs run.
//
// Contract for the caller (pre-copy): copy a page's contents only after
// the DirtyLog call that reported it. A write that lands after that call
// is reported by the next one; a write that lands during the call is
// reported by this one or the next, never by neither.
func (vm *VM) DirtyLog() ([]DirtyBitmap, error) {
	vm.dirty.mu.Lock()
	defer vm.dirty.mu.Unlock()
	if !vm.dirty.on {
		return nil, errors.New("dirty logging is off: call StartDirtyLog first")
	}
	return vm.readDirtyLog(true)
}

// PeekDirtyLog returns, like DirtyLog, the pages written since
// StartDirtyLog or the previous DirtyLog, but clears nothing and
// write-protects nothing: the guest keeps writing those pages at full
// speed, and the next DirtyLog reports them again. It exists for pre-copy's
// writable-working-set rule, which asks "has this page changed again since
// the round began?" many times per round (Xen peeks at its log the same
// way, XEN_DOMCTL_SHADOW_OP_PEEK). Harvesting for that with DirtyLog
// would re-protect the guest's hot pages every time, each costing the
// guest a fault on its next write, and flush its TLB.
//
// Only KVM's manual mode can peek: there KVM_GET_DIRTY_LOG merely copies
// the bitmap (api.rst KVM_GET_DIRTY_LOG). Without it ok is false and the
// caller must use DirtyLog.
func (vm *VM) PeekDirtyLog() (bitmaps []DirtyBitmap, ok bool, err error) {
	vm.dirty.mu.Lock()
	defer vm.dirty.mu.Unlock()
	if !vm.dirty.on {
		return nil, false, errors.New("dirty logging is off: call StartDirtyLog first")
	}
	if !vm.dirty.manual {
		return nil, false, nil
	}
	bitmaps, err = vm.readDirtyLog(false)
	return bitmaps, err == nil, err
}

// readDirtyLog reads KVM's log and the VMM's for every slot. With harvest
// it starts a new interval: in manual mode it re-protects the pages it
// reports (KVM_CLEAR_DIRTY_LOG; in plain mode KVM_GET_DIRTY_LOG did that
// already) and it clears the VMM's bits. Without, it only copies (manual
// mode only). Called with vm.dirty.mu held and logging on.
func (vm *VM) readDirtyLog(harvest bool) ([]DirtyBitmap, error) {
	out := make([]DirtyBitmap, 0, len(vm.Memory.regions))
	for i, r := range vm.Memory.regions {
		pages := r.Size / PageSize
		b := DirtyBitmap{Start: r.Start, Pages: pages, Bits: make([]uint64, (pages+63)/64)}
		get := dirtyLog{Slot: uint32(i), Bitmap: uint64sAddress(b.Bits)}
		_, err := ioctlPtr(vm.fd, kvmGetDirtyLog, &get)
		runtime.KeepAlive(b.Bits)
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", i, err)
		}
		if harvest && vm.dirty.manual && b.Count() > 0 {
			// Re-protect exactly the pages we are about to report. The
			// whole slot in one call: first_page 0 is 64-aligned and the
			// range ends at the slot's end, as api.rst requires.
			clr := clearDirtyLog{Slot: uint32(i), NumPages: uint32(pages), Bitmap: uint64sAddress(b.Bits)}
			_, err := ioctlPtr(vm.fd, kvmClearDirtyLog, &clr)
			runtime.KeepAlive(b.Bits)
			if err != nil {
				return nil, fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d: %w", i, err)
			}
		}
		for j := range b.Bits {
			if harvest {
				b.Bits[j] |= vm.Memory.vmmDirty[i][j].Swap(0)
			} else {
				b.Bits[j] |= vm.Memory.vmmDirty[i][j].Load()
			}
		}
		out = append(out, b)
	}
	return out, nil
}

// setSlotFlags re-registers every memory slot with the same placement and
// new flags (api.rst KVM_SET_USER_MEMORY_REGION: "When changing an existing
// slot, it may be moved in the guest physical memory space, or its flags may
// be modified, but it may not be resized").
func (vm *VM) setSlotFlags(flags uint32) error {
	for i, r := range vm.Memory.regions {
		region := userspaceMemoryRegion{
			Slot:          uint32(i),
			Flags:         flags,
			GuestPhysAddr: uint64(r.Start),
			MemorySize:    r.Size,
			UserspaceAddr: hostAddress(r.host),
		}
		if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &region); err != nil {
			return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d flags %#x: %w", i, flags, err)
		}
	}
	return nil
}

// MarkDirty records that the VMM wrote guest RAM in [gpa, gpa+n), so that
// a migration in progress sends those pages again. WriteAt calls it;
// code that writes through Slice must call it itself, after the write (a
// mark made before the write could be harvested, and the page sent, before
// the data lands). When no migration is running it costs one atomic load.
// Addresses outside RAM are ignored: nothing there to send.
func (m *GuestMemory) MarkDirty(gpa GPA, n uint64) {
	if n == 0 || !m.tracking.Load() {
		return
	}
	for i, r := range m.regions {
		if gpa >= r.Start && gpa < r.End() {
			first := uint64(gpa-r.Start) / PageSize
			last := (uint64(gpa-r.Start) + min(n, r.Size-uint64(gpa-r.Start)) - 1) / PageSize
			for p := first; p <= last; p++ {
				m.vmmDirty[i][p/64].Or(1 << (p % 64))
			}
			return
		}
	}
}

// startTracking clears and enables the VMM's dirty bitmap. The bitmap is
// allocated on first use (one bit per page: 128 KiB for 4 GiB) and kept,
// so MarkDirty never sees it change under it.
func (m *GuestMemory) startTracking() {
	if m.vmmDirty == nil {
		m.vmmDirty = make([][]atomic.Uint64, len(m.regions))
		for i, r := range m.regions {
			m.vmmDirty[i] = make([]atomic.Uint64, (r.Size/PageSize+63)/64)
		}
	}
	for _, words := range m.vmmDirty {
		for j := range words {
			words[j].Store(0)
		}
	}
	m.tracking.Store(true)
}

func (m *GuestMemory) stopTracking() { m.tracking.Store(false) }
