package virtiotest

import (
	"encoding/binary"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"govmm/devices/virtio"
	"govmm/vmm"
)

// Descriptor flags (virtio 1.2 §2.7.5), for building chains by hand.
const (
	DescNext     = 1 // VIRTQ_DESC_F_NEXT
	DescWrite    = 2 // VIRTQ_DESC_F_WRITE
	DescIndirect = 4 // VIRTQ_DESC_F_INDIRECT
)

// AvailNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT.
const AvailNoInterrupt = 1

// waitTimeout bounds every wait for the device, so a broken device fails
// a test instead of hanging it.
const waitTimeout = 5 * time.Second

// NewMemory returns size bytes of fake guest RAM at GPA 0 (size a multiple
// of the page size), unmapped when the test ends.
func NewMemory(tb testing.TB, size uint64) *vmm.GuestMemory {
	tb.Helper()
	mem, err := vmm.NewGuestMemory([]vmm.MemoryRegion{{Start: 0, Size: size}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { mem.Close() })
	return mem
}

// TrackDirty turns on the dirty log of mem through a KVM VM, as a
// migration does, and returns a function that lists the pages written
// since the previous call. With no guest running, those are exactly the
// pages the VMM marked with MarkDirty. The test is skipped without
// /dev/kvm.
func TrackDirty(tb testing.TB, mem *vmm.GuestMemory) func() []vmm.GPA {
	tb.Helper()
	if _, err := os.Stat(vmm.DefaultDevice); err != nil {
		tb.Skipf("no %s: %v", vmm.DefaultDevice, err)
	}
	k, err := vmm.OpenKVM(vmm.DefaultDevice)
	if err != nil {
		tb.Skipf("cannot open KVM: %v", err)
	}
	tb.Cleanup(func() { k.Close() })
	vm, err := k.CreateVM()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { vm.Close() })
	if err := vm.SetMemory(mem); err != nil {
		tb.Fatal(err)
	}
	if err := vm.StartDirtyLog(); err != nil {
		tb.Fatal(err)
	}
	return func() []vmm.GPA {
		bitmaps, err := vm.DirtyLog()
		if err != nil {
			tb.Fatal(err)
		}
		var out []vmm.GPA
		for _, b := range bitmaps {
			out = append(out, b.GPAs()...)
		}
		return out
	}
}

// Driver is the guest's driver for one virtio-mmio device.
type Driver struct {
	tb  testing.TB
	Mem *vmm.GuestMemory
	// Dev is the transport's register block. Set it after creating
	// the transport with Interrupt as its interrupt function.
	Dev vmm.Device

	next, end  vmm.GPA // bump allocator for rings and buffers
	interrupts atomic.Int64
	irq        chan struct{}
}

// New returns a driver that allocates its rings and buffers in guest RAM
// [from, to).
func New(tb testing.TB, mem *vmm.GuestMemory, from, to vmm.GPA) *Driver {
	return &Driver{tb: tb, Mem: mem, next: from, end: to, irq: make(chan struct{}, 1)}
}

// Interrupt is the device's interrupt line: pass it as
// virtio.MMIOConfig.Interrupt.
func (d *Driver) Interrupt() {
	d.interrupts.Add(1)
	select {
	case d.irq <- struct{}{}:
	default:
	}
}

// Interrupts counts the interrupts raised so far.
func (d *Driver) Interrupts() int { return int(d.interrupts.Load()) }

// Read32 reads a register.
func (d *Driver) Read32(off uint64) uint32 {
	var b [4]byte
	d.Dev.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a register.
func (d *Driver) Write32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.Dev.Write(off, b[:])
}

// Status reads the Status register.
func (d *Driver) Status() uint8 { return uint8(d.Read32(virtio.RegStatus)) }

// AddStatus sets status bits the way Linux's virtio_add_status does: read,
// OR, write.
func (d *Driver) AddStatus(bits uint8) { d.Write32(virtio.RegStatus, uint32(d.Status()|bits)) }

// Reset writes 0 to Status.
func (d *Driver) Reset() { d.Write32(virtio.RegStatus, 0) }

// DeviceFeatures reads both words of DeviceFeatures.
func (d *Driver) DeviceFeatures() uint64 {
	d.Write32(virtio.RegDeviceFeaturesSel, 1)
	hi := d.Read32(virtio.RegDeviceFeatures)
	d.Write32(virtio.RegDeviceFeaturesSel, 0)
	return uint64(hi)<<32 | uint64(d.Read32(virtio.RegDeviceFeatures))
}

