package migration

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Source is the running VM being migrated away. The machine implements it;
// Send calls it from one goroutine only.
type Source interface {
	// MemoryLayout returns guest RAM as regions in ascending GPA order.
	MemoryLayout() []Region
	// ReadPage copies the PageSize bytes at gpa into buf.
	ReadPage(gpa uint64, buf []byte) error
	// StartDirtyTracking begins recording writes to guest RAM: KVM's dirty
	// log OR'd with a VMM-side bitmap for the VMM's own writes (virtio
	// devices), which KVM does not see (a Cloud Hypervisor lesson).
	StartDirtyTracking() error
	// DirtyPages returns the page-aligned GPAs written since the previous
	// call (or since StartDirtyTracking) and clears them.
	DirtyPages() ([]uint64, error)
	// StopDirtyTracking ends tracking; it costs the guest, so it is on only
	// while migrating.
	StopDirtyTracking() error
	// Pause parks all vCPUs and quiesces devices, with in-flight I/O done.
	// If it fails, Send still calls Resume, to restart whatever it parked.
	Pause() error
	// Resume runs the VM on the source again after a failed migration.
	Resume() error
	// SaveState returns the machine's device and vCPU state as an opaque,
	// versioned blob. Send calls it while paused; guest RAM is still
	// tracked, and the final memory pass comes after it, so writes the VMM
	// makes while saving are not lost.
	SaveState() ([]byte, error)
	// Stop ends the VM for good: it now runs on the destination.
	Stop()
}

// DirtyPeeker is an optional part of Source: looking at the pages written
// since the previous DirtyPages without clearing them. Send uses it for
// the writable-working-set rule within a round, which asks "has this page
// changed again since the round began?" every PeekEvery pages. Clearing
// the log to answer that (DirtyPages) would re-protect the guest's hot
// pages each time, costing it a fault per page per look; a peek costs the
// guest nothing (Xen's XEN_DOMCTL_SHADOW_OP_PEEK). A Source without it is
// drained with DirtyPages instead.
type DirtyPeeker interface {
	// PeekDirtyPages returns the page-aligned GPAs written since the
	// previous DirtyPages (or StartDirtyTracking), clearing nothing. ok
	// is false if this source cannot peek after all.
	PeekDirtyPages() (gpas []uint64, ok bool, err error)
}

// PageReader is an optional part of Target, needed to verify memory
// (Options.Verify): it reads back a page written with WritePage.
type PageReader interface {
	// ReadPage copies the PageSize bytes at gpa into buf.
	ReadPage(gpa uint64, buf []byte) error
}

// Target is the VM being built on the destination. The machine implements
// it; Receive calls it from one goroutine only. Receive validates the
// stream's structure; the Target validates meaning (does this layout fit my
// machine, is this state's version known, are the CPUs compatible).
type Target interface {
	// PrepareMemory validates the layout against this machine and allocates
	// it. The layout has passed ValidateLayout.
	PrepareMemory(layout []Region) error
	// WritePage stores one page at gpa, a page inside the layout. data is
	// PageSize bytes, or empty for a page of zeroes.
	WritePage(gpa uint64, data []byte) error
	// RestoreState validates and applies the blob from Source.SaveState.
	// The vCPUs must not run yet. The blob is not retained by Receive.
	RestoreState(blob []byte) error
	// Resume starts the vCPUs. An error must mean the guest does not run
	// here: the source will then resume it.
	Resume() error
}

// Clock is the time source for rate limiting and measurements; tests pass
// a simulated one. Timeouts on the connection always use real time.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx is done (then returns ctx.Err()).
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Defaults, each from the system that chose it.
const (
	// DefaultMaxBandwidth is QEMU's max-bandwidth default, 128 MiB/s.
	DefaultMaxBandwidth = 128 << 20
	// DefaultStartBandwidth is where Xen's adaptive rate starts:
	// 100 Mbit/s (xc_domain_save.c, Clark et al. §5).
	DefaultStartBandwidth = 100e6 / 8
	// AdaptiveStep is what Xen adds to the measured dirty rate to get the
	// next round's limit: 50 Mbit/s.
	AdaptiveStep = 50e6 / 8
	// DefaultDowntimeLimit is QEMU's and Cloud Hypervisor's downtime-limit.
	DefaultDowntimeLimit = 300 * time.Millisecond
	// DefaultMaxRounds is Xen's: 29 live rounds (max_iters) plus the final
	// stop-and-copy round.
	DefaultMaxRounds = 30
	// DefaultTimeout bounds every wait for the peer.
	DefaultTimeout = 60 * time.Second
	// Unlimited as MaxBandwidth turns rate limiting off.
	Unlimited = -1
	// maxFactor: Xen stops iterating once it has sent more than 3 times
	// guest memory (xc_domain_save.c, max_factor).
	maxFactor = 3
	// fewPages: Xen stops iterating when a round sent and skipped fewer
	// than 50 pages: what is left is cheaper to send paused.
	fewPages = 50
	// stateEstimate is what the downtime estimate assumes the device and
	// vCPU state costs before SaveState tells; Cloud Hypervisor adds such a
	// fixed cost to dirty bytes / bandwidth.
	stateEstimate = 64 << 10
)

