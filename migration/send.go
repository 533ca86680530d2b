package migration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// zeroPage is compared against every page read: bytes.Equal runs the
// runtime's vectorised memequal, far cheaper than sending 4 KiB.
var zeroPage [PageSize]byte

// reply is one message from the destination, or the error that ended the
// reading of them.
type reply struct {
	t       msgType
	payload []byte
	err     error
}

// sender is the state of one Send.
type sender struct {
	conn     io.ReadWriter
	src      Source
	o        Options
	guard    *guard
	fw       frameWriter
	idx      *pageIndex
	toSend   bitmap      // pages this round must send
	pending  bitmap      // pages dirtied since this round began, as harvested so far
	peeker   DirtyPeeker // nil: the skip rule drains DirtyPages into pending instead
	seen     bitmap      // with a peeker: pages its latest peek saw dirty this round
	unpeeked int         // pages sent since the latest peek
	replies  chan reply
	done     chan struct{}          // closed when Send returns
	exited   chan struct{}          // closed when readReplies returns
	peerErr  atomic.Pointer[string] // an Error message from the destination
	report   *Report
	limit    float64 // this round's rate limit in bytes/s, 0 = none
	tracking bool
	paused   bool
	dataSent uint64 // page bytes sent in all rounds, for Xen's 3× rule
}

// Send migrates src over conn: the live pre-copy rounds, then the
// stop-and-copy round, then the commit (see doc.go). progress, if not nil,
// is called after every round, the final one included, on Send's
// goroutine; it should return quickly (the guest may be paused). conn should be a
// net.Conn (or anything with SetDeadline) so that timeouts and ctx can
// interrupt blocked I/O; Send does not close it.
//
// On success the VM runs on the destination and src.Stop has been called.
// On failure the VM runs on the source (Send resumed it if it had paused
// it), except when the error wraps ErrOutcomeUnknown: then it is paused on
// the source and may run on the destination. The Report is filled as far as
// the migration got; it is nil only when opts are invalid.
func Send(ctx context.Context, conn io.ReadWriter, src Source, opts Options, progress func(Round)) (*Report, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &sender{
		conn:    conn,
		src:     src,
		o:       o,
		guard:   newGuard(conn, o.Timeout),
		fw:      frameWriter{w: conn, buf: make([]byte, 0, frameHeader+4+MaxBatchPages*(pageEntryHdr+PageSize)+frameTrailer)},
		replies: make(chan reply, 1),
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
		report:  &Report{},
	}
	start := o.Clock.Now()
	defer func() { s.report.TotalTime = o.Clock.Now().Sub(start) }()
	if progress == nil {
		progress = func(Round) {}
	}

	layout := append([]Region(nil), src.MemoryLayout()...)
	total, err := ValidateLayout(layout, 0)
	if err != nil {
		return s.report, fmt.Errorf("migration: the source's %w", err)
	}
	s.report.GuestRAM = total
	s.idx = newPageIndex(layout)
	s.toSend = newBitmap(s.idx.total)
	s.pending = newBitmap(s.idx.total)
	if p, ok := src.(DirtyPeeker); ok {
		s.peeker, s.seen = p, newBitmap(s.idx.total)
	}

	stopWatching := s.guard.onCancel(ctx)
	defer stopWatching()
	go s.readReplies()
	defer s.stopReader()

	err = s.run(ctx, layout, progress)
	s.report.WireBytes = s.fw.n
	return s.report, err
}

