package tap

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VnetHdrSize is the size of the header in front of every frame:
// struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6), 12 bytes, the header
// virtio-net 1.x uses on its queues. TUNSETVNETHDRSZ tells the kernel.
const VnetHdrSize = 12

// DevicePath is the TUN/TAP clone device.
const DevicePath = "/dev/net/tun"

// ErrDeleted is the error Read and Write wrap once the interface has been
// deleted under the TAP (ip link del): the descriptor stays open, but it
// belongs to no interface any more and never will again.
var ErrDeleted = errors.New("the interface no longer exists (deleted?)")

// Offloads are TUN_F_* flags (include/uapi/linux/if_tun.h) for
// TUNSETOFFLOAD: the work on outgoing packets the kernel may leave to the
// reader. Each one changes what Read returns (partial checksums, frames of
// up to 64 KiB to be segmented), so enable one only if whatever consumes
// the frames handles it; virtio-net passes these jobs on to the guest only
// when the guest negotiated the matching VIRTIO_NET_F_GUEST_* feature.
type Offloads uint

const (
	OffloadCsum   Offloads = 0x01 // TUN_F_CSUM: checksums may be partial (VIRTIO_NET_HDR_F_NEEDS_CSUM)
	OffloadTSO4   Offloads = 0x02 // TUN_F_TSO4: TCP over IPv4 may come unsegmented
	OffloadTSO6   Offloads = 0x04 // TUN_F_TSO6: TCP over IPv6 may come unsegmented
	OffloadTSOECN Offloads = 0x08 // TUN_F_TSO_ECN: ... with ECN bits

	// probedOffloads are the offloads Open looks for. UFO (0x10) and
	// USO (0x20, 0x40) are left out: virtio-net does not offer them.
	probedOffloads = OffloadCsum | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN
)

// The kernel's tun_set_offload (drivers/net/tun.c) refuses with EINVAL
// any flag it does not know, which is how a program finds out what it
// supports, and a TSO flag without TUN_F_CSUM, and TUN_F_TSO_ECN without
// TUN_F_TSO4 or TUN_F_TSO6: segmenting needs a partial checksum to
// finish in each segment. Flags for writes do not exist: with
// IFF_VNET_HDR, whatever the kernel can hand over it also accepts in a
// written frame's header (tun_get_user → virtio_net_hdr_to_skb).

// An Option changes how Open sets the TAP up.
type Option func(*options)

type options struct {
	offloads Offloads
	detached bool
}

// WithOffloads enables offloads (default: none).
func WithOffloads(o Offloads) Option { return func(opts *options) { opts.offloads = o } }

// Detached opens the queue detached: it receives nothing until Attach. A
// migration destination opens its TAP this way, so that frames keep going
// to the source until the destination can take them.
func Detached() Option { return func(opts *options) { opts.detached = true } }

// TAP is one queue of a multi-queue TAP interface. Reads and writes may
// come from different goroutines at once; each moves exactly one frame.
type TAP struct {
	name      string
	f         *os.File // non-blocking, in Go's poller
	supported Offloads // what TUNSETOFFLOAD accepted when Open probed

	mu       sync.Mutex // serialises Detach and Attach
	detached bool
}

// Open creates the TAP interface name, or attaches a new queue to it if it
// exists, and returns the queue. An empty name lets the kernel choose
// one ("tap0", ...); Name reports it. A TAP created here disappears when
// its last queue is closed; one made beforehand with
// `ip tuntap add dev NAME mode tap multi_queue` persists. Either way the
// interface still has to be brought up (ip link set NAME up) to carry
// frames.
func Open(name string, opts ...Option) (*TAP, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("TAP %q: %w", name, err) // checkName has caught this
	}
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openError(name, err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, setIffError(name, err)
	}
	name = ifr.Name() // the kernel's choice, if name was empty
	// The header's size, and its byte order: virtio 1.x is always
	// little-endian (TUNSETVNETLE; x86 would default to it anyway, as a
	// legacy virtio host is native-endian).
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrSize); err != nil {
		return nil, fmt.Errorf("TAP %s: TUNSETVNETHDRSZ %d: %w", name, VnetHdrSize, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETLE, 1); err != nil {
		return nil, fmt.Errorf("TAP %s: TUNSETVNETLE: %w", name, err)
	}
	supported := probeOffloads(fd)
	// Set even when 0: the offloads belong to the interface, and a
	// persistent TAP may still have those of its previous user.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(o.offloads)); err != nil {
		return nil, fmt.Errorf("TAP %s: TUNSETOFFLOAD %#x: %w", name, uint(o.offloads), err)
	}
	if o.detached {
		if err := setQueue(fd, name, unix.IFF_DETACH_QUEUE); err != nil {
			return nil, fmt.Errorf("TAP %s: detaching: %w", name, err)
		}
	}
	// os.NewFile sees O_NONBLOCK and registers the descriptor with the
	// poller: a Read that finds nothing parks the goroutine until epoll
	// says a frame is there, and Close wakes it.
	f := os.NewFile(uintptr(fd), DevicePath)
	ok = true
	return &TAP{name: name, f: f, supported: supported, detached: o.detached}, nil
}

