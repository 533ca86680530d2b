package blk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/devices/disk"
	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
	"govmm/vmm"
)

// memDisk is a disk.Disk in memory. Its calls can be made to fail, or to
// block until the test lets them go.
type memDisk struct {
	mu       sync.Mutex
	data     []byte
	ro       bool
	fail     error         // every call fails with it when set
	block    chan struct{} // when set, reads and writes wait for a value
	entered  chan struct{} // when set, told about each blocked call
	flushes  int
	discards [][2]int64
	zeroes   [][2]int64
	unmaps   []bool
}

func newMemDisk(sectors int) *memDisk { return &memDisk{data: make([]byte, sectors*sectorSize)} }

func (m *memDisk) wait() error {
	m.mu.Lock()
	block, entered, fail := m.block, m.entered, m.fail
	m.mu.Unlock()
	if block != nil {
		if entered != nil {
			entered <- struct{}{}
		}
		<-block
	}
	return fail
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if err := m.wait(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if err := m.wait(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memDisk) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return m.fail
}

func (m *memDisk) Size() uint64   { return uint64(len(m.data)) }
func (m *memDisk) ReadOnly() bool { return m.ro }
func (m *memDisk) Close() error   { return nil }

// calls returns what the backend was asked to do. (The test learns that a
// request completed through guest memory, which the race detector does not
// see as synchronisation; hence the lock.)
func (m *memDisk) calls() (flushes int, discards, zeroes [][2]int64, unmaps []bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes, slices.Clone(m.discards), slices.Clone(m.zeroes), slices.Clone(m.unmaps)
}

func (m *memDisk) flushCount() int {
	f, _, _, _ := m.calls()
	return f
}

func (m *memDisk) snapshot(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.data[off : off+n])
}

// trimDisk is a memDisk that can also discard and write zeroes.
type trimDisk struct{ *memDisk }

func (t trimDisk) Discard(off, length int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.discards = append(t.discards, [2]int64{off, length})
	return t.fail
}

func (t trimDisk) WriteZeroes(off, length int64, mayUnmap bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.zeroes = append(t.zeroes, [2]int64{off, length})
	t.unmaps = append(t.unmaps, mayUnmap)
	clear(t.data[off : off+length])
	return t.fail
}

var (
	_ disk.Discarder  = trimDisk{}
	_ disk.ZeroWriter = trimDisk{}
)

const memSize = 8 << 20

// harness is a virtio-blk device behind a transport, with a driver.
type harness struct {
	t    *testing.T
	mem  *vmm.GuestMemory
	drv  *virtiotest.Driver
	m    *virtio.MMIO
	dev  *Device
	q    *virtiotest.Queue
	logs *virtiotest.LogRecorder
}

// newHarness starts a device for cfg, negotiating want (all offered
// features if want is ^0) with a queue of 64 entries.
func newHarness(t *testing.T, cfg Config, want uint64) *harness {
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
	h.attach(cfg)
	h.q = h.drv.Init(want, 64)[0]
	return h
}

// attach puts a new device for cfg behind a new transport.
func (h *harness) attach(cfg Config) {
	cfg.Log = h.logs.Printf
	h.dev = New(cfg)
	h.m = virtio.NewMMIO(h.dev, virtio.MMIOConfig{Memory: h.mem, Interrupt: h.drv.Interrupt, Log: h.logs.Printf})
	h.t.Cleanup(h.m.Close)
	h.drv.Dev = h.m
}

func header(typ uint32, sector uint64) []byte {
	b := binary.LittleEndian.AppendUint32(nil, typ)
	b = binary.LittleEndian.AppendUint32(b, 0)
	return binary.LittleEndian.AppendUint64(b, sector)
}

// submit makes a request as Linux lays it out: header, data buffers, status.
func (h *harness) submit(typ uint32, sector uint64, out []byte, in int) *virtiotest.Request {
	bufs := []virtiotest.Buf{virtiotest.Readable(header(typ, sector))}
	if len(out) > 0 {
		bufs = append(bufs, virtiotest.Readable(out))
	}
	if in > 0 {
		bufs = append(bufs, virtiotest.Writable(in))
	}
	bufs = append(bufs, virtiotest.Writable(1))
	return h.q.Submit(bufs...)
}

