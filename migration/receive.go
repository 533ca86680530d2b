package migration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// receiver states; see "The receiver" in doc.go.
type recvState int

const (
	awaitHello    recvState = iota // stream header read, Hello next
	receiveMemory                  // Pages, RoundEnd, then State
	awaitGo                        // state restored, vCPUs parked
)

func (st recvState) String() string {
	switch st {
	case awaitHello:
		return "waiting for Hello"
	case receiveMemory:
		return "receiving memory"
	case awaitGo:
		return "waiting for Go"
	}
	return "done"
}

// receiver is the state of one Receive.
type receiver struct {
	conn     io.ReadWriter
	tgt      Target
	o        ReceiveOptions
	guard    *guard
	fr       frameReader
	fw       frameWriter
	report   *ReceiveReport
	state    recvState
	idx      *pageIndex
	written  bitmap // pages written at least once
	round    uint32 // the round being received, from 1
	inRound  uint64 // page entries received in this round
	sawRound bool   // at least one round has ended
	verified bool   // a Verify message matched
}

// Receive builds the migrated VM in tgt from conn and, once the source
// commits, resumes it. conn should be a net.Conn (or anything with
// SetDeadline) so that the timeout and ctx can interrupt a blocked read;
// Receive does not close it.
//
// A nil error means the guest runs here. Any error means it does not (tgt's
// vCPUs were never started): the caller discards tgt. The source has been
// told why, if the connection still worked.
func Receive(ctx context.Context, conn io.ReadWriter, tgt Target, opts ReceiveOptions) (*ReceiveReport, error) {
	o := opts.withDefaults()
	rv := &receiver{
		conn:   conn,
		tgt:    tgt,
		o:      o,
		guard:  newGuard(conn, o.Timeout),
		fr:     frameReader{r: conn, maxState: o.MaxStateSize},
		fw:     frameWriter{w: conn},
		report: &ReceiveReport{},
		round:  1,
	}
	start := time.Now()
	defer func() { rv.report.TotalTime = time.Since(start) }()
	stopWatching := rv.guard.onCancel(ctx)
	defer stopWatching()

	err := rv.run()
	rv.report.WireBytes = rv.fr.n
	if err == nil {
		return rv.report, nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if !errors.Is(err, errSourceAborted) {
		// Best effort: the source resumes its VM either way, but this way
		// it can say why.
		rv.guard.armWriteFor(errorGrace)
		rv.fw.writeError(err)
	}
	return rv.report, fmt.Errorf("incoming migration failed (%v): %w; the guest was not started here", rv.state, err)
}

var errSourceAborted = errors.New("the source aborted the migration")

// run is the receiver's state machine: read a message, check that it may
// come now, validate it, apply it.
func (rv *receiver) run() error {
	var pre [len(magic) + 4]byte
	rv.guard.armRead() // the deadline covers a whole message of at most a few MiB
	if _, err := io.ReadFull(rv.conn, pre[:]); err != nil {
		return fmt.Errorf("reading the stream header: %w", eofIsTruncation(err))
	}
	rv.fr.n += uint64(len(pre))
	if err := checkPreamble(pre[:]); err != nil {
		return err
	}
	for {
		rv.guard.armRead() // the deadline covers a whole message of at most a few MiB
		t, p, err := rv.fr.readFrame()
		if err != nil {
			return err
		}
		if t == msgError {
			return fmt.Errorf("%w: %q", errSourceAborted, errorText(p))
		}
		switch {
		case rv.state == awaitHello && t == msgHello:
			if err := rv.hello(p); err != nil {
				return err
			}
			if err := rv.reply(msgAccept); err != nil {
				return err
			}
			rv.state = receiveMemory
		case rv.state == receiveMemory && t == msgPages:
			if err := rv.pages(p); err != nil {
				return err
			}
		case rv.state == receiveMemory && t == msgRoundEnd:
			if err := rv.roundEnd(p); err != nil {
				return err
			}
		case rv.state == receiveMemory && t == msgVerify:
			if err := rv.verify(p); err != nil {
				return err
			}
		case rv.state == receiveMemory && t == msgState:
			if err := rv.restore(p); err != nil {
				return err
			}
			if err := rv.reply(msgRestored); err != nil {
				return err
			}
			rv.state = awaitGo
		case rv.state == awaitGo && t == msgGo:
			if len(p) != 0 {
				return fmt.Errorf("Go message with a %d-byte payload", len(p))
			}
			if err := rv.tgt.Resume(); err != nil {
				return fmt.Errorf("starting the vCPUs: %w", err)
			}
			// The guest runs here now, whatever happens to this reply.
			if err := rv.reply(msgResumed); err != nil {
				rv.report.AckError = err.Error()
			}
			return nil
		default:
			return fmt.Errorf("unexpected %v message", t)
		}
	}
}

func (rv *receiver) reply(t msgType) error {
	rv.guard.armWrite()
	if _, err := rv.fw.writeMsg(t, nil); err != nil {
		return fmt.Errorf("sending %v: %w", t, err)
	}
	return nil
}

// hello validates the source's memory layout and has the Target allocate it.
//
// UNTRUSTED: the layout comes from the source.
func (rv *receiver) hello(p []byte) error {
	h, err := parseHello(p)
	if err != nil {
		return err
	}
	if h.pageSize != PageSize {
		return fmt.Errorf("source page size %d is not %d", h.pageSize, PageSize)
	}
	total, err := ValidateLayout(h.layout, rv.o.MaxMemory)
	if err != nil {
		return fmt.Errorf("source's %w", err)
	}
	if err := rv.tgt.PrepareMemory(h.layout); err != nil {
		return fmt.Errorf("preparing memory: %w", err)
	}
	rv.idx = newPageIndex(h.layout)
	rv.written = newBitmap(rv.idx.total)
	rv.fr.maxVerify = verifyPayloadSize(rv.idx.total)
	rv.report.Source = h.name
	rv.report.GuestRAM = total
	return nil
}

// pages writes a batch of pages:
//
//	count u32 | count × (gpa|flags u64, [PageSize]byte unless flags has zero)
//
// UNTRUSTED: every entry's flags and address are checked, and the entries
// must fill the payload exactly.
func (rv *receiver) pages(p []byte) error {
	if len(p) < 4 {
		return fmt.Errorf("Pages message too short (%d bytes)", len(p))
	}
	count := binary.BigEndian.Uint32(p)
	if count == 0 || count > MaxBatchPages {
		return fmt.Errorf("Pages message with %d pages (1 to %d allowed)", count, MaxBatchPages)
	}
	p = p[4:]
	for i := uint32(0); i < count; i++ {
		if len(p) < pageEntryHdr {
			return fmt.Errorf("Pages message truncated at entry %d of %d", i, count)
		}
		word := binary.BigEndian.Uint64(p)
		p = p[pageEntryHdr:]
		gpa, flags := word&^pageFlagsMask, word&pageFlagsMask
		if flags&^pageFlagZero != 0 {
			return fmt.Errorf("page %#x has unknown flags %#x", gpa, flags)
		}
		n, err := rv.idx.index(gpa)
		if err != nil {
			return fmt.Errorf("Pages entry %d: %w", i, err)
		}
		var data []byte
		if flags&pageFlagZero != 0 {
			rv.report.ZeroPages++
		} else {
			if len(p) < PageSize {
				return fmt.Errorf("Pages message truncated in the data of page %#x", gpa)
			}
			data, p = p[:PageSize], p[PageSize:]
		}
		if err := rv.tgt.WritePage(gpa, data); err != nil {
			return fmt.Errorf("writing page %#x: %w", gpa, err)
		}
		rv.written.set(n)
		rv.report.Pages++
		rv.inRound++
	}
	if len(p) != 0 {
		return fmt.Errorf("Pages message has %d bytes after its %d pages", len(p), count)
	}
	return nil
}

// roundEnd checks that rounds are numbered 1, 2, 3... and that the source
// and we agree on how many pages the round had.
//
// UNTRUSTED: from the source.
func (rv *receiver) roundEnd(p []byte) error {
	round, pages, err := parseRoundEnd(p)
	if err != nil {
		return err
	}
	if round != rv.round {
		return fmt.Errorf("RoundEnd for round %d during round %d", round, rv.round)
	}
	if pages != rv.inRound {
		return fmt.Errorf("round %d: the source sent %d pages but %d arrived", round, pages, rv.inRound)
	}
	rv.report.Rounds = int(round)
	rv.round++
	rv.inRound = 0
	rv.sawRound = true
	return nil
}

// verify compares every page with the source's checksum (Options.Verify),
// and fails the migration if any differs.
//
// UNTRUSTED: the count must be the layout's; the checksums are only
// compared.
func (rv *receiver) verify(p []byte) error {
	if !rv.sawRound || rv.inRound != 0 || rv.verified {
		return errors.New("Verify message before the last round ended, or twice")
	}
	if missing := rv.idx.total - rv.written.count(); missing != 0 {
		return fmt.Errorf("Verify message with %d pages never received", missing)
	}
	if len(p) != verifyPayloadSize(rv.idx.total) || uint64(binary.BigEndian.Uint32(p)) != rv.idx.total {
		return fmt.Errorf("Verify message of %d bytes for %d pages of RAM", len(p), rv.idx.total)
	}
	reader, ok := rv.tgt.(PageReader)
	if !ok {
		return errors.New("the source asked to verify memory, which this destination cannot read back")
	}
	page := make([]byte, PageSize)
	var differ []uint64
	count := 0
	for n := uint64(0); n < rv.idx.total; n++ {
		gpa := rv.idx.gpa(n)
		if err := reader.ReadPage(gpa, page); err != nil {
			return fmt.Errorf("reading back page %#x: %w", gpa, err)
		}
		if pageCRC(page) != binary.BigEndian.Uint32(p[4+4*n:]) {
			count++
			if len(differ) < 16 {
				differ = append(differ, gpa)
			}
		}
	}
	if count > 0 {
		return fmt.Errorf("memory verification failed: %d pages differ from the source's after the final round (at %#x): "+
			"writes the source's dirty log did not report", count, differ)
	}
	rv.verified = true
	rv.report.Verified = true
	return nil
}

// restore checks that memory is complete and hands the state to the Target.
//
// UNTRUSTED: the blob is the Target's to validate; we check its place in
// the stream.
func (rv *receiver) restore(p []byte) error {
	if !rv.sawRound || rv.inRound != 0 {
		return errors.New("State message before the last round ended")
	}
	if missing := rv.idx.total - rv.written.count(); missing != 0 {
		first, _ := rv.missingPage()
		return fmt.Errorf("memory incomplete: %d pages never received (the first at %#x)", missing, first)
	}
	if len(p) == 0 {
		return errors.New("State message is empty")
	}
	rv.report.StateBytes = len(p)
	if err := rv.tgt.RestoreState(bytes.Clone(p)); err != nil {
		return fmt.Errorf("restoring the machine state: %w", err)
	}
	return nil
}

func (rv *receiver) missingPage() (uint64, bool) {
	for n := uint64(0); n < rv.idx.total; n++ {
		if !rv.written.has(n) {
			return rv.idx.gpa(n), true
		}
	}
	return 0, false
}
