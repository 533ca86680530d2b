package vmm

// The KVM API as Go sees it: ioctl numbers, exit reasons and the structs the
// kernel reads and writes. Everything here mirrors include/uapi/linux/kvm.h
// (and arch/x86/include/uapi/asm/kvm.h) byte for byte; the C name of each
// item is in its comment so a reader can look it up in
// Documentation/virt/kvm/api.rst.
//
// The ioctl numbers are spelled out rather than computed at init time: the
// _IO/_IOR/_IOW encodings are (dir<<30 | size<<16 | 'KVMIO'(0xAE)<<8 | nr), and
// the tests in kvm_test.go recompute each one from the struct size so a typo
// cannot hide.

// ioctls on /dev/kvm (the "system" file descriptor).
const (
	kvmGetAPIVersion     = 0xAE00     // KVM_GET_API_VERSION
	kvmCreateVM          = 0xAE01     // KVM_CREATE_VM
	kvmGetMSRIndexList   = 0xC004AE02 // KVM_GET_MSR_INDEX_LIST
	kvmCheckExtension    = 0xAE03     // KVM_CHECK_EXTENSION
	kvmGetVCPUMmapSize   = 0xAE04     // KVM_GET_VCPU_MMAP_SIZE
	kvmGetSupportedCPUID = 0xC008AE05 // KVM_GET_SUPPORTED_CPUID
)

// ioctls on a VM file descriptor.
const (
	kvmCreateVCPU          = 0xAE41     // KVM_CREATE_VCPU
	kvmGetDirtyLog         = 0x4010AE42 // KVM_GET_DIRTY_LOG
	kvmSetUserMemoryRegion = 0x4020AE46 // KVM_SET_USER_MEMORY_REGION
	kvmSetTSSAddr          = 0xAE47     // KVM_SET_TSS_ADDR
	kvmSetIdentityMapAddr  = 0x4008AE48 // KVM_SET_IDENTITY_MAP_ADDR
	kvmCreateIRQChip       = 0xAE60     // KVM_CREATE_IRQCHIP
	kvmIRQLine             = 0x4008AE61 // KVM_IRQ_LINE
	kvmGetIRQChip          = 0xC208AE62 // KVM_GET_IRQCHIP
	kvmSetIRQChip          = 0x8208AE63 // KVM_SET_IRQCHIP
	kvmIRQFD               = 0x4020AE76 // KVM_IRQFD
	kvmCreatePIT2          = 0x4040AE77 // KVM_CREATE_PIT2
	kvmIOEventFD           = 0x4040AE79 // KVM_IOEVENTFD
	kvmSetClock            = 0x4030AE7B // KVM_SET_CLOCK
	kvmGetClock            = 0x8030AE7C // KVM_GET_CLOCK
	kvmGetPIT2             = 0x8070AE9F // KVM_GET_PIT2
	kvmSetPIT2             = 0x4070AEA0 // KVM_SET_PIT2
	kvmEnableCap           = 0x4068AEA3 // KVM_ENABLE_CAP (also valid on a vCPU)
	kvmClearDirtyLog       = 0xC018AEC0 // KVM_CLEAR_DIRTY_LOG
	kvmSetGSIRouting       = 0x4008AE6A // KVM_SET_GSI_ROUTING
	kvmSignalMSI           = 0x4020AEA5 // KVM_SIGNAL_MSI
)

