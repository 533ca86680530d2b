package virtiotest

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// LogRecorder collects the lines a device logs, from any goroutine, for a
// test to look for: pass its Printf as a device's Log.
type LogRecorder struct {
	mu    sync.Mutex
	lines []string
}

// Printf records one line.
func (l *LogRecorder) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// Contains reports whether a recorded line contains s.
func (l *LogRecorder) Contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(line string) bool { return strings.Contains(line, s) })
}

// Lines returns the recorded lines.
func (l *LogRecorder) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}
