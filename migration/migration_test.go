package migration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// twoRegions is a small PC-like layout: low RAM and RAM above a hole.
var twoRegions = []Region{{Start: 0, Size: 2 << 20}, {Start: 1 << 32, Size: 2 << 20}}

// hotPages returns n GPAs at the end of the layout's last region, so that
// a round reaches them only after several batches.
func hotPages(layout []Region, n int) []uint64 {
	last := layout[len(layout)-1]
	var out []uint64
	for i := 0; i < n; i++ {
		out = append(out, last.Start+last.Size-uint64(n-i)*PageSize)
	}
	return out
}

func simulated(src *fakeSource) *fakeClock {
	c := newFakeClock()
	c.advance = src.run
	return c
}

func checkSuccess(t *testing.T, res result, src *fakeSource, tgt *fakeTarget) {
	t.Helper()
	if res.err != nil || res.recvErr != nil {
		t.Fatalf("Send: %v\nReceive: %v", res.err, res.recvErr)
	}
	if !src.stopped || src.resumes != 0 || src.tracking {
		t.Errorf("source after success: stopped=%v resumes=%d tracking=%v, want stopped, no resume, tracking off", src.stopped, src.resumes, src.tracking)
	}
	if !tgt.resumed {
		t.Error("destination not resumed")
	}
	if string(tgt.state) != string(src.state) {
		t.Errorf("state %q arrived as %q", src.state, tgt.state)
	}
	sameMemory(t, src, tgt)
}