// run is Send after setup. Every error path goes through abort (the VM
// resumes here) or, after Go has left, outcomeUnknown.
func (s *sender) run(ctx context.Context, layout []Region, progress func(Round)) error {
	// Pre-migration and reservation (Clark et al. §3): the destination
	// checks the layout and allocates memory before any page is sent.
	s.guard.armWrite()
	if _, err := s.conn.Write(preamble()); err != nil {
		s.fw.broken = true
		return s.abort(ctx, fmt.Errorf("sending the stream header: %w", err))
	}
	s.fw.n += uint64(len(magic) + 4)
	s.fw.begin(msgHello)
	s.fw.buf = appendHello(s.fw.buf, hello{pageSize: PageSize, layout: layout, name: s.o.Name})
	if err := s.finish(); err != nil {
		return s.abort(ctx, fmt.Errorf("sending Hello: %w", err))
	}
	if err := s.await(ctx, msgAccept); err != nil {
		return s.abort(ctx, err)
	}

	// Iterative pre-copy. Tracking starts before round 1 reads anything, so
	// every write after a page is read lands in a later round.
	if err := s.src.StartDirtyTracking(); err != nil {
		return s.abort(ctx, fmt.Errorf("starting dirty tracking: %w", err))
	}
	s.tracking = true
	s.toSend.setAll(s.idx.total)
	s.limit = float64(s.o.MaxBandwidth)
	if s.o.Adaptive {
		s.limit = float64(s.o.StartBandwidth)
	}
	if s.o.MaxBandwidth == Unlimited && !s.o.Adaptive {
		s.limit = 0
	}
	if s.o.MaxRounds == 1 {
		s.report.StopReason = StopImmediately
	}
	for n := 1; n < s.o.MaxRounds; n++ {
		r, err := s.sendRound(ctx, n, false)
		if err != nil {
			return s.abort(ctx, err)
		}
		reason := s.stopReason(r)
		s.report.Rounds = append(s.report.Rounds, r)
		progress(r)
		// Pages dirtied during this round are the next round's work.
		s.toSend, s.pending = s.pending, s.toSend
		s.pending.clear()
		if reason != "" {
			s.report.StopReason = reason
			break
		}
		s.adapt(r)
	}

	// Stop-and-copy. The state is saved first and memory last: quiescing
	// and saving devices may write guest RAM (virtio used rings), and the
	// final pass after the snapshot catches that (a Cloud Hypervisor lesson).
	pausedAt := s.o.Clock.Now()
	s.paused = true // also if Pause fails part-way: abort resumes what it parked
	if err := s.src.Pause(); err != nil {
		return s.abort(ctx, fmt.Errorf("pausing the VM: %w", err))
	}
	blob, err := s.src.SaveState()
	if err != nil {
		return s.abort(ctx, fmt.Errorf("saving the machine state: %w", err))
	}
	if err := s.pollDirty(s.toSend); err != nil {
		return s.abort(ctx, err)
	}
	if err := s.src.StopDirtyTracking(); err != nil {
		return s.abort(ctx, fmt.Errorf("stopping dirty tracking: %w", err))
	}
	s.tracking = false
	r, err := s.sendRound(ctx, len(s.report.Rounds)+1, true)
	if err != nil {
		return s.abort(ctx, err)
	}
	s.report.Rounds = append(s.report.Rounds, r)
	progress(r)
	if s.o.Verify {
		if err := s.sendVerify(); err != nil {
			return s.abort(ctx, s.cause(ctx, err))
		}
	}
	s.report.StateBytes = len(blob)
	if _, err := s.fw.writeMsgArmed(s.guard, msgState, blob); err != nil {
		return s.abort(ctx, s.cause(ctx, fmt.Errorf("sending the machine state: %w", err)))
	}
	if err := s.await(ctx, msgRestored); err != nil {
		return s.abort(ctx, err)
	}
	s.report.Verified = s.o.Verify // the destination restores only memory that matched

	// Commit. Until Go has left whole, the destination cannot run the
	// guest, so any failure resumes it here. Once it has, only an answer
	// from the destination tells where the guest runs.
	n, err := s.fw.writeMsgArmed(s.guard, msgGo, nil)
	if err != nil {
		if n < frameHeader+frameTrailer {
			return s.abort(ctx, s.cause(ctx, fmt.Errorf("sending Go (not delivered: the destination cannot run the guest): %w", err)))
		}
		return s.outcomeUnknown(ctx, s.cause(ctx, fmt.Errorf("sending Go: %w", err)))
	}
	if err := s.await(ctx, msgResumed); err != nil {
		if msg := s.peerErr.Load(); msg != nil {
			// The destination said it failed to resume: by Target.Resume's
			// contract the guest does not run there.
			return s.abort(ctx, err)
		}
		return s.outcomeUnknown(ctx, err)
	}
	s.report.Downtime = s.o.Clock.Now().Sub(pausedAt)
	s.src.Stop()
	return nil
}