// do makes a request and waits for its answer: the status, the data read
// and the used length.
func (h *harness) do(typ uint32, sector uint64, out []byte, in int) (status byte, data []byte, used uint32) {
	h.t.Helper()
	r := h.submit(typ, sector, out, in)
	u := h.q.Wait()
	if u.ID != r.Head {
		h.t.Fatalf("used ID %d, want %d", u.ID, r.Head)
	}
	if in > 0 {
		data = r.Writable(0)
		return r.Writable(1)[0], data, u.Len
	}
	return r.Writable(0)[0], nil, u.Len
}

func (h *harness) expect(what string, typ uint32, sector uint64, out []byte, in int, want byte) []byte {
	h.t.Helper()
	status, data, _ := h.do(typ, sector, out, in)
	if status != want {
		h.t.Errorf("%s: status %d, want %d", what, status, want)
	}
	return data
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestFeaturesAndConfig(t *testing.T) {
	const base = featureSegMax | featureBlkSize | featureFlush
	for _, c := range []struct {
		name string
		cfg  Config
		want uint64
	}{
		{"plain", Config{Disk: newMemDisk(100)}, base},
		{"trim", Config{Disk: trimDisk{newMemDisk(100)}}, base | featureDiscard | featureWriteZeroes},
		{"read-only", Config{Disk: trimDisk{newMemDisk(100)}, ReadOnly: true}, base | featureRO},
		{"read-only backend", Config{Disk: &memDisk{data: make([]byte, 51200), ro: true}}, base | featureRO},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := New(c.cfg)
			if d.Features() != c.want {
				t.Errorf("features %#x, want %#x", d.Features(), c.want)
			}
			cfg := d.Config()
			le := binary.LittleEndian
			if len(cfg) != configSize || le.Uint64(cfg[cfgCapacity:]) != 100 ||
				le.Uint32(cfg[cfgSegMax:]) != segMax || le.Uint32(cfg[cfgBlkSize:]) != 512 {
				t.Errorf("config %x", cfg)
			}
			discard := c.want&featureDiscard != 0
			if got := le.Uint32(cfg[cfgMaxDiscardSeg:]) != 0; got != discard {
				t.Errorf("max_discard_seg set %v, want %v", got, discard)
			}
			if discard && (le.Uint32(cfg[cfgMaxDiscardSectors:]) != maxZeroSectors ||
				le.Uint32(cfg[cfgDiscardSectorAlign:]) != 8 ||
				le.Uint32(cfg[cfgMaxWriteZeroesSectors:]) != maxZeroSectors ||
				le.Uint32(cfg[cfgMaxWriteZeroesSeg:]) != 1 || cfg[cfgWriteZeroesMayUnmap] != 1) {
				t.Errorf("discard/write zeroes config %x", cfg[36:])
			}
		})
	}
	// Through the transport: DeviceID 2 and the config at 0x100.
	h := newHarness(t, Config{Disk: newMemDisk(2048)}, 0)
	if h.drv.Read32(virtio.RegDeviceID) != 2 {
		t.Error("DeviceID is not 2")
	}
	b := make([]byte, 4)
	h.m.Read(virtio.RegConfig+cfgCapacity, b)
	if binary.LittleEndian.Uint32(b) != 2048 {
		t.Errorf("capacity through MMIO = %x", b)
	}
}

func TestReadWrite(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		t.Run(fmt.Sprint("indirect=", indirect), func(t *testing.T) {
			md := newMemDisk(64)
			h := newHarness(t, Config{Disk: md}, ^uint64(0))
			h.q.Indirect = indirect
			data := pattern(4096, 1)
			status, _, used := h.do(typeOut, 8, data, 0)
			if status != statusOK || used != 1 {
				t.Fatalf("write: status %d, used len %d; want OK, 1", status, used)
			}
			if !bytes.Equal(md.snapshot(8*512, 4096), data) {
				t.Fatal("disk does not hold the written data")
			}
			status, got, used := h.do(typeIn, 8, nil, 4096)
			if status != statusOK || used != 4097 || !bytes.Equal(got, data) {
				t.Fatalf("read: status %d, used len %d, data equal %v", status, used, bytes.Equal(got, data))
			}
			// The last sector of the disk, and data over several
			// descriptors.
			r := h.q.Submit(virtiotest.Readable(header(typeIn, 62)), virtiotest.Writable(100),
				virtiotest.Writable(924), virtiotest.Writable(1))
			h.q.Wait()
			if s := r.Writable(2)[0]; s != statusOK || !bytes.Equal(append(r.Writable(0), r.Writable(1)...), md.snapshot(62*512, 1024)) {
				t.Errorf("split read of the last sectors: status %d", s)
			}
		})
	}
}