func TestRoundTripIdleGuest(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	tgt := newFakeTarget()
	res := migrate(t, src, tgt, Options{Name: "host-a", Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)

	total := src.idx.total
	r1 := res.rep.Rounds[0]
	nonZero := (total + 2) / 3
	if r1.PagesSent != nonZero || r1.ZeroPages != total-nonZero {
		t.Errorf("round 1 sent %d data + %d zero pages, want %d + %d", r1.PagesSent, r1.ZeroPages, nonZero, total-nonZero)
	}
	// Zero pages are a flag: the wire carries the data pages plus 8 bytes
	// per entry and a little framing, far less than guest RAM.
	maxWire := nonZero*PageSize + total*pageEntryHdr + 64<<10
	if res.rep.WireBytes > maxWire || res.rep.WireBytes >= res.rep.GuestRAM {
		t.Errorf("%d bytes on the wire for %d bytes of RAM with %d data pages, want <= %d", res.rep.WireBytes, res.rep.GuestRAM, nonZero, maxWire)
	}
	if tgt.zeroWrites < int(total-nonZero) {
		t.Errorf("destination saw %d zero-page writes, want >= %d", tgt.zeroWrites, total-nonZero)
	}
	if res.rep.StopReason != StopConverged || len(res.rep.Rounds) != 2 {
		t.Errorf("idle guest: %d rounds, stop %q; want 1 live round + final, converged", len(res.rep.Rounds), res.rep.StopReason)
	}
	// SaveState dirtied a page while paused; the final round carried it.
	if fin := res.rep.Rounds[len(res.rep.Rounds)-1]; !fin.Final || fin.PagesSent == 0 {
		t.Errorf("final round %+v did not carry the page written by SaveState", fin)
	}
	if res.rrep.Source != "host-a" || res.rrep.GuestRAM != res.rep.GuestRAM || res.rrep.StateBytes != len(src.state) {
		t.Errorf("receive report %+v", res.rrep)
	}
	if res.rrep.WireBytes != res.rep.WireBytes {
		t.Errorf("destination read %d bytes, source wrote %d", res.rrep.WireBytes, res.rep.WireBytes)
	}
}

// The writable working set (Clark et al. §4): pages dirtied again while a
// round is in progress are skipped in that round and sent later, whether
// Send learns of them by draining the dirty log after every batch or by
// peeking at it (DirtyPeeker) every PeekEvery pages.
func TestWritableWorkingSetSkipped(t *testing.T) {
	// Four peeks' worth of pages, the hot ones at the very end.
	layout := []Region{{Start: 0, Size: 2 * PeekEvery * PageSize}, {Start: 1 << 32, Size: 2 * PeekEvery * PageSize}}
	for _, mode := range []string{"drain", "peek", "peek-refused"} {
		t.Run(mode, func(t *testing.T) {
			fake := newFakeSource(layout)
			fake.fill()
			fake.hot = hotPages(layout, 40)
			fake.burst = true // every batch interval rewrites all 40 hot pages
			var src Source = fake
			peeker := &peekingSource{fakeSource: fake, canPeek: mode == "peek"}
			if mode != "drain" {
				src = peeker
			}
			tgt := newFakeTarget()
			opts := Options{MaxBandwidth: 8 << 20, DowntimeLimit: time.Nanosecond, MaxRounds: 4, Clock: simulated(fake)}
			res := migrate(t, src, tgt, opts, ReceiveOptions{}, nil, nil)
			checkSuccess(t, res, fake, tgt)

			r1 := res.rep.Rounds[0]
			if r1.PagesSkipped != uint64(len(fake.hot)) {
				t.Errorf("round 1 skipped %d pages, want the %d hot pages", r1.PagesSkipped, len(fake.hot))
			}
			if got := r1.PagesSent + r1.ZeroPages + r1.PagesSkipped; got != fake.idx.total {
				t.Errorf("round 1 covered %d pages, want %d", got, fake.idx.total)
			}
			// The hot pages were not read in round 1 (they were dirty
			// again before their turn came), but once in every later
			// round.
			want := len(res.rep.Rounds) - 1
			for _, gpa := range fake.hot {
				if n := fake.reads[gpa]; n != want {
					t.Errorf("hot page %#x read %d times, want %d (every round but the first)", gpa, n, want)
				}
			}
			// A peeker's log is harvested once per round, at its end
			// (the final round's after SaveState); without one, after
			// every batch too.
			switch mode {
			case "peek":
				if fake.drains != len(res.rep.Rounds) || peeker.peeks < 3 {
					t.Errorf("%d drains and %d peeks in %d rounds, want one drain per round and a peek every %d pages",
						fake.drains, peeker.peeks, len(res.rep.Rounds), PeekEvery)
				}
			default:
				if fake.drains <= len(res.rep.Rounds) {
					t.Errorf("%d drains in %d rounds, want more than one per round", fake.drains, len(res.rep.Rounds))
				}
				if mode == "peek-refused" && peeker.peeks != 1 {
					t.Errorf("%d peeks, want 1: a refused peek is not tried again", peeker.peeks)
				}
			}
		})
	}
}

func TestLowDirtyRateConverges(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	src.hot = hotPages(twoRegions, 64)
	src.rate = 200 // pages per second, far below 16 MiB/s
	tgt := newFakeTarget()
	var rounds []Round
	opts := Options{MaxBandwidth: 16 << 20, Clock: simulated(src)}
	res := migrate(t, src, tgt, opts, ReceiveOptions{}, nil, func(r Round) { rounds = append(rounds, r) })
	checkSuccess(t, res, src, tgt)
	if res.rep.StopReason != StopConverged || len(res.rep.Rounds) > 3 {
		t.Fatalf("stop %q after %d rounds, want converged within 2 live rounds", res.rep.StopReason, len(res.rep.Rounds))
	}
	live := res.rep.Rounds[len(res.rep.Rounds)-2]
	if live.EstimatedDowntime > DefaultDowntimeLimit || live.PagesDirtied == 0 {
		t.Errorf("last live round %+v: want dirty pages and an estimate under 300 ms", live)
	}
	if !reflect.DeepEqual(rounds, res.rep.Rounds) {
		t.Errorf("progress saw %d rounds, the report has %d", len(rounds), len(res.rep.Rounds))
	}
}

// Clark et al.'s MMuncher: dirtying faster than the link cannot converge.
func TestDirtyRateAboveBandwidthStops(t *testing.T) {
	src := newFakeSource([]Region{{Start: 0, Size: 16 << 20}})
	src.fill()
	src.hot = hotPages(src.layout, 2000)
	src.rate = 50000 // ~200 MB/s of dirtying against 8 MiB/s
	tgt := newFakeTarget()
	opts := Options{MaxBandwidth: 8 << 20, Clock: simulated(src)}
	res := migrate(t, src, tgt, opts, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)
	if res.rep.StopReason != StopNoProgress {
		t.Fatalf("stop %q, want %q", res.rep.StopReason, StopNoProgress)
	}
	if n := len(res.rep.Rounds); n > 3 {
		t.Errorf("%d rounds: no-progress should stop at once", n)
	}
	last := res.rep.Rounds[len(res.rep.Rounds)-2]
	if last.DirtyRate < last.Bandwidth {
		t.Errorf("stopped for no progress with dirty rate %.0f < bandwidth %.0f", last.DirtyRate, last.Bandwidth)
	}
}

func TestRoundCap(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	src.hot = hotPages(twoRegions, 100)
	src.burst = true
	tgt := newFakeTarget()
	// Adaptive with a cap it never reaches, so no-progress cannot fire; a
	// downtime limit nothing meets: only the round cap ends pre-copy.
	opts := Options{Adaptive: true, MaxBandwidth: 1 << 30, DowntimeLimit: time.Nanosecond, MaxRounds: 6, Clock: simulated(src)}
	res := migrate(t, src, tgt, opts, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)
	if res.rep.StopReason != StopMaxRounds || len(res.rep.Rounds) != 6 {
		t.Fatalf("stop %q after %d rounds, want %q after 6 (5 live + final)", res.rep.StopReason, len(res.rep.Rounds), StopMaxRounds)
	}
	if res.rrep.Rounds != 6 {
		t.Errorf("destination counted %d rounds", res.rrep.Rounds)
	}
}

func TestStopAndCopyOnly(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	tgt := newFakeTarget()
	res := migrate(t, src, tgt, Options{MaxRounds: 1, Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)
	if len(res.rep.Rounds) != 1 || !res.rep.Rounds[0].Final || res.rep.StopReason != StopImmediately {
		t.Errorf("MaxRounds 1: rounds %+v stop %q", res.rep.Rounds, res.rep.StopReason)
	}
}

// Xen's adaptive rate: start at 100 Mbit/s; after a round whose dirty rate
// exceeded the limit, the limit is dirty rate + 50 Mbit/s, up to the cap.
func TestAdaptiveRateFollowsXen(t *testing.T) {
	src := newFakeSource([]Region{{Start: 0, Size: 8 << 20}})
	src.fill()
	src.hot = hotPages(src.layout, 1500)
	src.rate = 6000 // ~24.6 MB/s: above 100 Mbit/s, below the cap
	tgt := newFakeTarget()
	const limitCap = 40 << 20
	opts := Options{Adaptive: true, MaxBandwidth: limitCap, DowntimeLimit: time.Millisecond, MaxRounds: 8, Clock: simulated(src)}
	res := migrate(t, src, tgt, opts, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)
	live := res.rep.Rounds[:len(res.rep.Rounds)-1]
	if len(live) < 2 {
		t.Fatalf("only %d live rounds; the test needs two", len(live))
	}
	if live[0].RateLimit != DefaultStartBandwidth {
		t.Errorf("round 1 limit %.0f, want %d", live[0].RateLimit, int(DefaultStartBandwidth))
	}
	raised := false
	for i := 1; i < len(live); i++ {
		prev := live[i-1]
		want := prev.RateLimit
		if prev.DirtyRate > prev.RateLimit {
			want = math.Min(prev.DirtyRate+AdaptiveStep, limitCap)
			raised = true
		}
		if got := live[i].RateLimit; math.Abs(got-want) > 1 {
			t.Errorf("round %d limit %.0f, want %.0f (previous: limit %.0f, dirty rate %.0f)", i+1, got, want, prev.RateLimit, prev.DirtyRate)
		}
	}
	if !raised {
		t.Error("the limit was never raised: the test's dirty rate is too low")
	}
}

// The rate limiter keeps every live round at or under its limit, and close
// to it (within one batch), measured on the simulated clock.
func TestRateLimitRespected(t *testing.T) {
	src := newFakeSource(twoRegions)
	for i := range src.mem {
		src.mem[i] = byte(i*31 + 7) // no zero pages: every page is data
	}
	clock := simulated(src)
	tgt := newFakeTarget()
	const limit = 4 << 20
	res := migrate(t, src, tgt, Options{MaxBandwidth: limit, Clock: clock}, ReceiveOptions{}, nil, nil)
	checkSuccess(t, res, src, tgt)
	r1 := res.rep.Rounds[0]
	if r1.Bandwidth > limit*1.0001 {
		t.Errorf("round 1 ran at %.0f B/s over the %d B/s limit", r1.Bandwidth, limit)
	}
	minTime := time.Duration(float64(r1.Bytes-MaxBatchPages*(PageSize+pageEntryHdr)) / limit * float64(time.Second))
	if r1.Duration < minTime || clock.slept < minTime {
		t.Errorf("round 1: %d bytes in %v (slept %v), want at least %v at %d B/s", r1.Bytes, r1.Duration, clock.slept, minTime, limit)
	}
	// Unlimited never sleeps.
	src2 := newFakeSource(twoRegions)
	clock2 := simulated(src2)
	res = migrate(t, src2, newFakeTarget(), Options{MaxBandwidth: Unlimited, Clock: clock2}, ReceiveOptions{}, nil, nil)
	if res.err != nil || clock2.slept != 0 {
		t.Errorf("unlimited: err %v, slept %v", res.err, clock2.slept)
	}
}

// A guest that really runs concurrently, over TCP, with real time: under
// -race this checks Send's goroutines and the fakes' locking too.
func TestRoundTripConcurrentGuestTCP(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	hot := hotPages(twoRegions, 300)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			src.mu.Lock()
			if !src.paused && !src.stopped {
				src.write(hot[i%len(hot)])
			}
			src.mu.Unlock()
			if i%64 == 0 {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback TCP: %v", err)
	}
	defer ln.Close()
	tgt := newFakeTarget()
	recvDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			recvDone <- err
			return
		}
		defer c.Close()
		_, err = Receive(context.Background(), c, tgt, ReceiveOptions{Timeout: 10 * time.Second})
		recvDone <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := Send(context.Background(), c, src, Options{MaxBandwidth: 64 << 20, DowntimeLimit: 50 * time.Millisecond, Timeout: 10 * time.Second}, nil)
	if rerr := <-recvDone; err != nil || rerr != nil {
		t.Fatalf("Send: %v\nReceive: %v", err, rerr)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	checkSuccess(t, result{rep: rep}, src, tgt)
	if src.writes == 0 {
		t.Error("the guest never wrote: the test proves nothing")
	}
	if rep.Downtime <= 0 || rep.TotalTime < rep.Downtime {
		t.Errorf("downtime %v, total %v", rep.Downtime, rep.TotalTime)
	}
}

// checkRolledBack asserts that the source VM runs on the source and was
// not stopped, and that the destination did not start the guest.
func checkRolledBack(t *testing.T, res result, src *fakeSource, tgt *fakeTarget, wantErr string) {
	t.Helper()
	if res.err == nil {
		t.Fatal("Send succeeded, want an error")
	}
	if !strings.Contains(res.err.Error(), wantErr) || !strings.Contains(res.err.Error(), "still running on the source") {
		t.Errorf("Send error %q, want it to mention %q and that the VM still runs on the source", res.err, wantErr)
	}
	if errors.Is(res.err, ErrOutcomeUnknown) {
		t.Errorf("error wraps ErrOutcomeUnknown: %v", res.err)
	}
	if src.stopped || src.paused || src.tracking {
		t.Errorf("source: stopped=%v paused=%v tracking=%v, want running with tracking off", src.stopped, src.paused, src.tracking)
	}
	if tgt.resumed {
		t.Error("destination started the guest too: split brain")
	}
	if res.recvErr == nil {
		t.Error("Receive succeeded")
	}
}

func TestFaultsRollBack(t *testing.T) {
	tests := []struct {
		name        string
		wrap        func(net.Conn) net.Conn
		target      func(*fakeTarget)
		source      func(*fakeSource)
		wantErr     string
		wantRecvErr string
		paused      bool // whether Send had paused the VM (so must resume it)
	}{
		{name: "cut in round 1", wrap: cutOn(msgPages, 2, 100), wantErr: "sending round 1"},
		{name: "cut mid round 2", wrap: cutInRound(2, 3000), wantErr: "sending round 2"},
		{name: "cut during state", wrap: cutOn(msgState, 1, 10), wantErr: "sending the machine state", paused: true},
		{name: "cut before Go", wrap: cutOn(msgGo, 1, 0), wantErr: "not delivered", paused: true},
		{name: "half a Go", wrap: cutOn(msgGo, 1, 5), wantErr: "not delivered", paused: true},
		{name: "destination refuses layout", target: func(t *fakeTarget) { t.failPrepare = errors.New("only 1 GiB here") }, wantErr: "only 1 GiB here"},
		{name: "destination write fails", target: func(t *fakeTarget) {
			t.onWrite = func(gpa uint64) error {
				if gpa == 1<<32 {
					return errors.New("disk full")
				}
				return nil
			}
		}, wantErr: "disk full"},
		{name: "destination rejects state", target: func(t *fakeTarget) { t.failRestore = errors.New("unknown CPUID leaf") }, wantErr: "unknown CPUID leaf", paused: true},
		{name: "destination cannot resume", target: func(t *fakeTarget) { t.failResume = errors.New("KVM_RUN: EINVAL") }, wantErr: "KVM_RUN: EINVAL", paused: true},
		{name: "SaveState fails", source: func(s *fakeSource) { s.failSave = errors.New("vCPU busy") }, wantErr: "vCPU busy", paused: true,
			wantRecvErr: `the source aborted the migration: "source aborted: saving the machine state: vCPU busy`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newFakeSource(twoRegions)
			src.fill()
			src.hot = hotPages(twoRegions, 200)
			src.rate = 500
			if tt.source != nil {
				tt.source(src)
			}
			tgt := newFakeTarget()
			if tt.target != nil {
				tt.target(tgt)
			}
			before := append([]byte(nil), src.mem...)
			res := migrate(t, src, tgt, Options{MaxBandwidth: 16 << 20, DowntimeLimit: time.Millisecond, Clock: simulated(src)}, ReceiveOptions{}, tt.wrap, nil)
			checkRolledBack(t, res, src, tgt, tt.wantErr)
			if tt.wantRecvErr != "" && !strings.Contains(res.recvErr.Error(), tt.wantRecvErr) {
				t.Errorf("Receive error %q, want it to contain %q", res.recvErr, tt.wantRecvErr)
			}
			wantResumes := 0
			if tt.paused {
				wantResumes = 1
			}
			if src.resumes != wantResumes {
				t.Errorf("source resumed %d times, want %d", src.resumes, wantResumes)
			}
			// Send never writes guest memory: only the guest's own writes
			// (to the hot pages and the page SaveState touches) differ.
			for n := uint64(0); n < src.idx.total; n++ {
				gpa := src.idx.gpa(n)
				if gpa == 0 || gpa >= src.hot[0] {
					continue
				}
				if string(src.mem[n*PageSize:(n+1)*PageSize]) != string(before[n*PageSize:(n+1)*PageSize]) {
					t.Fatalf("source page %#x changed", gpa)
				}
			}
		})
	}
}

// Go left whole but the connection broke before Resumed came back: the
// guest runs on the destination, so the source must neither resume nor
// stop. It stays paused and the error says the outcome is unknown.
func TestLostResumedLeavesSourcePaused(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	tgt := newFakeTarget()
	res := migrate(t, src, tgt, Options{Clock: simulated(src)}, ReceiveOptions{}, dropReply(msgResumed), nil)
	if !errors.Is(res.err, ErrOutcomeUnknown) || !strings.Contains(res.err.Error(), "PAUSED on the source") {
		t.Fatalf("Send error %v, want ErrOutcomeUnknown saying the VM is paused", res.err)
	}
	if !src.paused || src.resumes != 0 || src.stopped {
		t.Errorf("source: paused=%v resumes=%d stopped=%v, want paused, not resumed, not stopped", src.paused, src.resumes, src.stopped)
	}
	if res.recvErr != nil || !tgt.resumed {
		t.Errorf("destination: err %v resumed %v; want the guest running there", res.recvErr, tgt.resumed)
	}
}

func TestTimeoutWaitingForDestination(t *testing.T) {
	src := newFakeSource(twoRegions)
	a, b := net.Pipe()
	defer b.Close()
	go func() { // a destination that reads everything and never answers
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	_, err := Send(context.Background(), a, src, Options{Timeout: 200 * time.Millisecond}, nil)
	a.Close()
	if err == nil || !strings.Contains(err.Error(), "no Accept from the destination within 200ms") {
		t.Fatalf("Send error %v, want a timeout waiting for Accept", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("timing out took %v", time.Since(start))
	}
}

func TestCancelDuringPreCopy(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	src.hot = hotPages(twoRegions, 100)
	src.burst = true
	tgt := newFakeTarget()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := Receive(context.Background(), b, tgt, ReceiveOptions{})
		done <- err
	}()
	_, err := Send(ctx, a, src, Options{DowntimeLimit: time.Nanosecond, Clock: simulated(src)}, func(r Round) {
		if r.Number == 2 {
			cancel()
		}
	})
	a.Close()
	rerr := <-done
	b.Close()
	if !errors.Is(err, context.Canceled) || src.paused || src.tracking || tgt.resumed || rerr == nil {
		t.Errorf("Send %v, Receive %v, source paused=%v tracking=%v, destination resumed=%v", err, rerr, src.paused, src.tracking, tgt.resumed)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	src := newFakeSource(twoRegions)
	src.fill()
	src.hot = hotPages(twoRegions, 64)
	src.rate = 2000
	res := migrate(t, src, newFakeTarget(), Options{MaxBandwidth: 8 << 20, DowntimeLimit: 10 * time.Millisecond, Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	for _, v := range []any{res.rep, res.rrep} {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		back := reflect.New(reflect.TypeOf(v).Elem()).Interface()
		if err := json.Unmarshal(data, back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(v, back) {
			t.Errorf("JSON round trip changed the report:\n%s", data)
		}
	}
	data, _ := json.Marshal(res.rep)
	for _, key := range []string{`"pages_sent"`, `"dirty_rate"`, `"downtime_ns"`, `"wire_bytes"`, `"stop_reason"`} {
		if !strings.Contains(string(data), key) {
			t.Errorf("report JSON lacks %s", key)
		}
	}
}

func TestOptionsRejected(t *testing.T) {
	for _, o := range []Options{{MaxBandwidth: -5}, {StartBandwidth: -1}, {MaxRounds: -1}, {DowntimeLimit: -time.Second}} {
		if _, err := Send(context.Background(), nil, nil, o, nil); err == nil {
			t.Errorf("Send accepted %+v", o)
		}
	}
}

// Verify: the destination compares its RAM with the source's page by page
// before restoring anything. A write the dirty log never reported (here,
// one made while saving the state, without MarkDirty) fails the migration
// with the pages named, and the guest keeps running on the source.
func TestVerifyMemory(t *testing.T) {
	t.Run("match", func(t *testing.T) {
		src := newFakeSource(twoRegions)
		src.fill()
		tgt := newFakeTarget()
		res := migrate(t, src, tgt, Options{Verify: true, Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
		checkSuccess(t, res, src, tgt)
		if !res.rep.Verified || !res.rrep.Verified {
			t.Errorf("reports say verified = %v (source), %v (destination), want true", res.rep.Verified, res.rrep.Verified)
		}
	})
	t.Run("lost-write", func(t *testing.T) {
		src := newFakeSource(twoRegions)
		src.fill()
		lost := twoRegions[1].Start + 5*PageSize
		src.loseWrite = lost
		tgt := newFakeTarget()
		res := migrate(t, src, tgt, Options{Verify: true, Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
		want := fmt.Sprintf("1 pages differ from the source's after the final round (at [%#x])", lost)
		if res.recvErr == nil || !strings.Contains(res.recvErr.Error(), want) {
			t.Errorf("Receive: %v, want an error containing %q", res.recvErr, want)
		}
		if res.err == nil || !strings.Contains(res.err.Error(), want) {
			t.Errorf("Send: %v, want the destination's reason %q", res.err, want)
		}
		if tgt.restored || tgt.resumed || src.resumes != 1 || src.stopped || res.rep.Verified {
			t.Errorf("after a failed verification: restored=%v resumed=%v, source resumes=%d stopped=%v verified=%v; want the guest back on the source only",
				tgt.restored, tgt.resumed, src.resumes, src.stopped, res.rep.Verified)
		}
	})
	t.Run("target-cannot-read", func(t *testing.T) {
		src := newFakeSource(twoRegions)
		tgt := newFakeTarget()
		res := migrate(t, src, writeOnlyTarget{tgt}, Options{Verify: true, Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
		if res.recvErr == nil || !strings.Contains(res.recvErr.Error(), "cannot read back") || src.resumes != 1 {
			t.Errorf("Receive: %v (source resumed %d times), want a refusal to verify and the guest back on the source", res.recvErr, src.resumes)
		}
	})
	t.Run("without", func(t *testing.T) {
		src := newFakeSource(twoRegions)
		src.loseWrite = twoRegions[0].Start + PageSize
		tgt := newFakeTarget()
		res := migrate(t, src, tgt, Options{Clock: simulated(src)}, ReceiveOptions{}, nil, nil)
		if res.err != nil || res.recvErr != nil || res.rep.Verified || res.rrep.Verified {
			t.Errorf("without Verify: Send %v, Receive %v, verified %v/%v; want success, unverified (the lost write goes unnoticed)",
				res.err, res.recvErr, res.rep.Verified, res.rrep.Verified)
		}
	})
}

// writeOnlyTarget hides fakeTarget's ReadPage.
type writeOnlyTarget struct{ Target }