// sendRound sends the pages in s.toSend. In a live round it skips pages
// that are dirty again (Clark et al. §4: the writable working set; Xen's
// to_skip), paces itself to s.limit and polls the dirty log once per batch.
// The final round sends every page, as fast as it can.
func (s *sender) sendRound(ctx context.Context, number int, final bool) (Round, error) {
	r := Round{Number: number, Final: final}
	if !final {
		r.RateLimit = s.limit
	}
	start := s.o.Clock.Now()
	wireStart := s.fw.n
	var entries uint64
	batch := 0
	// A batch is written whole before the pacer sleeps, so at low limits
	// batches shrink to about 100 ms of the limit: the stream stays smooth
	// and the destination's per-message timeout is never at risk.
	batchMax := MaxBatchPages
	if !final && s.limit > 0 {
		batchMax = int(min(max(s.limit/10/(PageSize+pageEntryHdr), 1), MaxBatchPages))
	}
	flush := func() error {
		if batch == 0 {
			return nil
		}
		binary.BigEndian.PutUint32(s.fw.buf[frameHeader:], uint32(batch))
		if err := s.finish(); err != nil {
			return fmt.Errorf("sending round %d: %w", number, err)
		}
		sent := batch
		batch = 0
		if final {
			return nil
		}
		if err := s.pace(ctx, start, s.fw.n-wireStart); err != nil {
			return err
		}
		return s.lookAtDirty(sent)
	}
	if s.peeker != nil {
		s.seen.clear() // nothing harvested since the round began: nothing seen yet
	}
	for p, ok := s.toSend.next(0); ok; p, ok = s.toSend.next(p + 1) {
		if !final && s.dirtyAgain(p) {
			r.PagesSkipped++
			continue
		}
		if batch == 0 {
			if err := s.peerFailed(ctx); err != nil {
				return r, err
			}
			s.fw.begin(msgPages)
			s.fw.buf = append(s.fw.buf, 0, 0, 0, 0) // count, filled in by flush
		}
		gpa := s.idx.gpa(p)
		at := len(s.fw.buf)
		buf := append(s.fw.buf, make([]byte, pageEntryHdr+PageSize)...)
		if len(buf) > cap(s.fw.buf) {
			return r, errors.New("internal error: batch buffer too small")
		}
		page := buf[at+pageEntryHdr:]
		if err := s.src.ReadPage(gpa, page); err != nil {
			return r, fmt.Errorf("reading guest page %#x: %w", gpa, err)
		}
		if bytes.Equal(page, zeroPage[:]) {
			binary.BigEndian.PutUint64(buf[at:], gpa|pageFlagZero)
			s.fw.buf = buf[:at+pageEntryHdr]
			r.ZeroPages++
		} else {
			binary.BigEndian.PutUint64(buf[at:], gpa)
			s.fw.buf = buf
			r.PagesSent++
			s.dataSent += PageSize
		}
		entries++
		batch++
		if batch == batchMax {
			if err := flush(); err != nil {
				return r, err
			}
		}
	}
	if err := flush(); err != nil {
		return r, err
	}
	s.fw.begin(msgRoundEnd)
	s.fw.buf = appendRoundEnd(s.fw.buf, uint32(number), entries)
	if err := s.finish(); err != nil {
		return r, fmt.Errorf("ending round %d: %w", number, err)
	}
	if !final {
		if err := s.pollDirty(s.pending); err != nil {
			return r, err
		}
		r.PagesDirtied = s.pending.count()
	}
	r.Bytes = s.fw.n - wireStart
	r.Duration = s.o.Clock.Now().Sub(start)
	secs := r.Duration.Seconds()
	if secs <= 0 {
		secs = 1e-9 // a simulated clock may not move: treat as 1 ns
	}
	r.Bandwidth = float64(r.Bytes) / secs
	r.DirtyRate = float64(r.PagesDirtied*PageSize) / secs
	if !final {
		remaining := float64(r.PagesDirtied*(pageEntryHdr+PageSize) + stateEstimate)
		r.EstimatedDowntime = time.Duration(remaining / r.Bandwidth * float64(time.Second))
	}
	return r, nil
}

// stopReason applies the stop rules after a live round, in order; "" means
// go on. See "When pre-copy stops" in doc.go.
func (s *sender) stopReason(r Round) StopReason {
	atMax := s.o.MaxBandwidth == Unlimited && !s.o.Adaptive ||
		s.o.MaxBandwidth != Unlimited && s.limit >= float64(s.o.MaxBandwidth)
	var prevSent uint64
	if n := len(s.report.Rounds); n > 0 {
		prev := s.report.Rounds[n-1]
		prevSent = prev.PagesSent + prev.ZeroPages
	}
	switch {
	case r.EstimatedDowntime <= s.o.DowntimeLimit:
		return StopConverged
	case r.Number+1 >= s.o.MaxRounds:
		return StopMaxRounds
	case atMax && (r.DirtyRate >= r.Bandwidth || r.Number > 1 && r.PagesSent+r.ZeroPages > prevSent):
		return StopNoProgress
	case r.Number > 1 && r.PagesSent+r.ZeroPages+r.PagesSkipped < fewPages:
		return StopFewPages
	case s.dataSent > maxFactor*s.report.GuestRAM:
		return StopTooMuchData
	}
	return ""
}