func TestFlush(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: md}, featureFlush)
	h.expect("write", typeOut, 0, pattern(512, 0), 0, statusOK)
	if md.flushCount() != 0 {
		t.Error("write flushed although FLUSH was negotiated")
	}
	h.expect("flush", typeFlush, 0, nil, 0, statusOK)
	if md.flushCount() != 1 {
		t.Errorf("%d flushes, want 1", md.flushCount())
	}

	// Without FLUSH negotiated, every write is write-through.
	md2 := newMemDisk(64)
	h2 := newHarness(t, Config{Disk: md2}, 0)
	h2.expect("write", typeOut, 0, pattern(512, 0), 0, statusOK)
	if md2.flushCount() != 1 {
		t.Errorf("write-through: %d flushes after a write, want 1", md2.flushCount())
	}
}

func TestGetID(t *testing.T) {
	for _, c := range []struct{ serial, want string }{
		{"govmm-disk-1", "govmm-disk-1\x00\x00\x00\x00\x00\x00\x00\x00"},
		{"exactly-twenty-bytes", "exactly-twenty-bytes"},
		{"a-serial-longer-than-twenty-bytes", "a-serial-longer-than"},
		{"", strings.Repeat("\x00", 20)},
	} {
		h := newHarness(t, Config{Disk: newMemDisk(8), Serial: c.serial}, 0)
		status, got, used := h.do(typeGetID, 0, nil, idBytes)
		if status != statusOK || string(got) != c.want || used != idBytes+1 {
			t.Errorf("GET_ID for %q: status %d, %q, used len %d", c.serial, status, got, used)
		}
	}
}

func segment(sector uint64, sectors, flags uint32) []byte {
	b := binary.LittleEndian.AppendUint64(nil, sector)
	b = binary.LittleEndian.AppendUint32(b, sectors)
	return binary.LittleEndian.AppendUint32(b, flags)
}

func TestDiscardAndWriteZeroes(t *testing.T) {
	md := newMemDisk(1024)
	td := trimDisk{md}
	h := newHarness(t, Config{Disk: td}, ^uint64(0))
	h.expect("discard", typeDiscard, 0, append(segment(8, 16, 0), segment(100, 8, 0)...), 0, statusOK)
	if _, discards, _, _ := md.calls(); !slices.Equal(discards, [][2]int64{{8 * 512, 16 * 512}, {100 * 512, 8 * 512}}) {
		t.Errorf("discards %v", discards)
	}
	h.expect("write", typeOut, 10, pattern(1024, 3), 0, statusOK)
	h.expect("write zeroes", typeWriteZeroes, 10, segment(10, 2, flagUnmap), 0, statusOK)
	if _, _, _, unmaps := md.calls(); !bytes.Equal(md.snapshot(10*512, 1024), make([]byte, 1024)) || !slices.Equal(unmaps, []bool{true}) {
		t.Errorf("write zeroes: data not zero or unmap %v not passed", unmaps)
	}
	h.expect("write zeroes without unmap", typeWriteZeroes, 0, segment(0, 1, 0), 0, statusOK)
	if _, _, _, unmaps := md.calls(); unmaps[1] {
		t.Error("mayUnmap passed without the unmap flag")
	}

	for _, c := range []struct {
		name string
		typ  uint32
		segs []byte
		want byte
	}{
		{"discard with unmap", typeDiscard, segment(0, 1, flagUnmap), statusUnsupp},
		{"unknown flag", typeWriteZeroes, segment(0, 1, 2), statusUnsupp},
		{"beyond the disk", typeDiscard, segment(1020, 8, 0), statusIOErr},
		{"sector overflow", typeDiscard, segment(1<<60, 8, 0), statusIOErr},
		{"too many sectors", typeDiscard, segment(0, maxZeroSectors+1, 0), statusIOErr},
		{"no segments", typeDiscard, nil, statusIOErr},
		{"partial segment", typeDiscard, segment(0, 1, 0)[:12], statusIOErr},
		{"too many segments", typeWriteZeroes, append(segment(0, 1, 0), segment(1, 1, 0)...), statusIOErr},
		{"a bad segment after a good one", typeDiscard, append(segment(0, 1, 0), segment(2000, 1, 0)...), statusIOErr},
	} {
		_, discards, zeroes, _ := md.calls()
		before := len(discards) + len(zeroes)
		h.expect(c.name, c.typ, 0, c.segs, 0, c.want)
		if _, discards, zeroes, _ := md.calls(); len(discards)+len(zeroes) != before {
			t.Errorf("%s: the backend was called", c.name)
		}
	}

	// Not negotiated: UNSUPP.
	h2 := newHarness(t, Config{Disk: trimDisk{newMemDisk(64)}}, 0)
	h2.expect("discard not negotiated", typeDiscard, 0, segment(0, 1, 0), 0, statusUnsupp)
}