// WriteDriverFeatures writes both words of DriverFeatures.
func (d *Driver) WriteDriverFeatures(f uint64) {
	d.Write32(virtio.RegDriverFeaturesSel, 1)
	d.Write32(virtio.RegDriverFeatures, uint32(f>>32))
	d.Write32(virtio.RegDriverFeaturesSel, 0)
	d.Write32(virtio.RegDriverFeatures, uint32(f))
}

// Negotiate resets the device and accepts the features of want that it
// offers (plus VIRTIO_F_VERSION_1), up to FEATURES_OK, as virtio_dev_probe
// does. It returns the accepted features.
func (d *Driver) Negotiate(want uint64) uint64 {
	d.tb.Helper()
	d.Reset()
	d.AddStatus(virtio.StatusAcknowledge)
	d.AddStatus(virtio.StatusDriver)
	f := (want | virtio.FeatureVersion1) & d.DeviceFeatures()
	d.WriteDriverFeatures(f)
	d.AddStatus(virtio.StatusFeaturesOK)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		d.tb.Fatalf("device refused features %#x", f)
	}
	return f
}

// Init negotiates want, sets up one queue per size given (0: the device's
// maximum) and sets DRIVER_OK.
func (d *Driver) Init(want uint64, sizes ...uint16) []*Queue {
	d.tb.Helper()
	d.Negotiate(want)
	var qs []*Queue
	for i, s := range sizes {
		qs = append(qs, d.SetupQueue(i, s))
	}
	d.AddStatus(virtio.StatusDriverOK)
	if st := d.Status(); st&virtio.StatusDriverOK == 0 || st&virtio.StatusNeedsReset != 0 {
		d.tb.Fatalf("device status %#x after DRIVER_OK", st)
	}
	return qs
}

// Ack handles an interrupt as vm_interrupt does: it reads InterruptStatus
// and acknowledges what it read.
func (d *Driver) Ack() uint32 {
	s := d.Read32(virtio.RegInterruptStatus)
	d.Write32(virtio.RegInterruptACK, s)
	return s
}

// Alloc reserves n bytes of guest RAM aligned to align.
func (d *Driver) Alloc(n, align uint64) vmm.GPA {
	d.tb.Helper()
	gpa := (d.next + vmm.GPA(align) - 1) &^ (vmm.GPA(align) - 1)
	if gpa+vmm.GPA(n) > d.end {
		d.tb.Fatalf("test driver out of guest memory allocating %d bytes", n)
	}
	d.next = gpa + vmm.GPA(n)
	return gpa
}

// Poke writes guest RAM as the guest does (no dirty marking).
func (d *Driver) Poke(gpa vmm.GPA, data []byte) {
	d.tb.Helper()
	b, err := d.Mem.Slice(gpa, uint64(len(data)))
	if err != nil {
		d.tb.Fatal(err)
	}
	copy(b, data)
}

// Peek reads n bytes of guest RAM.
func (d *Driver) Peek(gpa vmm.GPA, n uint64) []byte {
	d.tb.Helper()
	b, err := d.Mem.Slice(gpa, n)
	if err != nil {
		d.tb.Fatal(err)
	}
	return append([]byte(nil), b...)
}

func (d *Driver) poke16(gpa vmm.GPA, v uint16) {
	d.Poke(gpa, binary.LittleEndian.AppendUint16(nil, v))
}

func (d *Driver) peek16(gpa vmm.GPA) uint16 { return binary.LittleEndian.Uint16(d.Peek(gpa, 2)) }
func (d *Driver) peek32(gpa vmm.GPA) uint32 { return binary.LittleEndian.Uint32(d.Peek(gpa, 4)) }

// SetupQueue sets up queue index with size entries (0: QueueNumMax) as
// vm_setup_vq does, rings laid out like Linux's vring: descriptor table,
// avail ring right after it, used ring on the next 4 KiB boundary.
func (d *Driver) SetupQueue(index int, size uint16) *Queue {
	d.tb.Helper()
	d.Write32(virtio.RegQueueSel, uint32(index))
	if d.Read32(virtio.RegQueueReady) != 0 {
		d.tb.Fatalf("queue %d already ready", index)
	}
	max := d.Read32(virtio.RegQueueNumMax)
	if max == 0 {
		d.tb.Fatalf("queue %d not available", index)
	}
	if size == 0 {
		size = uint16(max)
	}
	n := uint64(size)
	q := &Queue{d: d, Index: index, Size: size}
	q.Desc = d.Alloc(16*n+6+2*n, 4096)
	q.Avail = q.Desc + vmm.GPA(16*n)
	q.Used = d.Alloc(6+8*n, 4096)
	d.Write32(virtio.RegQueueNum, uint32(size))
	q.WriteLayout()
	d.Write32(virtio.RegQueueReady, 1)
	return q
}