// adapt sets the next round's limit by Xen's rule: if the guest dirtied
// memory faster than the limit, the next limit is the dirty rate plus
// 50 Mbit/s, capped at MaxBandwidth. The rate never goes down.
func (s *sender) adapt(r Round) {
	if !s.o.Adaptive || r.DirtyRate <= s.limit {
		return
	}
	s.limit = r.DirtyRate + AdaptiveStep
	if s.o.MaxBandwidth != Unlimited && s.limit > float64(s.o.MaxBandwidth) {
		s.limit = float64(s.o.MaxBandwidth)
	}
}

// pace sleeps until sent bytes fit the rate limit since start.
func (s *sender) pace(ctx context.Context, start time.Time, sent uint64) error {
	if s.limit <= 0 {
		return nil
	}
	due := start.Add(time.Duration(float64(sent) / s.limit * float64(time.Second)))
	if d := due.Sub(s.o.Clock.Now()); d > 0 {
		if err := s.o.Clock.Sleep(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// sendVerify sends the CRC-32C of every page, in layout order (see
// Verify in wire.go). The guest is paused, so RAM no longer changes.
func (s *sender) sendVerify() error {
	payload := make([]byte, 4, verifyPayloadSize(s.idx.total))
	binary.BigEndian.PutUint32(payload, uint32(s.idx.total))
	page := make([]byte, PageSize)
	for n := uint64(0); n < s.idx.total; n++ {
		gpa := s.idx.gpa(n)
		if err := s.src.ReadPage(gpa, page); err != nil {
			return fmt.Errorf("reading guest page %#x to verify it: %w", gpa, err)
		}
		payload = binary.BigEndian.AppendUint32(payload, pageCRC(page))
	}
	if _, err := s.fw.writeMsgArmed(s.guard, msgVerify, payload); err != nil {
		return fmt.Errorf("sending Verify: %w", err)
	}
	return nil
}

// dirtyAgain reports whether page p was written again during this round,
// as far as the dirty log has been looked at (the writable-working-set
// rule).
func (s *sender) dirtyAgain(p uint64) bool {
	if s.peeker != nil {
		return s.seen.has(p)
	}
	return s.pending.has(p)
}

// lookAtDirty brings the skip rule's view of this round's writes up to
// date after a batch of sent pages: with a peeker, a peek every PeekEvery
// pages; without one, a drain of DirtyPages into pending after every
// batch.
func (s *sender) lookAtDirty(sent int) error {
	if s.peeker == nil {
		return s.pollDirty(s.pending)
	}
	if s.unpeeked += sent; s.unpeeked < PeekEvery {
		return nil
	}
	s.unpeeked = 0
	gpas, ok, err := s.peeker.PeekDirtyPages()
	if err != nil {
		return fmt.Errorf("peeking at the dirty log: %w", err)
	}
	if !ok { // cannot peek after all: drain from now on
		s.peeker = nil
		return s.pollDirty(s.pending)
	}
	s.seen.clear()
	for _, gpa := range gpas {
		p, err := s.idx.index(gpa)
		if err != nil {
			return fmt.Errorf("the dirty log: %w", err)
		}
		s.seen.set(p)
	}
	return nil
}

// pollDirty adds the pages dirtied since the last poll to set.
func (s *sender) pollDirty(set bitmap) error {
	gpas, err := s.src.DirtyPages()
	if err != nil {
		return fmt.Errorf("reading the dirty log: %w", err)
	}
	for _, gpa := range gpas {
		p, err := s.idx.index(gpa)
		if err != nil {
			return fmt.Errorf("the dirty log: %w", err)
		}
		set.set(p)
	}
	return nil
}

// finish writes the frame in s.fw with a write deadline.
func (s *sender) finish() error {
	s.guard.armWrite()
	_, err := s.fw.finish()
	return err
}

func (fw *frameWriter) writeMsgArmed(g *guard, t msgType, payload []byte) (int, error) {
	g.armWrite()
	return fw.writeMsg(t, payload)
}

// readReplies runs on its own goroutine for the whole of Send, so that an
// Error from the destination is seen even while Send is blocked writing to
// a destination that stopped reading.
func (s *sender) readReplies() {
	defer close(s.exited)
	fr := frameReader{r: s.conn, maxState: 0}
	for {
		t, p, err := fr.readFrame()
		if err == nil && t == msgError {
			msg := errorText(p)
			s.peerErr.Store(&msg)
			s.guard.interrupt() // unblock a write the destination will never read
		}
		r := reply{t: t, payload: bytes.Clone(p), err: err}
		select {
		case s.replies <- r:
		case <-s.done:
			return
		}
		if err != nil || t == msgError || t == msgResumed {
			return
		}
	}
}

// stopReader ends readReplies. Unless it has already stopped, that needs
// an interrupt, which only a conn with deadlines can take; otherwise the
// goroutine ends when the caller closes conn.
func (s *sender) stopReader() {
	close(s.done)
	select {
	case <-s.exited:
		return
	default:
	}
	if s.guard.d != nil {
		s.guard.interrupt()
		<-s.exited
	}
}

// peerFailed reports, without blocking, an Error or a broken connection
// seen by readReplies, and ctx's cancellation.
func (s *sender) peerFailed(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case r := <-s.replies:
		return s.unexpected(r, "while sending pages")
	default:
		return nil
	}
}

// await waits for the destination's message of type want.
func (s *sender) await(ctx context.Context, want msgType) error {
	t := time.NewTimer(s.o.Timeout)
	defer t.Stop()
	select {
	case r := <-s.replies:
		if r.err == nil && r.t == want && len(r.payload) == 0 {
			return nil
		}
		return s.unexpected(r, "waiting for "+want.String())
	case <-ctx.Done():
		return fmt.Errorf("waiting for %v: %w", want, ctx.Err())
	case <-t.C:
		return fmt.Errorf("no %v from the destination within %v", want, s.o.Timeout)
	}
}

// unexpected turns a reply that is not the awaited one into an error.
//
// UNTRUSTED: the destination's text is quoted.
func (s *sender) unexpected(r reply, while string) error {
	switch {
	case r.err != nil:
		return fmt.Errorf("%s: %w", while, r.err)
	case r.t == msgError:
		return fmt.Errorf("the destination failed: %q", errorText(r.payload))
	}
	return fmt.Errorf("%s: unexpected %v message from the destination", while, r.t)
}

// cause picks the best explanation for a failed write: the destination's
// Error message (which interrupted the write), ctx, or the write error.
func (s *sender) cause(ctx context.Context, err error) error {
	if msg := s.peerErr.Load(); msg != nil {
		return fmt.Errorf("the destination failed: %q", *msg)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// abort rolls back: it tells the destination (best effort), stops dirty
// tracking and resumes the VM if Send paused it. The VM keeps running on
// the source; the error says so.
func (s *sender) abort(ctx context.Context, cause error) error {
	cause = s.cause(ctx, cause)
	if s.peerErr.Load() == nil {
		s.guard.armWriteFor(errorGrace)
		s.fw.writeError(fmt.Errorf("source aborted: %v", cause))
	}
	var errs []error
	if s.tracking {
		if err := s.src.StopDirtyTracking(); err != nil {
			errs = append(errs, fmt.Errorf("stopping dirty tracking: %w", err))
		}
		s.tracking = false
	}
	if s.paused {
		if err := s.src.Resume(); err != nil {
			return fmt.Errorf("migration failed: %w; resuming the VM on the source ALSO failed: %v", cause, errors.Join(append(errs, err)...))
		}
		s.paused = false
	}
	if len(errs) > 0 {
		return fmt.Errorf("migration failed: %w; the VM is still running on the source (%v)", cause, errors.Join(errs...))
	}
	return fmt.Errorf("migration failed: %w; the VM is still running on the source", cause)
}

// outcomeUnknown is the one failure after which the source must not resume:
// Go reached the connection whole, so the destination may be running the
// guest. The VM stays paused here, intact, for an operator (or a control
// plane that can ask the destination) to decide.
func (s *sender) outcomeUnknown(ctx context.Context, cause error) error {
	return fmt.Errorf("%w: %v; the commit (Go) was sent, so the guest may be running on the destination: "+
		"the VM is left PAUSED on the source; resume it only once the destination is known not to run it",
		ErrOutcomeUnknown, s.cause(ctx, cause))
}