func TestBadRequests(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: md}, ^uint64(0))
	for _, c := range []struct {
		name   string
		typ    uint32
		sector uint64
		out    []byte
		in     int
		want   byte
	}{
		{"unknown type", 99, 0, nil, 0, statusUnsupp},
		{"GET_LIFETIME", 10, 0, nil, 0, statusUnsupp},
		{"read beyond the disk", typeIn, 64, nil, 512, statusIOErr},
		{"read across the end", typeIn, 63, nil, 1024, statusIOErr},
		{"read at a huge sector", typeIn, 1 << 63, nil, 512, statusIOErr},
		{"read of half a sector", typeIn, 0, nil, 256, statusIOErr},
		{"write beyond the disk", typeOut, 64, pattern(512, 0), 0, statusIOErr},
		{"write of a partial sector", typeOut, 0, pattern(513, 0), 0, statusIOErr},
		{"read with data out", typeIn, 0, pattern(512, 0), 512, statusIOErr},
		{"write with data in", typeOut, 0, pattern(512, 0), 512, statusIOErr},
		{"flush with data", typeFlush, 0, pattern(512, 0), 0, statusIOErr},
		{"GET_ID with data out", typeGetID, 0, pattern(20, 0), 20, statusIOErr},
	} {
		h.expect(c.name, c.typ, c.sector, c.out, c.in, c.want)
	}
	if !bytes.Equal(md.snapshot(0, 64*512), make([]byte, 64*512)) {
		t.Error("a refused request changed the disk")
	}
	if !h.logs.Contains("data in the wrong direction") || !h.logs.Contains("beyond the disk") {
		t.Errorf("bad requests not logged: %q", h.logs.Lines())
	}
	// The device still works.
	h.expect("good write", typeOut, 0, pattern(512, 9), 0, statusOK)
}

