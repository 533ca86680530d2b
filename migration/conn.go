package migration

import (
	"context"
	"sync"
	"time"
)

// deadliner is the part of net.Conn that lets a blocked Read or Write be
// interrupted. With a plain io.ReadWriter, timeouts and cancellation only
// take effect between messages.
type deadliner interface {
	SetDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// guard arms write deadlines and interrupts a connection, without letting a
// later arm undo an interrupt.
type guard struct {
	d           deadliner // nil if conn cannot take deadlines
	timeout     time.Duration
	mu          sync.Mutex
	interrupted bool
}

func newGuard(conn any, timeout time.Duration) *guard {
	g := &guard{timeout: timeout}
	g.d, _ = conn.(deadliner)
	return g
}

// armWrite bounds the next write by the timeout (real time).
func (g *guard) armWrite() { g.armWriteFor(g.timeout) }

// armWriteFor bounds the next write by d.
func (g *guard) armWriteFor(d time.Duration) {
	if g.d == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.interrupted {
		g.d.SetWriteDeadline(time.Now().Add(d))
	}
}

// armRead bounds the next read and write by the timeout.
func (g *guard) armRead() {
	if g.d == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.interrupted {
		g.d.SetDeadline(time.Now().Add(g.timeout))
	}
}

// errorGrace bounds the best-effort Error message a failing side sends: a
// peer that stopped reading must not delay the rollback.
const errorGrace = 2 * time.Second

// interrupt makes every pending and future Read and Write fail at once.
func (g *guard) interrupt() {
	if g.d == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.interrupted = true
	g.d.SetDeadline(time.Unix(1, 0))
}

// onCancel interrupts the connection when ctx is done; call the returned
// function to stop watching.
func (g *guard) onCancel(ctx context.Context) func() bool {
	return context.AfterFunc(ctx, g.interrupt)
}
