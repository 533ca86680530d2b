package virtio_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
	"govmm/vmm"
)

// echo is a device type made up for testing the transport: each request's
// readable bytes are written back, reversed, into its writable part.
type echo struct {
	sizes    []uint16
	features uint64
	config   []byte
	// hold, if set, makes each request wait for a value before it is
	// answered: a slow backend.
	hold chan struct{}
	// popped, if set, receives a value each time a chain is popped.
	popped chan struct{}

	mu          sync.Mutex
	activations []uint64 // features passed to each Activate
	resets      int
	chainErrs   []error
	configWrite []byte
	state       string // what SaveState returns and RestoreState accepts
	stop        chan struct{}
	wg          sync.WaitGroup
}

func newEcho(sizes ...uint16) *echo {
	return &echo{sizes: sizes, features: 1<<0 | 1<<5, config: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, state: `"echo"`}
}

func (e *echo) Type() virtio.DeviceType { return 42 }
func (e *echo) Features() uint64        { return e.features }
func (e *echo) QueueMaxSizes() []uint16 { return e.sizes }
func (e *echo) Config() []byte          { return e.config }
func (e *echo) WriteConfig(off uint64, data []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.configWrite = append([]byte{byte(off)}, data...)
}

func (e *echo) Activate(features uint64, queues []*virtio.Queue) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.activations = append(e.activations, features)
	stop := make(chan struct{})
	e.stop = stop
	for _, q := range queues {
		if q != nil {
			e.wg.Go(func() { e.serve(q, stop) })
		}
	}
	return nil
}

func (e *echo) serve(q *virtio.Queue, stop chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-q.Notified():
		}
		for c := q.Pop(); c != nil; c = q.Pop() {
			if e.popped != nil {
				e.popped <- struct{}{}
			}
			if e.hold != nil {
				<-e.hold
			}
			if c.Err() != nil {
				e.mu.Lock()
				e.chainErrs = append(e.chainErrs, c.Err())
				e.mu.Unlock()
			} else {
				b := make([]byte, c.ReadableLen())
				c.ReadAt(b, 0)
				slices.Reverse(b)
				c.WriteAt(b, 0)
			}
			q.Push(c)
		}
	}
}

func (e *echo) Reset() {
	e.mu.Lock()
	stop := e.stop
	e.stop = nil
	e.resets++
	e.mu.Unlock()
	if stop != nil {
		close(stop)
		e.wg.Wait()
	}
}

func (e *echo) SaveState() (json.RawMessage, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return json.RawMessage(e.state), nil
}

func (e *echo) RestoreState(s json.RawMessage) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if string(s) != `"echo"` && string(s) != `"echo2"` {
		return fmt.Errorf("echo: bad state %s", s)
	}
	e.state = string(s)
	return nil
}

func (e *echo) counts() (activations, resets int, chainErrs []error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.activations), e.resets, slices.Clone(e.chainErrs)
}

const memSize = 4 << 20

// harness is an echo device behind a transport, and a driver for it.
type harness struct {
	t    *testing.T
	mem  *vmm.GuestMemory
	drv  *virtiotest.Driver
	m    *virtio.MMIO
	dev  *echo
	logs *virtiotest.LogRecorder
}

func newHarness(t *testing.T, dev *echo) *harness {
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), dev: dev, logs: &virtiotest.LogRecorder{}}
	h.m = h.attach(dev)
	return h
}

// attach puts dev behind a new transport on the same memory and driver.
func (h *harness) attach(dev *echo) *virtio.MMIO {
	m := virtio.NewMMIO(dev, virtio.MMIOConfig{Memory: h.mem, Interrupt: h.drv.Interrupt, Log: h.logs.Printf})
	h.t.Cleanup(m.Close)
	h.drv.Dev = m
	h.dev = dev
	return m
}

// waitFor polls cond until it holds, failing the test after a few seconds.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// roundTrip sends msg and checks the echo.
func (h *harness) roundTrip(q *virtiotest.Queue, msg string) {
	h.t.Helper()
	r := q.Submit(virtiotest.Readable([]byte(msg)), virtiotest.Writable(len(msg)))
	u := q.Wait()
	want := []byte(msg)
	slices.Reverse(want)
	if u.ID != r.Head || u.Len != uint32(len(msg)) || string(r.Writable(0)) != string(want) {
		h.t.Fatalf("echo of %q: used %+v (head %d), got %q", msg, u, r.Head, r.Writable(0))
	}
}