// ioctls on a vCPU file descriptor.
const (
	kvmRun           = 0xAE80     // KVM_RUN
	kvmGetRegs       = 0x8090AE81 // KVM_GET_REGS
	kvmSetRegs       = 0x4090AE82 // KVM_SET_REGS
	kvmGetSregs      = 0x8138AE83 // KVM_GET_SREGS
	kvmSetSregs      = 0x4138AE84 // KVM_SET_SREGS
	kvmTranslate     = 0xC018AE85 // KVM_TRANSLATE
	kvmGetMSRs       = 0xC008AE88 // KVM_GET_MSRS
	kvmSetMSRs       = 0x4008AE89 // KVM_SET_MSRS
	kvmGetFPU        = 0x81A0AE8C // KVM_GET_FPU
	kvmSetFPU        = 0x41A0AE8D // KVM_SET_FPU
	kvmGetLAPIC      = 0x8400AE8E // KVM_GET_LAPIC
	kvmSetLAPIC      = 0x4400AE8F // KVM_SET_LAPIC
	kvmSetCPUID2     = 0x4008AE90 // KVM_SET_CPUID2
	kvmGetCPUID2     = 0xC008AE91 // KVM_GET_CPUID2
	kvmGetMPState    = 0x8004AE98 // KVM_GET_MP_STATE
	kvmSetMPState    = 0x4004AE99 // KVM_SET_MP_STATE
	kvmGetVCPUEvents = 0x8040AE9F // KVM_GET_VCPU_EVENTS
	kvmSetVCPUEvents = 0x4040AEA0 // KVM_SET_VCPU_EVENTS
	kvmGetDebugRegs  = 0x8080AEA1 // KVM_GET_DEBUGREGS
	kvmSetDebugRegs  = 0x4080AEA2 // KVM_SET_DEBUGREGS
	kvmGetTSCKHz     = 0xAEA3     // KVM_GET_TSC_KHZ
	kvmSetTSCKHz     = 0xAEA2     // KVM_SET_TSC_KHZ
	kvmGetXSAVE      = 0x9000AEA4 // KVM_GET_XSAVE
	kvmSetXSAVE      = 0x5000AEA5 // KVM_SET_XSAVE
	kvmGetXCRs       = 0x8188AEA6 // KVM_GET_XCRS
	kvmSetXCRs       = 0x4188AEA7 // KVM_SET_XCRS
	kvmKVMClockCtrl  = 0xAEAD     // KVM_KVMCLOCK_CTRL
)

// APIVersion is the only KVM API version there has ever been in mainline
// (Documentation/virt/kvm/api.rst §4.1: "applications should refuse to run
// if KVM_GET_API_VERSION returns a value other than 12").
const APIVersion = 12

// Capabilities queried with KVM_CHECK_EXTENSION.
const (
	CapIRQChip          = 0   // KVM_CAP_IRQCHIP
	CapHLT              = 1   // KVM_CAP_HLT
	CapUserMemory       = 3   // KVM_CAP_USER_MEMORY
	CapSetTSSAddr       = 4   // KVM_CAP_SET_TSS_ADDR
	CapExtCPUID         = 7   // KVM_CAP_EXT_CPUID
	CapNrVCPUs          = 9   // KVM_CAP_NR_VCPUS
	CapNrMemslots       = 10  // KVM_CAP_NR_MEMSLOTS
	CapPIT              = 11  // KVM_CAP_PIT
	CapMPState          = 14  // KVM_CAP_MP_STATE
	CapIRQInjectStatus  = 26  // KVM_CAP_IRQ_INJECT_STATUS
	CapIOEventFD        = 36  // KVM_CAP_IOEVENTFD
	CapPIT2             = 33  // KVM_CAP_PIT2
	CapAdjustClock      = 39  // KVM_CAP_ADJUST_CLOCK
	CapVCPUEvents       = 41  // KVM_CAP_VCPU_EVENTS
	CapIRQFD            = 32  // KVM_CAP_IRQFD
	CapDebugRegs        = 50  // KVM_CAP_DEBUGREGS
	CapXSAVE            = 55  // KVM_CAP_XSAVE
	CapXCRs             = 56  // KVM_CAP_XCRS
	CapTSCControl       = 60  // KVM_CAP_TSC_CONTROL
	CapGetTSCKHz        = 61  // KVM_CAP_GET_TSC_KHZ
	CapTSCDeadlineTimer = 72  // KVM_CAP_TSC_DEADLINE_TIMER
	CapImmediateExit    = 136 // KVM_CAP_IMMEDIATE_EXIT
	CapManualDirtyLog2  = 168 // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
	CapDirtyLogRing     = 192 // KVM_CAP_DIRTY_LOG_RING
	CapXSAVE2           = 208 // KVM_CAP_XSAVE2
	CapSystemEventData  = 209 // KVM_CAP_SYSTEM_EVENT_DATA
)

