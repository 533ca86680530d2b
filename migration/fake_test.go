package migration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"
)

// fakeClock is simulated time: it moves only when Sleep is called, and then
// runs the fake guest for that long. Send's rate limiter is the only thing
// that sleeps, so a migration's timing is exact and repeatable.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	slept   time.Duration
	advance func(d time.Duration) // the fake guest running for d
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.slept += d
	adv := c.advance
	c.mu.Unlock()
	if adv != nil {
		adv(d)
	}
	return ctx.Err()
}

// fakeSource is a VM whose RAM is a []byte. Its "guest" writes pages of a
// hot set, either at a rate in simulated time (rate pages/s) or, in burst
// mode, the whole hot set whenever time moves. It records what Send did.
type fakeSource struct {
	mu       sync.Mutex
	layout   []Region
	idx      *pageIndex
	mem      []byte // page n of the layout at mem[n*PageSize:]
	state    []byte
	tracking bool
	dirty    map[uint64]bool
	paused   bool
	stopped  bool
	resumes  int
	reads    map[uint64]int // ReadPage calls per GPA

	hot    []uint64 // GPAs the guest writes, round-robin
	rate   float64  // pages per simulated second
	burst  bool
	carry  float64
	cursor int
	writes uint64

	failSave error
	drains   int // DirtyPages calls
	// loseWrite, if not 0, is a page SaveState changes without marking it
	// dirty: a device that forgot MarkDirty.
	loseWrite uint64
}

func newFakeSource(layout []Region) *fakeSource {
	if _, err := ValidateLayout(layout, 0); err != nil {
		panic(err)
	}
	idx := newPageIndex(layout)
	return &fakeSource{
		layout: layout,
		idx:    idx,
		mem:    make([]byte, idx.total*PageSize),
		state:  []byte("machine state v1: vcpu regs, lapic, uart"),
		dirty:  map[uint64]bool{},
		reads:  map[uint64]int{},
	}
}

func (f *fakeSource) page(gpa uint64) []byte {
	n, err := f.idx.index(gpa)
	if err != nil {
		panic(err)
	}
	return f.mem[n*PageSize : (n+1)*PageSize]
}

// fill gives every third page a non-zero pattern; the rest stay zero.
func (f *fakeSource) fill() {
	for n := uint64(0); n < f.idx.total; n++ {
		if n%3 == 0 {
			p := f.mem[n*PageSize : (n+1)*PageSize]
			for i := range p {
				p[i] = byte(n*7 + uint64(i)*13 + 1)
			}
		}
	}
}

// write is the guest storing to gpa: bump a counter in the page.
func (f *fakeSource) write(gpa uint64) {
	p := f.page(gpa)
	f.writes++
	p[0]++
	p[PageSize-1] = byte(f.writes)
	if f.tracking {
		f.dirty[gpa] = true
	}
}

// run lets the guest execute for d of simulated time.
func (f *fakeSource) run(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused || f.stopped || len(f.hot) == 0 {
		return
	}
	if f.burst {
		for _, gpa := range f.hot {
			f.write(gpa)
		}
		return
	}
	f.carry += f.rate * d.Seconds()
	for ; f.carry >= 1; f.carry-- {
		f.write(f.hot[f.cursor%len(f.hot)])
		f.cursor++
	}
}

func (f *fakeSource) MemoryLayout() []Region { return f.layout }

func (f *fakeSource) ReadPage(gpa uint64, buf []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads[gpa]++
	copy(buf, f.page(gpa))
	return nil
}

func (f *fakeSource) StartDirtyTracking() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tracking = true
	return nil
}

func (f *fakeSource) DirtyPages() ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.tracking {
		return nil, errors.New("dirty tracking is off")
	}
	f.drains++
	out := f.dirtyGPAs()
	clear(f.dirty)
	return out, nil
}

func (f *fakeSource) dirtyGPAs() []uint64 {
	out := make([]uint64, 0, len(f.dirty))
	for gpa := range f.dirty {
		out = append(out, gpa)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// peekingSource is a fakeSource that is also a DirtyPeeker, as KVM's
// manual dirty-log mode makes the machine. With canPeek false it answers
// ok=false, as the machine does on a KVM without that mode.
type peekingSource struct {
	*fakeSource
	canPeek bool
	peeks   int
}

func (p *peekingSource) PeekDirtyPages() ([]uint64, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tracking {
		return nil, false, errors.New("dirty tracking is off")
	}
	p.peeks++
	if !p.canPeek {
		return nil, false, nil
	}
	return p.dirtyGPAs(), true, nil
}

func (f *fakeSource) StopDirtyTracking() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tracking = false
	clear(f.dirty)
	return nil
}

func (f *fakeSource) Pause() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = true
	return nil
}

func (f *fakeSource) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = false
	f.resumes++
	return nil
}

func (f *fakeSource) SaveState() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.paused {
		return nil, errors.New("SaveState while running")
	}
	if f.failSave != nil {
		return nil, f.failSave
	}
	// Quiescing devices writes guest RAM (a virtio used ring): the final
	// memory pass must catch this.
	f.write(f.layout[0].Start)
	if f.loseWrite != 0 {
		f.page(f.loseWrite)[7]++
	}
	return bytes.Clone(f.state), nil
}

func (f *fakeSource) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
}

