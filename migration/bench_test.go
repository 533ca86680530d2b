package migration

import (
	"context"
	"net"
	"testing"
)

// discardTarget accepts everything and keeps nothing.
type discardTarget struct{}

func (discardTarget) PrepareMemory([]Region) error   { return nil }
func (discardTarget) WritePage(uint64, []byte) error { return nil }
func (discardTarget) RestoreState([]byte) error      { return nil }
func (discardTarget) Resume() error                  { return nil }

// BenchmarkSend migrates an idle 64 MiB guest, one page in three non-zero,
// over net.Pipe without a rate limit: the cost of reading, zero-checking,
// framing and checksumming pages on both ends.
func BenchmarkSend(b *testing.B) {
	layout := []Region{{Start: 0, Size: 64 << 20}}
	src := newFakeSource(layout)
	src.fill()
	b.SetBytes(int64(layout[0].Size))
	b.ReportAllocs()
	for b.Loop() {
		src.stopped, src.paused = false, false
		a, c := net.Pipe()
		done := make(chan error, 1)
		go func() {
			_, err := Receive(context.Background(), c, discardTarget{}, ReceiveOptions{})
			done <- err
		}()
		_, err := Send(context.Background(), a, src, Options{MaxBandwidth: Unlimited}, nil)
		if rerr := <-done; err != nil || rerr != nil {
			b.Fatal(err, rerr)
		}
		a.Close()
		c.Close()
	}
}