// Queue is the driver's side of one virtqueue.
type Queue struct {
	d                 *Driver
	Index             int
	Size              uint16
	Desc, Avail, Used vmm.GPA
	// Indirect makes Add put each chain in an indirect table (needs
	// VIRTIO_F_INDIRECT_DESC).
	Indirect bool
	// Quiet makes Poll leave used_event alone, as a driver that wants
	// no interrupts for a while.
	Quiet bool

	nextDesc uint16 // descriptors are handed out round-robin
	availIdx uint16 // entries published
	lastUsed uint16 // used entries consumed
}

// WriteLayout writes the ring addresses to the selected queue's registers.
func (q *Queue) WriteLayout() {
	d := q.d
	d.Write32(virtio.RegQueueDescLow, uint32(q.Desc))
	d.Write32(virtio.RegQueueDescHigh, uint32(q.Desc>>32))
	d.Write32(virtio.RegQueueDriverLow, uint32(q.Avail))
	d.Write32(virtio.RegQueueDriverHigh, uint32(q.Avail>>32))
	d.Write32(virtio.RegQueueDeviceLow, uint32(q.Used))
	d.Write32(virtio.RegQueueDeviceHigh, uint32(q.Used>>32))
}

// Buf is one buffer of a request.
type Buf struct {
	data  []byte // contents of a readable buffer
	n     uint32 // size of a writable one
	write bool
}

// Readable is a device-readable buffer holding data.
func Readable(data []byte) Buf { return Buf{data: data, n: uint32(len(data))} }

// Writable is a device-writable buffer of n bytes, filled with 0xee so
// that untouched bytes show.
func Writable(n int) Buf { return Buf{n: uint32(n), write: true} }

// Request is a chain the driver made available.
type Request struct {
	Head uint16
	q    *Queue
	bufs []placed
}

type placed struct {
	gpa   vmm.GPA
	n     uint32
	write bool
}

// Writable returns the current contents of the request's i-th writable
// buffer.
func (r *Request) Writable(i int) []byte {
	b := r.writable(i)
	return r.q.d.Peek(b.gpa, uint64(b.n))
}

// WritableGPA is the guest address of the request's i-th writable buffer.
func (r *Request) WritableGPA(i int) vmm.GPA { return r.writable(i).gpa }

func (r *Request) writable(i int) placed {
	r.q.d.tb.Helper()
	for _, b := range r.bufs {
		if b.write {
			if i == 0 {
				return b
			}
			i--
		}
	}
	r.q.d.tb.Fatalf("request has no writable buffer %d", i)
	return placed{}
}

// Add allocates and fills the buffers, chains them (directly, or through
// an indirect table if q.Indirect) and publishes the chain in the avail
// ring. It does not notify the device.
func (q *Queue) Add(bufs ...Buf) *Request {
	d := q.d
	r := &Request{q: q}
	for _, b := range bufs {
		gpa := d.Alloc(uint64(b.n), 8)
		if b.write {
			d.Poke(gpa, filled(b.n, 0xee))
		} else {
			d.Poke(gpa, b.data)
		}
		r.bufs = append(r.bufs, placed{gpa, b.n, b.write})
	}
	if q.Indirect {
		table := d.Alloc(16*uint64(len(bufs)), 16)
		for i, b := range r.bufs {
			q.writeDesc(table, uint16(i), uint64(b.gpa), b.n, flags(b.write, i < len(bufs)-1), uint16(i+1))
		}
		r.Head = q.allocDesc()
		q.SetDesc(r.Head, uint64(table), uint32(16*len(bufs)), DescIndirect, 0)
	} else {
		ids := make([]uint16, len(bufs))
		for i := range ids {
			ids[i] = q.allocDesc()
		}
		for i, b := range r.bufs {
			var next uint16
			if i < len(ids)-1 {
				next = ids[i+1]
			}
			q.SetDesc(ids[i], uint64(b.gpa), b.n, flags(b.write, i < len(ids)-1), next)
		}
		r.Head = ids[0]
	}
	q.Publish(r.Head)
	return r
}