// Exit reasons: kvm_run.exit_reason after KVM_RUN returns.
const (
	ExitUnknown       = 0  // KVM_EXIT_UNKNOWN
	ExitException     = 1  // KVM_EXIT_EXCEPTION
	ExitIO            = 2  // KVM_EXIT_IO
	ExitHypercall     = 3  // KVM_EXIT_HYPERCALL
	ExitDebug         = 4  // KVM_EXIT_DEBUG
	ExitHLT           = 5  // KVM_EXIT_HLT
	ExitMMIO          = 6  // KVM_EXIT_MMIO
	ExitIRQWindowOpen = 7  // KVM_EXIT_IRQ_WINDOW_OPEN
	ExitShutdown      = 8  // KVM_EXIT_SHUTDOWN (triple fault)
	ExitFailEntry     = 9  // KVM_EXIT_FAIL_ENTRY
	ExitIntr          = 10 // KVM_EXIT_INTR
	ExitSetTPR        = 11 // KVM_EXIT_SET_TPR
	ExitTPRAccess     = 12 // KVM_EXIT_TPR_ACCESS
	ExitNMI           = 16 // KVM_EXIT_NMI
	ExitInternalError = 17 // KVM_EXIT_INTERNAL_ERROR
	ExitSystemEvent   = 24 // KVM_EXIT_SYSTEM_EVENT
)

// exitNames names exit reasons in error messages and crash reports.
var exitNames = map[uint32]string{
	ExitUnknown: "UNKNOWN", ExitException: "EXCEPTION", ExitIO: "IO",
	ExitHypercall: "HYPERCALL", ExitDebug: "DEBUG", ExitHLT: "HLT",
	ExitMMIO: "MMIO", ExitIRQWindowOpen: "IRQ_WINDOW_OPEN",
	ExitShutdown: "SHUTDOWN", ExitFailEntry: "FAIL_ENTRY", ExitIntr: "INTR",
	ExitSetTPR: "SET_TPR", ExitTPRAccess: "TPR_ACCESS", ExitNMI: "NMI",
	ExitInternalError: "INTERNAL_ERROR", ExitSystemEvent: "SYSTEM_EVENT",
}

// System event types carried by ExitSystemEvent.
const (
	SystemEventShutdown = 1 // KVM_SYSTEM_EVENT_SHUTDOWN
	SystemEventReset    = 2 // KVM_SYSTEM_EVENT_RESET
	SystemEventCrash    = 3 // KVM_SYSTEM_EVENT_CRASH
)

// Internal-error sub-reasons (kvm_run.internal.suberror).
var internalErrorNames = map[uint32]string{
	1: "EMULATION", 2: "SIMUL_EX", 3: "DELIVERY_EV", 4: "UNEXPECTED_EXIT_REASON",
}

// Layout of the shared kvm_run page (struct kvm_run). We read and write it as
// bytes with encoding/binary instead of casting it to a Go struct: the page is
// mmap'd kernel memory, and byte offsets keep that explicit and unsafe-free.
const (
	runImmediateExit = 1  // __u8 immediate_exit
	runExitReason    = 8  // __u32 exit_reason
	runIFFlag        = 13 // __u8 if_flag
	runExitData      = 32 // the anonymous union of per-exit structs

	// union member io: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset
	runIODirection  = runExitData + 0
	runIOSize       = runExitData + 1
	runIOPort       = runExitData + 2
	runIOCount      = runExitData + 4
	runIODataOffset = runExitData + 8

	// union member mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write
	runMMIOPhysAddr = runExitData + 0
	runMMIOData     = runExitData + 8
	runMMIOLen      = runExitData + 16
	runMMIOIsWrite  = runExitData + 20

	// fail_entry: __u64 hardware_entry_failure_reason; __u32 cpu
	runFailEntryReason = runExitData + 0

	// internal: __u32 suberror; __u32 ndata; __u64 data[16]
	runInternalSuberror = runExitData + 0
	runInternalNData    = runExitData + 4
	runInternalData     = runExitData + 8

	// system_event: __u32 type; __u32 ndata; __u64 data[16]
	runSystemEventType = runExitData + 0

	ioDirectionIn  = 0 // KVM_EXIT_IO_IN
	ioDirectionOut = 1 // KVM_EXIT_IO_OUT
)

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment: a segment register as the CPU caches it
// (base, limit and attributes decoded from the descriptor).
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DescriptorTable is struct kvm_dtable: GDTR or IDTR.
type DescriptorTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment and control registers.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DescriptorTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu: legacy x87/SSE state.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// LAPICState is struct kvm_lapic_state: the 1 KiB local APIC register page.
type LAPICState struct {
	Regs [1024]byte
}