// probeOffloads finds out which of probedOffloads the kernel supports,
// as QEMU's tap_probe_has_ufo does: by trying them. Every kernel since
// 2.6.27 takes them all; the fallbacks are for a tun that would not. The
// caller sets the offloads it wants right after.
//
// The offloads belong to the interface, not to this queue: when a
// migration destination opens its queue next to the source's, the
// source may get a partial checksum or a 64 KiB frame in the moment
// between the probe and the reset. virtio-net checks every header
// against what its guest negotiated, and finishes or drops such a frame.
func probeOffloads(fd int) Offloads {
	for _, o := range []Offloads{probedOffloads, OffloadCsum} {
		if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(o)) == nil {
			return o
		}
	}
	return 0
}

// checkName refuses what the kernel's dev_valid_name refuses, so that the
// error names the real problem rather than TUNSETIFF's EINVAL.
func checkName(name string) error {
	switch {
	case len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("TAP %q: an interface name has at most %d bytes", name, unix.IFNAMSIZ-1)
	case name == "." || name == "..":
		return fmt.Errorf("TAP %q: not a valid interface name", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("TAP %q: an interface name cannot contain '/', ':' or white space", name)
	}
	return nil
}

func openError(name string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("TAP %q: no %s (%w): the kernel's tun driver is missing; load it with modprobe tun", name, DevicePath, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("TAP %q: cannot open %s (%w): it is normally readable and writable by everyone; check its mode", name, DevicePath, err)
	}
	return fmt.Errorf("TAP %q: opening %s: %w", name, DevicePath, err)
}

func setIffError(name string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("TAP %q: %w: creating a TAP needs CAP_NET_ADMIN (run as root, or setcap cap_net_admin+ep on the binary); "+
			"or have root create it for this user: ip tuntap add dev %s mode tap multi_queue user $USER", name, err, name)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("TAP %q: %w: an interface of that name exists and is not a multi-queue TAP "+
			"(a TUN, a TAP made without multi_queue, or another kind of interface); "+
			"pick another name, or recreate it: ip tuntap add dev %s mode tap multi_queue", name, err, name)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("TAP %q: %w: the interface is held exclusively by another process", name, err)
	}
	return fmt.Errorf("TAP %q: TUNSETIFF: %w", name, err)
}

// Name is the interface's name.
func (t *TAP) Name() string { return t.name }

// SupportedOffloads are the offloads SetOffloads can enable. A frame
// written may ask for the same work in its header: a checksum to finish
// (NEEDS_CSUM) if OffloadCsum is there, segmentation of TCP (gso_type
// TCPV4, TCPV6, with the ECN bit) if OffloadTSO4, OffloadTSO6,
// OffloadTSOECN are.
func (t *TAP) SupportedOffloads() Offloads { return t.supported }

// SetOffloads sets the offloads of the interface (TUNSETOFFLOAD): the
// work on frames read from now on that the kernel may leave to the
// reader. They are the interface's, shared by all its queues; 0 makes
// every frame read complete.
func (t *TAP) SetOffloads(o Offloads) error {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("TAP %s: TUNSETOFFLOAD %#x: %w", t.name, uint(o), err)
	}
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) { ioctlErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, int(o)) }); err != nil {
		return fmt.Errorf("TAP %s: TUNSETOFFLOAD %#x: %w", t.name, uint(o), err)
	}
	if errors.Is(ioctlErr, unix.EBADFD) {
		// As for reads and writes (error): the interface is gone.
		return fmt.Errorf("TAP %s: TUNSETOFFLOAD %#x: %w", t.name, uint(o), ErrDeleted)
	}
	if ioctlErr != nil {
		return fmt.Errorf("TAP %s: TUNSETOFFLOAD %#x: %w", t.name, uint(o), ioctlErr)
	}
	return nil
}