// Options tune Send. The zero value is QEMU's defaults without Xen's
// adaptive rate.
type Options struct {
	// MaxBandwidth is the rate limit in bytes per second of wire data
	// during the live rounds (0: DefaultMaxBandwidth; Unlimited: none).
	// The stop-and-copy round is never limited: the guest is paused, every
	// millisecond is downtime.
	MaxBandwidth int64
	// Adaptive enables Xen's rate: start at StartBandwidth, and after each
	// round whose dirty rate exceeded the limit, use dirty rate +
	// AdaptiveStep, up to MaxBandwidth (Clark et al. §5; xc_domain_save.c).
	Adaptive bool
	// StartBandwidth is the first round's limit when Adaptive
	// (0: DefaultStartBandwidth).
	StartBandwidth int64
	// DowntimeLimit is the longest acceptable estimated downtime
	// (0: DefaultDowntimeLimit).
	DowntimeLimit time.Duration
	// MaxRounds bounds the rounds including the final stop-and-copy
	// (0: DefaultMaxRounds). 1 means plain stop-and-copy: pause at once.
	MaxRounds int
	// Timeout bounds every wait for the destination, including each write
	// when conn can take deadlines (0: DefaultTimeout).
	Timeout time.Duration
	// Name identifies the source to the destination (e.g. its host name).
	Name string
	// Verify has the destination check its copy of guest RAM against the
	// source's, page by page, before it restores the state (a Verify
	// message: one CRC-32C per page, computed while the guest is paused).
	// It costs downtime (both sides read all of RAM) and exists to catch
	// lost writes; see "Verify" in doc.go.
	Verify bool
	// Clock is the time source (nil: the real clock).
	Clock Clock
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxBandwidth == 0 {
		o.MaxBandwidth = DefaultMaxBandwidth
	}
	if o.MaxBandwidth < 0 && o.MaxBandwidth != Unlimited {
		return o, fmt.Errorf("migration: MaxBandwidth %d is negative (use Unlimited)", o.MaxBandwidth)
	}
	if o.StartBandwidth == 0 {
		o.StartBandwidth = DefaultStartBandwidth
	}
	if o.StartBandwidth < 0 {
		return o, fmt.Errorf("migration: StartBandwidth %d is negative", o.StartBandwidth)
	}
	if o.MaxBandwidth != Unlimited && o.StartBandwidth > o.MaxBandwidth {
		o.StartBandwidth = o.MaxBandwidth
	}
	if o.DowntimeLimit == 0 {
		o.DowntimeLimit = DefaultDowntimeLimit
	}
	if o.MaxRounds == 0 {
		o.MaxRounds = DefaultMaxRounds
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DowntimeLimit < 0 || o.MaxRounds < 0 || o.Timeout < 0 {
		return o, errors.New("migration: DowntimeLimit, MaxRounds and Timeout must not be negative")
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	return o, nil
}

// ReceiveOptions tune Receive.
type ReceiveOptions struct {
	// MaxMemory is the most guest RAM the destination accepts, in bytes
	// (0: 1 TiB). The Target may refuse less. Receive keeps one bit per
	// page of the announced layout (32 MiB for 1 TiB).
	MaxMemory uint64
	// MaxStateSize bounds the state blob (0: 16 MiB).
	MaxStateSize int
	// Timeout bounds every wait for the source (0: DefaultTimeout).
	// Waiting for Go after Restored is bounded by it too.
	Timeout time.Duration
}

func (o ReceiveOptions) withDefaults() ReceiveOptions {
	if o.MaxMemory == 0 {
		o.MaxMemory = 1 << 40
	}
	if o.MaxStateSize <= 0 {
		o.MaxStateSize = 16 << 20
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	return o
}

// StopReason says why the live rounds ended.
type StopReason string

const (
	// StopConverged: the estimated downtime fits the limit (QEMU's rule:
	// remaining dirty bytes / measured bandwidth <= downtime-limit).
	StopConverged StopReason = "converged"
	// StopMaxRounds: the round cap (Xen's max_iters).
	StopMaxRounds StopReason = "max-rounds"
	// StopNoProgress: at the highest allowed rate, the guest dirties memory
	// at least as fast as it is sent, or the round sent more than the one
	// before (Xen: sent_this_iter > sent_last_iter && RATE_IS_MAX). More
	// rounds cannot shrink the remainder; Clark et al.'s "MMuncher".
	StopNoProgress StopReason = "no-progress"
	// StopFewPages: the round sent and skipped fewer than 50 pages (Xen).
	StopFewPages StopReason = "few-pages"
	// StopTooMuchData: more than 3 × guest RAM sent in total (Xen).
	StopTooMuchData StopReason = "sent-3x-memory"
	// StopImmediately: MaxRounds is 1, plain stop-and-copy.
	StopImmediately StopReason = "stop-and-copy"
)

// Round describes one round of pre-copy, or the final stop-and-copy round.
// Rates are bytes per second.
type Round struct {
	Number int  `json:"number"`
	Final  bool `json:"final"` // the stop-and-copy round, guest paused
	// PagesSent counts pages sent with data, ZeroPages those sent as a flag.
	PagesSent uint64 `json:"pages_sent"`
	ZeroPages uint64 `json:"zero_pages"`
	// PagesSkipped counts pages due this round but dirtied again during it
	// (the writable working set): they go in the next round instead.
	PagesSkipped uint64 `json:"pages_skipped"`
	// PagesDirtied counts distinct pages written during the round: what the
	// next round must send.
	PagesDirtied uint64        `json:"pages_dirtied"`
	Bytes        uint64        `json:"bytes"` // on the wire, framing included
	Duration     time.Duration `json:"duration_ns"`
	Bandwidth    float64       `json:"bandwidth"`  // Bytes / Duration
	RateLimit    float64       `json:"rate_limit"` // 0: unlimited
	DirtyRate    float64       `json:"dirty_rate"` // PagesDirtied × PageSize / Duration
	// EstimatedDowntime is what stopping now would cost: the dirty pages
	// and the state at this round's bandwidth.
	EstimatedDowntime time.Duration `json:"estimated_downtime_ns"`
}

// Report is the outcome of Send. It is filled as far as the migration got,
// also when Send fails.
type Report struct {
	Rounds     []Round       `json:"rounds"`
	StopReason StopReason    `json:"stop_reason"`
	GuestRAM   uint64        `json:"guest_ram_bytes"`
	WireBytes  uint64        `json:"wire_bytes"` // everything the source wrote
	StateBytes int           `json:"state_bytes"`
	Verified   bool          `json:"verified,omitempty"` // Options.Verify: RAM matched page by page
	TotalTime  time.Duration `json:"total_time_ns"`
	// Downtime runs from Pause on the source to reading the destination's
	// Resumed message.
	Downtime time.Duration `json:"downtime_ns"`
}

// ReceiveReport is the destination's view of a migration.
type ReceiveReport struct {
	Source     string        `json:"source"` // the source's Options.Name
	GuestRAM   uint64        `json:"guest_ram_bytes"`
	Rounds     int           `json:"rounds"`
	Pages      uint64        `json:"pages"` // entries received, zero pages included
	ZeroPages  uint64        `json:"zero_pages"`
	WireBytes  uint64        `json:"wire_bytes"`
	StateBytes int           `json:"state_bytes"`
	Verified   bool          `json:"verified,omitempty"` // Options.Verify: RAM matched page by page
	TotalTime  time.Duration `json:"total_time_ns"`
	// AckError is set when the guest runs here but the Resumed message
	// could not be sent: the source will report an unknown outcome, and
	// must be told by other means that the guest runs here.
	AckError string `json:"ack_error,omitempty"`
}

// ErrOutcomeUnknown is wrapped by Send's error when the commit message (Go)
// left the source whole but no answer came back: the guest may be running
// on the destination, so the source neither resumes nor stops its paused
// copy. See "Commit and rollback" in doc.go.
var ErrOutcomeUnknown = errors.New("migration outcome unknown")
