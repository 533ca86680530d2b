package virtio

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"

	"govmm/vmm"
)

// A split virtqueue (virtio 1.2 §2.7) is three areas of guest RAM that the
// driver allocates and the device only points into:
//
//	descriptor table  16-aligned  size × struct virtq_desc {addr, len, flags, next}
//	avail ring        2-aligned   le16 flags, le16 idx, le16 ring[size], le16 used_event
//	used ring         4-aligned   le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event
//
// The driver writes descriptors and the avail ring; the device reads them
// and writes the used ring. Both idx fields count entries ever added,
// wrapping at 2^16; slot i of a ring holds entry number i mod size. The
// device keeps its own count of what it has taken from the avail ring
// (lastAvail, "last_avail_idx" in QEMU and the spec) and of what it has put
// on the used ring (usedIdx).

// Ring flags (virtio 1.2 §2.7.6, §2.7.8).
const (
	// availFlagNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT: the driver
	// asks not to be interrupted (only meaningful without EVENT_IDX).
	availFlagNoInterrupt = 1
)

// MaxQueueSize is the largest size of a split virtqueue (virtio 1.2 §2.7:
// "Queue Size value is always a power of 2. The maximum Queue Size value
// is 32768").
const MaxQueueSize = 32768

// Queue is one virtqueue as the device sees it once the driver has set
// DRIVER_OK. Devices take chains with Pop and give them back with Push.
// Pop is called by one goroutine at a time; Push may be called from several
// (a worker pool), as completions may come in any order.
type Queue struct {
	index    int
	size     uint16
	eventIdx bool // VIRTIO_F_EVENT_IDX negotiated
	indirect bool // VIRTIO_F_INDIRECT_DESC negotiated
	mem      *vmm.GuestMemory

	descTable     []byte  // size descriptors
	availRing     []byte  // the whole avail ring
	usedGPA       vmm.GPA // the used ring, for the dirty log
	usedRing      []byte  // the whole used ring
	availEventGPA vmm.GPA

	// The ring fields both sides change, accessed atomically.
	availFlags, availIdx, usedEvent le16 // written by the driver
	usedIdxField, availEvent        le16 // written by us

	notified  chan struct{} // the transport's notification channel for this queue index
	transport *MMIO         // raises interrupts, handles a broken ring

	mu        sync.Mutex
	idle      sync.Cond // signalled when inFlight drops to 0
	paused    bool      // Pop hands out nothing (migration, reset)
	inFlight  int       // chains popped and not pushed yet
	lastAvail uint16    // avail ring entries taken
	usedIdx   uint16    // used ring entries written
}

// ringLayout is where the driver put a queue: the QueueNum and
// QueueDesc/QueueDriver/QueueDevice registers (virtio 1.2 §4.2.2).
type ringLayout struct {
	size                 uint16
	desc, driver, device vmm.GPA // descriptor table, avail ring, used ring
}

// newQueue checks a queue's layout and maps its rings. It is where the
// ring addresses the driver wrote are validated, once, so that the ring
// accesses later need no checks.
func newQueue(m *MMIO, index int, l ringLayout, maxSize uint16, features uint64) (*Queue, error) {
	// UNTRUSTED: the size and the addresses come from the guest (or from
	// a saved state).
	if l.size == 0 || l.size > maxSize || bits.OnesCount16(l.size) != 1 {
		return nil, fmt.Errorf("queue %d: size %d is not a power of two in 1..%d", index, l.size, maxSize)
	}
	n := uint64(l.size)
	q := &Queue{
		index:     index,
		size:      l.size,
		eventIdx:  features&FeatureEventIdx != 0,
		indirect:  features&FeatureIndirectDesc != 0,
		mem:       m.mem,
		usedGPA:   l.device,
		notified:  m.notified[index],
		transport: m,
	}
	q.idle.L = &q.mu
	var err error
	if q.descTable, err = mapRing(m.mem, "descriptor table", l.desc, 16, descriptorSize*n); err != nil {
		return nil, fmt.Errorf("queue %d: %w", index, err)
	}
	if q.availRing, err = mapRing(m.mem, "avail ring", l.driver, 2, 6+2*n); err != nil {
		return nil, fmt.Errorf("queue %d: %w", index, err)
	}
	if q.usedRing, err = mapRing(m.mem, "used ring", l.device, 4, 6+8*n); err != nil {
		return nil, fmt.Errorf("queue %d: %w", index, err)
	}
	q.availEventGPA = l.device + vmm.GPA(4+8*n)
	for _, f := range []struct {
		field *le16
		gpa   vmm.GPA
	}{
		{&q.availFlags, l.driver},
		{&q.availIdx, l.driver + 2},
		{&q.usedEvent, l.driver + vmm.GPA(4+2*n)},
		{&q.usedIdxField, l.device + 2},
		{&q.availEvent, q.availEventGPA},
	} {
		if *f.field, err = newLE16(m.mem, f.gpa); err != nil {
			return nil, fmt.Errorf("queue %d: %w", index, err)
		}
	}
	return q, nil
}