// Requests whose framing is broken: answered with IOERR where a status
// byte can be found, with nothing where not; the device survives.
func TestHostileRequests(t *testing.T) {
	h := newHarness(t, Config{Disk: newMemDisk(64)}, ^uint64(0))
	d, q := h.drv, h.q

	// A header split over two descriptors is fine (§2.6.4).
	hdr := header(typeIn, 1)
	r := q.Submit(virtiotest.Readable(hdr[:5]), virtiotest.Readable(hdr[5:]), virtiotest.Writable(513))
	if u := q.Wait(); u.Len != 513 || r.Writable(0)[512] != statusOK {
		t.Errorf("split header: used %+v, status %d", u, r.Writable(0)[512])
	}

	// A short header.
	r = q.Submit(virtiotest.Readable(hdr[:8]), virtiotest.Writable(1))
	if u := q.Wait(); u.Len != 1 || r.Writable(0)[0] != statusIOErr {
		t.Errorf("short header: used %+v, status %d", u, r.Writable(0)[0])
	}

	// No writable byte at all: nothing to answer in.
	q.Submit(virtiotest.Readable(hdr))
	if u := q.Wait(); u.Len != 0 {
		t.Errorf("request without status: used %+v", u)
	}

	// A data buffer outside RAM, then a sound status byte: IOERR there.
	st := d.Alloc(1, 1)
	d.Poke(st, []byte{0xee})
	q.SetDesc(20, uint64(d.Alloc(16, 8)), 16, virtiotest.DescNext, 21)
	q.SetDesc(21, memSize+0x10000, 512, virtiotest.DescWrite|virtiotest.DescNext, 22)
	q.SetDesc(22, uint64(st), 1, virtiotest.DescWrite, 0)
	q.Publish(20)
	q.Kick()
	if u := q.Wait(); u.ID != 20 || u.Len != 1 || d.Peek(st, 1)[0] != statusIOErr {
		t.Errorf("buffer outside RAM: used %+v, status %d", u, d.Peek(st, 1)[0])
	}

	// A looping chain: no end, so no status byte.
	q.SetDesc(30, uint64(st), 1, virtiotest.DescWrite|virtiotest.DescNext, 31)
	q.SetDesc(31, uint64(st), 1, virtiotest.DescWrite|virtiotest.DescNext, 30)
	d.Poke(st, []byte{0xee})
	q.Publish(30)
	q.Kick()
	if u := q.Wait(); u.ID != 30 || u.Len != 0 || d.Peek(st, 1)[0] != 0xee {
		t.Errorf("looping chain: used %+v, byte %#x", u, d.Peek(st, 1)[0])
	}

	h.expect("after the hostile requests", typeIn, 0, nil, 512, statusOK)
}

func TestReadOnly(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: md, ReadOnly: true}, ^uint64(0))
	h.expect("write", typeOut, 0, pattern(512, 1), 0, statusIOErr)
	if !bytes.Equal(md.snapshot(0, 512), make([]byte, 512)) {
		t.Error("read-only disk written")
	}
	h.expect("discard", typeDiscard, 0, segment(0, 1, 0), 0, statusUnsupp)
	h.expect("read", typeIn, 0, nil, 512, statusOK)
	h.expect("flush", typeFlush, 0, nil, 0, statusOK)
	if md.flushCount() != 0 {
		t.Error("read-only disk flushed")
	}
}

func TestBackendFailure(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: trimDisk{md}}, ^uint64(0))
	md.mu.Lock()
	md.fail = errors.New("the disk is on fire")
	md.mu.Unlock()
	h.expect("read", typeIn, 0, nil, 512, statusIOErr)
	h.expect("write", typeOut, 0, pattern(512, 1), 0, statusIOErr)
	h.expect("flush", typeFlush, 0, nil, 0, statusIOErr)
	h.expect("discard", typeDiscard, 0, segment(0, 1, 0), 0, statusIOErr)
	if !h.logs.Contains("the disk is on fire") {
		t.Error("backend error not logged")
	}
	md.mu.Lock()
	md.fail = nil
	md.mu.Unlock()
	h.expect("read after recovery", typeIn, 0, nil, 512, statusOK)
}

// Many requests at once, served by the worker pool: every one completes
// with the right data.
func TestConcurrentRequests(t *testing.T) {
	md := newMemDisk(1024)
	h := newHarness(t, Config{Disk: md}, ^uint64(0))
	const n = 20 // 3 descriptors each: at most 21 in a 64-entry queue
	for round := range 3 {
		for i := range n {
			h.submit(typeOut, uint64(i*8), pattern(4096, byte(i+round)), 0)
		}
		for range n {
			h.q.Wait()
		}
		var reqs []*virtiotest.Request
		for i := range n {
			reqs = append(reqs, h.submit(typeIn, uint64(i*8), nil, 4096))
		}
		for range n {
			h.q.Wait()
		}
		for i, r := range reqs {
			if !bytes.Equal(r.Writable(0), pattern(4096, byte(i+round))) || r.Writable(1)[0] != statusOK {
				t.Fatalf("round %d request %d: wrong data or status", round, i)
			}
		}
	}
}