// fakeTarget stores pages sparsely (absent = zero), so a fuzzed layout
// costs nothing.
type fakeTarget struct {
	mu         sync.Mutex
	layout     []Region
	pages      map[uint64][]byte
	writes     int
	zeroWrites int
	state      []byte
	restored   bool
	resumed    bool

	failPrepare error
	failRestore error
	failResume  error
	onWrite     func(gpa uint64) error
}

func newFakeTarget() *fakeTarget { return &fakeTarget{pages: map[uint64][]byte{}} }

func (t *fakeTarget) PrepareMemory(layout []Region) error {
	if t.failPrepare != nil {
		return t.failPrepare
	}
	t.layout = append([]Region(nil), layout...)
	return nil
}

func (t *fakeTarget) WritePage(gpa uint64, data []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.onWrite != nil {
		if err := t.onWrite(gpa); err != nil {
			return err
		}
	}
	if t.restored {
		return errors.New("WritePage after RestoreState")
	}
	t.writes++
	if len(data) == 0 {
		t.zeroWrites++
		delete(t.pages, gpa)
		return nil
	}
	if len(data) != PageSize {
		return fmt.Errorf("page of %d bytes", len(data))
	}
	t.pages[gpa] = bytes.Clone(data)
	return nil
}

// ReadPage makes fakeTarget a PageReader, for Options.Verify.
func (t *fakeTarget) ReadPage(gpa uint64, buf []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.pages[gpa]; ok {
		copy(buf, p)
	} else {
		clear(buf[:PageSize])
	}
	return nil
}

func (t *fakeTarget) RestoreState(blob []byte) error {
	if t.failRestore != nil {
		return t.failRestore
	}
	t.state = bytes.Clone(blob)
	t.restored = true
	return nil
}

func (t *fakeTarget) Resume() error {
	if !t.restored {
		return errors.New("Resume before RestoreState")
	}
	if t.failResume != nil {
		return t.failResume
	}
	t.resumed = true
	return nil
}

// sameMemory fails the test unless the target holds exactly the source's RAM.
func sameMemory(t *testing.T, src *fakeSource, tgt *fakeTarget) {
	t.Helper()
	var zero [PageSize]byte
	bad := 0
	for n := uint64(0); n < src.idx.total; n++ {
		gpa := src.idx.gpa(n)
		want := src.mem[n*PageSize : (n+1)*PageSize]
		got, ok := tgt.pages[gpa]
		if !ok {
			got = zero[:]
		}
		if !bytes.Equal(got, want) {
			if bad < 5 {
				t.Errorf("page %#x differs between source and destination", gpa)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d pages differ", bad)
	}
}

// result is what a migration between a source and a target produced.
type result struct {
	rep     *Report
	err     error
	rrep    *ReceiveReport
	recvErr error
}

// migrate runs Send and Receive over net.Pipe. wrap, if not nil, wraps the
// source's end of the connection (fault injection).
func migrate(t *testing.T, src Source, tgt Target, opts Options, ropts ReceiveOptions, wrap func(net.Conn) net.Conn, progress func(Round)) result {
	t.Helper()
	a, b := net.Pipe()
	var res result
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.rrep, res.recvErr = Receive(context.Background(), b, tgt, ropts)
	}()
	var conn net.Conn = a
	if wrap != nil {
		conn = wrap(a)
	}
	res.rep, res.err = Send(context.Background(), conn, src, opts, progress)
	a.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Receive did not return after the source closed the connection")
	}
	b.Close()
	return res
}

// cutConn breaks the connection when a frame matching cut is written: it
// writes the first keep bytes of that frame (-1: all of it), then closes.
type cutConn struct {
	net.Conn
	mu     sync.Mutex
	counts map[msgType]int // frames written, by type
	cut    func(t msgType, counts map[msgType]int) bool
	keep   int
	done   bool
	drop   msgType // if set, a reply of this type breaks the connection instead
}

// cutOn breaks the connection at the nth frame of type t.
func cutOn(t msgType, nth, keep int) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn {
		return &cutConn{Conn: c, counts: map[msgType]int{}, keep: keep,
			cut: func(got msgType, counts map[msgType]int) bool { return got == t && counts[t] == nth }}
	}
}

// cutInRound breaks the connection at the first Pages frame of round n > 1.
func cutInRound(n, keep int) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn {
		return &cutConn{Conn: c, counts: map[msgType]int{}, keep: keep,
			cut: func(got msgType, counts map[msgType]int) bool { return got == msgPages && counts[msgRoundEnd] == n-1 }}
	}
}

// dropReply breaks the connection when the destination's reply of type t
// arrives, before Send sees it.
func dropReply(t msgType) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn {
		return &cutConn{Conn: c, counts: map[msgType]int{}, drop: t,
			cut: func(msgType, map[msgType]int) bool { return false }}
	}
}

func (c *cutConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	// Frame headers are read 5 bytes at a time; checksums 4.
	if c.drop != 0 && n > 0 && len(p) == frameHeader && msgType(p[0]) == c.drop {
		c.Conn.Close()
		return 0, errCut
	}
	return n, err
}

var errCut = errors.New("connection cut by the test")

func (c *cutConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return 0, errCut
	}
	t := msgType(p[0])
	c.counts[t]++
	if !c.cut(t, c.counts) {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	c.done = true
	c.mu.Unlock()
	keep := c.keep
	if keep < 0 || keep > len(p) {
		keep = len(p)
	}
	n, _ := c.Conn.Write(p[:keep])
	c.Conn.Close()
	if n == len(p) {
		return n, nil // the whole frame left; the break comes after
	}
	return n, errCut
}
