package virtio

import (
	"fmt"
	"sync"
	"time"
)

// Rate limits for guest-triggered log messages: a guest that sends bad
// requests in a loop must not flood the host's log (or slow the device
// down writing it). QEMU's virtio code has the same concern
// (qemu_log_mask(LOG_GUEST_ERROR, ...)).
const (
	logBurst    = 10              // messages per interval
	logInterval = 5 * time.Second // after which the count starts over
)

// RateLimit wraps log so that at most logBurst messages go through per
// logInterval; the number of messages dropped is reported with the next one
// that passes. A nil log gives a function that discards everything. The
// result is safe for concurrent use.
func RateLimit(log func(format string, args ...any)) func(format string, args ...any) {
	if log == nil {
		return func(string, ...any) {}
	}
	l := &limiter{log: log}
	return l.printf
}

type limiter struct {
	log func(format string, args ...any)

	mu         sync.Mutex
	start      time.Time // of the current interval
	count      int       // messages printed in it
	suppressed int       // messages dropped since the last one printed
}

func (l *limiter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); now.Sub(l.start) >= logInterval {
		l.start, l.count = now, 0
	}
	if l.count >= logBurst {
		l.suppressed++
		return
	}
	l.count++
	if l.suppressed > 0 {
		format += fmt.Sprintf(" (%d more messages suppressed)", l.suppressed)
		l.suppressed = 0
	}
	l.log(format, args...)
}