// Pause waits for a request blocked in the backend.
func TestPauseWaitsForInFlight(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: md}, ^uint64(0))
	md.mu.Lock()
	md.block, md.entered = make(chan struct{}), make(chan struct{}, 1)
	md.mu.Unlock()
	r := h.submit(typeIn, 0, nil, 512)
	<-md.entered
	paused := make(chan struct{})
	go func() { h.m.Pause(); close(paused) }()
	select {
	case <-paused:
		t.Fatal("Pause returned while a request was in the backend")
	case <-time.After(30 * time.Millisecond):
	}
	md.block <- struct{}{}
	<-paused
	if h.q.UsedIdx() != 1 || r.Writable(1)[0] != statusOK {
		t.Errorf("after Pause: used idx %d, status %d", h.q.UsedIdx(), r.Writable(1)[0])
	}
	md.mu.Lock()
	md.block = nil
	md.mu.Unlock()
	h.m.Resume()
	h.q.Wait()
}

// A device saved after some requests continues in a new device from the
// same ring indices.
func TestSaveRestore(t *testing.T) {
	md := newMemDisk(256)
	cfg := Config{Disk: trimDisk{md}, Serial: "disk-a"}
	h := newHarness(t, cfg, ^uint64(0))
	for i := range 5 {
		h.expect("write", typeOut, uint64(i), pattern(512, byte(i)), 0, statusOK)
	}
	h.m.Pause()
	r := h.submit(typeIn, 3, nil, 512) // made while the device is paused
	s, err := h.m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	h.m.Close()

	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"capacity", Config{Disk: trimDisk{newMemDisk(255)}, Serial: "disk-a"}, "256 sectors"},
		{"read-only", Config{Disk: trimDisk{md}, ReadOnly: true, Serial: "disk-a"}, "not offered"}, // RO offers no DISCARD
		{"no discard", Config{Disk: md, Serial: "disk-a"}, "not offered"},
	} {
		h.attach(c.cfg)
		if err := h.m.RestoreState(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("restore onto a different disk (%s): %v", c.name, err)
		}
	}
	h.attach(Config{Disk: trimDisk{md}}) // the serial comes from the state
	if err := h.m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	h.m.Resume()
	h.q.Wait()
	if !bytes.Equal(r.Writable(0), pattern(512, 3)) || r.Writable(1)[0] != statusOK {
		t.Error("request made during the migration: wrong answer")
	}
	if _, id, _ := h.do(typeGetID, 0, nil, idBytes); string(id[:6]) != "disk-a" {
		t.Errorf("serial after restore %q", id)
	}
	if h.q.UsedIdx() != 7 {
		t.Errorf("used idx %d, want 7", h.q.UsedIdx())
	}
}

// Data read into guest memory reaches the dirty log.
func TestReadMarksDirty(t *testing.T) {
	md := newMemDisk(64)
	h := newHarness(t, Config{Disk: md}, 0)
	h.drv.Alloc(1, 4096)
	dirty := virtiotest.TrackDirty(t, h.mem)
	r := h.submit(typeIn, 0, nil, 3*4096)
	h.q.Wait()
	got := dirty()
	first := r.WritableGPA(0)
	for p := first &^ 0xfff; p < first+3*4096; p += 4096 {
		if !slices.Contains(got, p) {
			t.Errorf("page %#x of the read buffer not dirty (dirty: %#x)", p, got)
		}
	}
	if !slices.Contains(got, h.q.Used&^0xfff) {
		t.Error("used ring page not dirty")
	}
}

// The device's own state check: the destination must show the same disk.
func TestRestoreStateChecks(t *testing.T) {
	d := New(Config{Disk: newMemDisk(100), Serial: "x"})
	for _, c := range []struct{ state, want string }{
		{`{"Serial":"y","ReadOnly":true,"Capacity":100}`, "read-only"},
		{`{"Serial":"y","ReadOnly":false,"Capacity":99}`, "100"},
		{`{"Serial":"123456789012345678901","ReadOnly":false,"Capacity":100}`, "longer than 20"},
		{`[1]`, "cannot unmarshal"},
	} {
		if err := d.RestoreState([]byte(c.state)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RestoreState(%s) = %v, want an error containing %q", c.state, err, c.want)
		}
	}
	if s, _ := d.SaveState(); string(s) != `{"Serial":"x","ReadOnly":false,"Capacity":100}` {
		t.Errorf("state after refused restores: %s", s)
	}
}