// IsDetached reports whether the queue is detached (Detached, Detach):
// another queue of the interface, another process's, has its traffic.
func (t *TAP) IsDetached() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.detached
}

// ReadFrame reads the next frame the host sends out of the interface,
// header first (VnetHdrSize bytes, then the Ethernet frame). It waits
// until there is one. p must hold the largest frame, header included: the
// interface's MTU plus 14 bytes of Ethernet header (18 with a VLAN tag)
// plus VnetHdrSize; a frame that does not fit is lost and the read fails.
func (t *TAP) ReadFrame(p []byte) (int, error) {
	n, err := t.f.Read(p)
	if err != nil {
		return n, t.error("read", err)
	}
	return n, nil
}

// WriteFrame hands one frame, header first, to the host as if the
// interface had received it.
func (t *TAP) WriteFrame(p []byte) error {
	if _, err := t.f.Write(p); err != nil {
		return t.error("write", err)
	}
	return nil
}

// Read is ReadFrame: with Write and Close, a TAP is an io.ReadWriteCloser
// whose every call moves one frame.
func (t *TAP) Read(p []byte) (int, error) { return t.ReadFrame(p) }

// Write is WriteFrame.
func (t *TAP) Write(p []byte) (int, error) {
	if err := t.WriteFrame(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetReadDeadline makes a waiting or future ReadFrame fail with
// os.ErrDeadlineExceeded at d (the zero time: never).
func (t *TAP) SetReadDeadline(d time.Time) error { return t.f.SetReadDeadline(d) }

// error explains a failed read or write. The kernel answers EBADFD once
// the interface is gone (tun_chr_read_iter, tun_chr_write_iter: the
// descriptor's tun_struct is NULL after tun_detach_all) and EIO for a
// write to an interface that is down.
func (t *TAP) error(op string, err error) error {
	switch {
	case errors.Is(err, unix.EBADFD):
		return fmt.Errorf("TAP %s: %s: %w", t.name, op, ErrDeleted)
	case errors.Is(err, unix.EIO) && op == "write":
		return fmt.Errorf("TAP %s: write: %w: the interface is down (ip link set %s up)", t.name, err, t.name)
	case errors.Is(err, os.ErrClosed):
		return fmt.Errorf("TAP %s: %s: %w", t.name, op, os.ErrClosed)
	}
	return fmt.Errorf("TAP %s: %s: %w", t.name, op, err)
}

// Detach takes the queue out of the interface (TUNSETQUEUE with
// IFF_DETACH_QUEUE): the kernel sends it no more frames, and drops the
// ones it had queued for it. Writes still work. Detaching a detached
// queue does nothing.
func (t *TAP) Detach() error { return t.setQueue(true) }

// Attach puts a detached queue back (IFF_ATTACH_QUEUE). Attaching an
// attached queue does nothing.
func (t *TAP) Attach() error { return t.setQueue(false) }

func (t *TAP) setQueue(detach bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.detached == detach {
		return nil
	}
	flag, what := uint16(unix.IFF_ATTACH_QUEUE), "attach"
	if detach {
		flag, what = unix.IFF_DETACH_QUEUE, "detach"
	}
	rc, err := t.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("TAP %s: %s: %w", t.name, what, err)
	}
	var ioctlErr error
	// Control keeps the descriptor from being closed under the ioctl.
	if err := rc.Control(func(fd uintptr) { ioctlErr = setQueue(int(fd), t.name, flag) }); err != nil {
		return fmt.Errorf("TAP %s: %s: %w", t.name, what, err)
	}
	if ioctlErr != nil {
		if errors.Is(ioctlErr, unix.EINVAL) {
			// The queue is in the state we expect (t.detached), so
			// tun_set_queue's EINVAL can only mean the interface
			// went away: its queues then belong to nothing.
			return fmt.Errorf("TAP %s: %s: %w", t.name, what, ErrDeleted)
		}
		return fmt.Errorf("TAP %s: %s: %w", t.name, what, ioctlErr)
	}
	t.detached = detach
	return nil
}

func setQueue(fd int, name string, flag uint16) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(flag)
	return unix.IoctlIfreq(fd, unix.TUNSETQUEUE, ifr)
}

// Close closes the queue; a ReadFrame waiting on it returns an error
// wrapping os.ErrClosed. The interface goes away with its last queue
// unless it is persistent.
func (t *TAP) Close() error { return t.f.Close() }
