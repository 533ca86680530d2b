package blk

import (
	"sync"

	"govmm/devices/virtio"
)

// workersPerQueue is how many requests of one queue run at once. The
// backends take concurrent calls (disk.Disk), so a slow read does not hold
// up the requests behind it; completions reach the used ring in whatever
// order they finish, which split virtqueues allow (virtio 1.2 §2.7.8:
// without VIRTIO_F_IN_ORDER, buffers may be used in any order).
const workersPerQueue = 4

// serveQueue waits for notifications, pops every available chain and hands
// it to a worker, until stop is closed. Pausing and resetting need nothing
// here: the transport makes Pop return nil and waits until the workers
// have pushed every chain popped before.
func (d *Device) serveQueue(q *virtio.Queue, stop <-chan struct{}) {
	requests := make(chan *virtio.Chain)
	var workers sync.WaitGroup
	for range workersPerQueue {
		workers.Go(func() {
			for c := range requests {
				d.handle(c)
				q.Push(c)
			}
		})
	}
	defer workers.Wait()
	defer close(requests)
	for {
		select {
		case <-stop:
			return
		case <-q.Notified():
		}
		for c := q.Pop(); c != nil; c = q.Pop() {
			requests <- c // waits while every worker is busy
		}
	}
}