// MPState is struct kvm_mp_state.
type MPState struct {
	State uint32
}

// MP states (KVM_MP_STATE_*).
const (
	MPStateRunnable      = 0
	MPStateUninitialized = 1
	MPStateInitReceived  = 2
	MPStateHalted        = 3
	MPStateSipiReceived  = 4
)

// VCPUEvents is struct kvm_vcpu_events: pending exceptions, interrupts, NMIs
// and SMM state that live outside the registers.
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault struct {
		Pending uint8
	}
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// DebugRegs is struct kvm_debugregs.
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// irqfd is struct kvm_irqfd.
type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

// ioeventfd is struct kvm_ioeventfd.
type ioeventfd struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// XCR is one struct kvm_xcr.
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRs is struct kvm_xcrs.
type XCRs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [16]XCR
	_      [16]uint64
}

// XSAVE is struct kvm_xsave (the 4 KiB legacy size; KVM_GET_XSAVE2 may need
// more when AMX is enabled, which govmm never offers the guest).
type XSAVE struct {
	Region [1024]uint32
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// maxCPUIDEntries bounds the kvm_cpuid2 array we hand to the kernel; KVM
// itself caps it at 256 (KVM_MAX_CPUID_ENTRIES).
const maxCPUIDEntries = 256

// cpuid2 is struct kvm_cpuid2 with a fixed-size flexible array.
type cpuid2 struct {
	Nent    uint32
	_       uint32
	Entries [maxCPUIDEntries]CPUIDEntry
}

// MSR is one struct kvm_msr_entry.
type MSR struct {
	Index uint32
	_     uint32
	Data  uint64
}

// maxMSRs bounds one KVM_GET_MSRS/KVM_SET_MSRS call.
const maxMSRs = 256

// msrs is struct kvm_msrs with a fixed-size flexible array.
type msrs struct {
	NMSRs   uint32
	_       uint32
	Entries [maxMSRs]MSR
}

// msrList is struct kvm_msr_list with a fixed-size flexible array.
type msrList struct {
	NMSRs   uint32
	Indices [1024]uint32
}

// userspaceMemoryRegion is struct kvm_userspace_memory_region.
type userspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// Memory slot flags.
const (
	memLogDirtyPages = 1 << 0 // KVM_MEM_LOG_DIRTY_PAGES
	memReadonly      = 1 << 1 // KVM_MEM_READONLY
)

// irqLevel is struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

// pitConfig is struct kvm_pit_config.
type pitConfig struct {
	Flags uint32
	_     [15]uint32
}

// pitSpeakerDummy is KVM_PIT_SPEAKER_DUMMY: let KVM answer the PC speaker
// port 0x61 that Linux reads while calibrating against the PIT.
const pitSpeakerDummy = 1

// translation is struct kvm_translation (KVM_TRANSLATE).
type translation struct {
	LinearAddress   uint64
	PhysicalAddress uint64
	Valid           uint8
	Writeable       uint8
	Usermode        uint8
	_               [5]uint8
}

// ClockData is struct kvm_clock_data: the kvmclock epoch of the VM.
type ClockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// IRQChip is struct kvm_irqchip: one of the in-kernel PIC (0 master, 1
// slave) or IOAPIC (2) state blobs.
type IRQChip struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// In-kernel interrupt controller ids for IRQChip.ChipID.
const (
	IRQChipPICMaster = 0 // KVM_IRQCHIP_PIC_MASTER
	IRQChipPICSlave  = 1 // KVM_IRQCHIP_PIC_SLAVE
	IRQChipIOAPIC    = 2 // KVM_IRQCHIP_IOAPIC
)

// PITState2 is struct kvm_pit_state2.
type PITState2 struct {
	Channels [3]struct {
		Count         uint32
		LatchedCount  uint16
		CountLatched  uint8
		StatusLatched uint8
		Status        uint8
		ReadState     uint8
		WriteState    uint8
		WriteLatch    uint8
		RWMode        uint8
		Mode          uint8
		BCD           uint8
		Gate          uint8
		CountLoadTime int64
	}
	Flags uint32
	_     [9]uint32
}