func flags(write, next bool) uint16 {
	var f uint16
	if write {
		f |= DescWrite
	}
	if next {
		f |= DescNext
	}
	return f
}

func filled(n uint32, v byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = v
	}
	return b
}

func (q *Queue) allocDesc() uint16 {
	i := q.nextDesc
	q.nextDesc = (q.nextDesc + 1) % q.Size
	return i
}

// Kick notifies the device through the QueueNotify register.
func (q *Queue) Kick() { q.d.Write32(virtio.RegQueueNotify, uint32(q.Index)) }

// Submit is Add and Kick.
func (q *Queue) Submit(bufs ...Buf) *Request {
	r := q.Add(bufs...)
	q.Kick()
	return r
}

// SetDesc writes descriptor i of the queue's table.
func (q *Queue) SetDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	q.writeDesc(q.Desc, i, addr, n, flags, next)
}

// writeDesc writes entry i of the descriptor table at table.
func (q *Queue) writeDesc(table vmm.GPA, i uint16, addr uint64, n uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	q.d.Poke(table+vmm.GPA(16)*vmm.GPA(i), b[:])
}

// WriteTable writes entry i of a descriptor table at table, such as an
// indirect table built by hand.
func (q *Queue) WriteTable(table vmm.GPA, i uint16, addr uint64, n uint32, flags, next uint16) {
	q.writeDesc(table, i, addr, n, flags, next)
}

// Publish puts head in the next avail ring slot, then advances avail->idx
// (in that order, as virtqueue_add_split does with a write barrier).
func (q *Queue) Publish(head uint16) {
	q.d.poke16(q.Avail+4+2*vmm.GPA(q.availIdx%q.Size), head)
	q.availIdx++
	q.d.poke16(q.Avail+2, q.availIdx)
}

// SetAvailIdx writes avail->idx directly, whatever the ring holds.
func (q *Queue) SetAvailIdx(v uint16) {
	q.availIdx = v
	q.d.poke16(q.Avail+2, v)
}

// SetAvailFlags writes avail->flags.
func (q *Queue) SetAvailFlags(f uint16) { q.d.poke16(q.Avail, f) }

// SetUsedEvent writes used_event (VIRTIO_F_EVENT_IDX).
func (q *Queue) SetUsedEvent(v uint16) { q.d.poke16(q.Avail+4+2*vmm.GPA(q.Size), v) }

// AvailEvent reads avail_event, written by the device.
func (q *Queue) AvailEvent() uint16 { return q.d.peek16(q.Used + 4 + 8*vmm.GPA(q.Size)) }

// UsedIdx reads used->idx.
func (q *Queue) UsedIdx() uint16 { return q.d.peek16(q.Used + 2) }

// Used is one used ring element.
type Used struct {
	ID  uint16
	Len uint32
}

// Poll takes the next used element, if the device has published one. Like
// virtqueue_get_buf followed by virtqueue_enable_cb, it then sets used_event
// to ask for an interrupt at the next element.
func (q *Queue) Poll() (Used, bool) {
	if q.UsedIdx() == q.lastUsed {
		return Used{}, false
	}
	e := q.Used + 4 + 8*vmm.GPA(q.lastUsed%q.Size)
	u := Used{ID: uint16(q.d.peek32(e)), Len: q.d.peek32(e + 4)}
	q.lastUsed++
	if !q.Quiet {
		q.SetUsedEvent(q.lastUsed)
	}
	return u, true
}

// Wait waits for the next used element, failing the test after a few
// seconds.
func (q *Queue) Wait() Used {
	q.d.tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if u, ok := q.Poll(); ok {
			return u
		}
		if time.Now().After(deadline) {
			q.d.tb.Fatalf("queue %d: no used element after %v (used idx %d, device status %#x)",
				q.Index, waitTimeout, q.UsedIdx(), q.d.Status())
		}
		select {
		case <-q.d.irq:
		case <-time.After(time.Millisecond):
		}
	}
}

// Idle checks that the device publishes nothing more for a short while.
func (q *Queue) Idle() {
	q.d.tb.Helper()
	time.Sleep(20 * time.Millisecond)
	if u, ok := q.Poll(); ok {
		q.d.tb.Fatalf("queue %d: unexpected used element %+v", q.Index, u)
	}
}