// mapRing checks one ring area (alignment and sizes from virtio 1.2 §2.7
// "Virtqueues") and returns its bytes.
func mapRing(mem *vmm.GuestMemory, what string, gpa vmm.GPA, align, size uint64) ([]byte, error) {
	if uint64(gpa)%align != 0 {
		return nil, fmt.Errorf("%s at %#x is not %d-byte aligned", what, uint64(gpa), align)
	}
	b, err := mem.Slice(gpa, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// Index is the queue's number (0 for virtio-blk's only request queue).
func (q *Queue) Index() int { return q.index }

// Size is the number of descriptors the driver gave the queue.
func (q *Queue) Size() uint16 { return q.size }

// Notified delivers a value after the driver notified the queue (a write
// to QueueNotify, usually through an ioeventfd) or when the transport wants
// the device to look at the ring again (activation, Resume). Notifications
// coalesce: one value may stand for many, so a device drains the ring with
// Pop after each.
func (q *Queue) Notified() <-chan struct{} { return q.notified }

// Pop takes the next chain the driver made available, or returns nil if
// there is none, the queue is paused, or the device is broken. A returned
// chain must be given back with Push, also if its Err is set (Pop has
// logged the error already).
func (q *Queue) Pop() *Chain {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.paused || q.transport.needsReset.Load() {
		return nil
	}
	head, ok, err := q.nextHead()
	if err != nil {
		q.transport.fail(err)
		return nil
	}
	if !ok {
		return nil
	}
	q.inFlight++
	c := q.readChain(head)
	if c.err != nil {
		q.transport.logf("queue %d: %v", q.index, c.err)
	}
	return c
}

// Push returns a chain to the driver: it writes the used element (the head
// and c.Written(), virtio 1.2 §2.7.8.2), then publishes it by advancing
// used->idx, and interrupts the guest unless the driver suppressed it.
// On a device that needs a reset, the rings are left alone (the driver
// must reset it anyway, and QEMU does the same).
func (q *Queue) Push(c *Chain) { q.PushAll(c) }

// PushAll returns several chains at once, in order: it writes all their
// used elements, then advances used->idx once, so that the driver sees
// all of them or none. virtio-net needs this for a frame spread over
// several receive buffers (VIRTIO_NET_F_MRG_RXBUF, virtio 1.2 §5.1.6.4):
// Linux's receive_mergeable (drivers/net/virtio_net.c) takes the first
// buffer, reads num_buffers from it, and drops the frame if the other
// buffers are not in the used ring yet. QEMU's virtio-net does the same
// (virtqueue_fill per buffer, one virtqueue_flush).
func (q *Queue) PushAll(cs ...*Chain) {
	q.mu.Lock()
	var take []*Chain
	for _, c := range cs {
		if c.queue != q || c.pushed {
			q.transport.logf("BUG: %v pushed twice or to the wrong queue %d", c, q.index)
			continue
		}
		c.pushed = true
		q.inFlight--
		take = append(take, c)
	}
	if q.inFlight == 0 {
		q.idle.Broadcast()
	}
	if len(take) == 0 || q.transport.needsReset.Load() {
		q.mu.Unlock()
		return
	}
	old := q.usedIdx
	for _, c := range take {
		off := 4 + 8*int(q.usedIdx&(q.size-1))
		binary.LittleEndian.PutUint32(q.usedRing[off:], uint32(c.head))      // id
		binary.LittleEndian.PutUint32(q.usedRing[off+4:], uint32(c.written)) // len; ≤ maxChainBytes
		q.mem.MarkDirty(q.usedGPA+vmm.GPA(off), 8)
		q.usedIdx++
	}
	q.usedIdxField.store(q.usedIdx) // after the elements: the atomic store orders it
	q.mem.MarkDirty(q.usedGPA+2, 2)
	interrupt := q.needsInterrupt(old, q.usedIdx)
	q.mu.Unlock()
	if interrupt {
		q.transport.raise(InterruptUsedBuffer)
	}
}

// needsInterrupt decides whether the driver wants to hear about the used
// entries from old up to new (virtio 1.2 §2.7.7, §2.7.10).
func (q *Queue) needsInterrupt(old, new uint16) bool {
	if q.eventIdx {
		// vring_need_event(): interrupt if used_event, the entry the
		// driver wants to be woken after, is among those just
		// published. The used_event load comes after the used->idx
		// store (a full barrier), pairing with the driver's barrier
		// between writing used_event and re-reading used->idx.
		event := q.usedEvent.load()
		return new-event-1 < new-old
	}
	return q.availFlags.load()&availFlagNoInterrupt == 0
}

// notify wakes the device's goroutine for this queue (non-blocking).
func (q *Queue) notify() {
	select {
	case q.notified <- struct{}{}:
	default:
	}
}

// pause stops Pop from handing out chains and waits until every chain
// already handed out has been pushed. Afterwards guest RAM holds every
// result and the device touches the rings no more.
func (q *Queue) pause() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.paused = true
	for q.inFlight > 0 {
		q.idle.Wait()
	}
}

// resume undoes pause and has the device look at the ring, since the
// driver's notifications meanwhile may have been consumed without effect.
func (q *Queue) resume() {
	q.mu.Lock()
	q.paused = false
	q.mu.Unlock()
	q.notify()
}

// indices returns last_avail_idx and the used idx, for the saved state.
func (q *Queue) indices() (lastAvail, used uint16, inFlight int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lastAvail, q.usedIdx, q.inFlight
}
