package migration

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

// stream builds a source's side of a migration by hand.
type stream struct {
	buf bytes.Buffer
	fw  frameWriter
}

func newStream() *stream {
	s := &stream{}
	s.fw.w = &s.buf
	s.buf.Write(preamble())
	return s
}

func (s *stream) msg(t msgType, payload []byte) *stream {
	s.fw.writeMsg(t, payload)
	return s
}

func (s *stream) hello(layout ...Region) *stream {
	return s.msg(msgHello, appendHello(nil, hello{pageSize: PageSize, layout: layout, name: "test"}))
}

// page is one Pages entry: data nil means a zero page.
type page struct {
	word uint64
	data []byte
}

func (s *stream) pages(ps ...page) *stream {
	p := binary.BigEndian.AppendUint32(nil, uint32(len(ps)))
	for _, e := range ps {
		p = binary.BigEndian.AppendUint64(p, e.word)
		p = append(p, e.data...)
	}
	return s.msg(msgPages, p)
}

func (s *stream) roundEnd(round uint32, n uint64) *stream {
	return s.msg(msgRoundEnd, appendRoundEnd(nil, round, n))
}

func (s *stream) bytes() []byte { return bytes.Clone(s.buf.Bytes()) }

func dataPage(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

// smallLayout is two pages: one at 0, one at 1 MiB.
var smallLayout = []Region{{Start: 0, Size: PageSize}, {Start: 1 << 20, Size: PageSize}}

// validStream is a complete two-round migration of smallLayout.
func validStream() []byte {
	return newStream().hello(smallLayout...).
		pages(page{0, dataPage(1)}, page{1<<20 | pageFlagZero, nil}).roundEnd(1, 2).
		pages(page{1 << 20, dataPage(2)}).roundEnd(2, 1).
		msg(msgState, []byte("state")).msg(msgGo, nil).bytes()
}

// pipeRW feeds Receive a fixed stream and swallows its replies.
type pipeRW struct {
	io.Reader
	replies bytes.Buffer
}

func (p *pipeRW) Write(b []byte) (int, error) { return p.replies.Write(b) }

func receiveBytes(data []byte, tgt *fakeTarget) (*ReceiveReport, error) {
	rw := &pipeRW{Reader: bytes.NewReader(data)}
	return Receive(context.Background(), rw, tgt, ReceiveOptions{MaxMemory: 1 << 24, MaxStateSize: 1 << 16})
}

func TestReceiveValidStream(t *testing.T) {
	tgt := newFakeTarget()
	rep, err := receiveBytes(validStream(), tgt)
	if err != nil {
		t.Fatal(err)
	}
	if !tgt.resumed || string(tgt.state) != "state" || rep.Rounds != 2 || rep.Pages != 3 || rep.ZeroPages != 1 {
		t.Errorf("resumed=%v state=%q report %+v", tgt.resumed, tgt.state, rep)
	}
	if !bytes.Equal(tgt.pages[0], dataPage(1)) || !bytes.Equal(tgt.pages[1<<20], dataPage(2)) {
		t.Error("pages not written")
	}
}

func TestReceiveRejects(t *testing.T) {
	valid := validStream()
	hdr := len(preamble())
	h := func() *stream { return newStream().hello(smallLayout...) }
	full := func() *stream { // memory complete, round 1 ended
		return h().pages(page{0, dataPage(1)}, page{1 << 20, dataPage(2)}).roundEnd(1, 2)
	}
	withVersion := append([]byte(magic), 0, 0, 0, 2)
	corrupt := bytes.Clone(valid)
	corrupt[hdr+40]++ // inside Hello's layout
	hugeState := h().bytes()
	hugeState = append(hugeState, byte(msgState), 0x7f, 0xff, 0xff, 0xff)
	hugePages := append(h().bytes(), byte(msgPages), 0, 0x20, 0, 0)

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "reading the stream header: stream truncated"},
		{"wrong magic", []byte("QEVM\x00\x00\x00\x03xxxx"), "not a govmm migration stream"},
		{"newer version", withVersion, "unsupported migration stream version 2 (this govmm speaks version 1)"},
		{"unknown type", append(newStream().bytes(), 0x42, 0, 0, 0, 0), "unknown message type 0x42"},
		{"state too large", hugeState, "State message of 2147483647 bytes exceeds the limit of 65536 bytes"},
		{"batch too large", hugePages, "Pages message of 2097152 bytes exceeds the limit"},
		{"checksum", corrupt, "checksum mismatch in a Hello message"},
		{"truncated payload", valid[:hdr+30], "stream truncated"},
		{"truncated checksum", h().bytes()[:len(h().bytes())-2], "reading the checksum of a Hello message"},
		{"ends between messages", h().bytes(), "connection closed by the peer"},
		{"pages before hello", newStream().pages(page{0, dataPage(1)}).bytes(), "unexpected Pages message"},
		{"two hellos", h().hello(smallLayout...).bytes(), "unexpected Hello message"},
		{"page size", newStream().msg(msgHello, appendHello(nil, hello{pageSize: 2 << 20, layout: smallLayout})).bytes(), "page size 2097152"},
		{"no regions", newStream().hello().bytes(), "no regions"},
		{"overlap", newStream().hello(Region{0, 2 * PageSize}, Region{PageSize, PageSize}).bytes(), "overlaps"},
		{"unaligned region", newStream().hello(Region{100, PageSize}).bytes(), "not page-aligned"},
		{"beyond 52 bits", newStream().hello(Region{1 << 52, PageSize}).bytes(), "52-bit"},
		{"wrapping region", newStream().hello(Region{1 << 51, ^uint64(0) &^ (PageSize - 1)}).bytes(), "52-bit"},
		{"too much RAM", newStream().hello(Region{0, 1 << 30}).bytes(), "exceeds this destination's limit"},
		{"hello count lies", newStream().msg(msgHello, []byte{0, 0, 16, 0, 0, 0, 0, 9}).bytes(), "too short for 9 memory regions"},
		{"hello name lies", newStream().msg(msgHello, []byte{0, 0, 16, 0, 0, 0, 0, 0, 0, 5, 'a'}).bytes(), "name of 5 bytes"},
		{"page outside memory", h().pages(page{2 << 20, dataPage(1)}).bytes(), "page address 0x200000 is outside guest memory"},
		{"page in the hole", h().pages(page{PageSize, nil}).bytes(), "outside guest memory"},
		{"unknown page flags", h().pages(page{1<<20 | 2, dataPage(1)}).bytes(), "unknown flags 0x2"},
		{"missing page data", h().pages(page{0, dataPage(1)[:100]}).bytes(), "truncated in the data of page 0x0"},
		{"batch count lies", h().msg(msgPages, []byte{0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1}).bytes(), "truncated at entry 1 of 3"},
		{"empty batch", h().msg(msgPages, []byte{0, 0, 0, 0}).bytes(), "Pages message with 0 pages"},
		{"bytes after batch", h().msg(msgPages, append(binary.BigEndian.AppendUint32(nil, 1), 0, 0, 0, 0, 0, 0, 0, 1, 9)).bytes(), "1 bytes after its 1 pages"},
		{"round count mismatch", h().pages(page{pageFlagZero, nil}).roundEnd(1, 5).bytes(), "the source sent 5 pages but 1 arrived"},
		{"round number skips", h().pages(page{pageFlagZero, nil}).roundEnd(2, 1).bytes(), "RoundEnd for round 2 during round 1"},
		{"short RoundEnd", h().msg(msgRoundEnd, []byte{1}).bytes(), "RoundEnd message of 1 bytes"},
		{"state mid round", full().pages(page{pageFlagZero, nil}).msg(msgState, []byte("s")).bytes(), "before the last round ended"},
		{"state before any round", h().msg(msgState, []byte("s")).bytes(), "before the last round ended"},
		{"memory incomplete", h().pages(page{pageFlagZero, nil}).roundEnd(1, 1).msg(msgState, []byte("s")).bytes(), "1 pages never received (the first at 0x100000)"},
		{"empty state", full().msg(msgState, nil).bytes(), "State message is empty"},
		{"go before state", full().msg(msgGo, nil).bytes(), "unexpected Go message"},
		{"pages after state", full().msg(msgState, []byte("s")).pages(page{pageFlagZero, nil}).bytes(), "unexpected Pages message"},
		{"no go", full().msg(msgState, []byte("s")).bytes(), "waiting for Go"},
		{"source aborts", h().msg(msgError, []byte("disk on fire\x1b[2J")).bytes(), `the source aborted the migration: "disk on fire\x1b[2J"`},
		{"reply type from source", h().msg(msgResumed, nil).bytes(), "unexpected Resumed message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tgt := newFakeTarget()
			_, err := receiveBytes(tt.data, tgt)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "the guest was not started here") {
				t.Errorf("error %q does not say the guest was not started", err)
			}
			if tgt.resumed {
				t.Error("target resumed on a bad stream")
			}
		})
	}
}

// The destination answers a bad stream with an Error message the source
// can show.
func TestReceiveRepliesWithError(t *testing.T) {
	rw := &pipeRW{Reader: bytes.NewReader(newStream().hello(Region{0, 1 << 30}).bytes())}
	if _, err := Receive(context.Background(), rw, newFakeTarget(), ReceiveOptions{MaxMemory: 1 << 20}); err == nil {
		t.Fatal("accepted 1 GiB with a 1 MiB limit")
	}
	fr := frameReader{r: &rw.replies}
	typ, p, err := fr.readFrame()
	if err != nil || typ != msgError || !strings.Contains(string(p), "exceeds this destination's limit") {
		t.Errorf("reply %v %q %v, want an Error naming the limit", typ, p, err)
	}
}

// A length claim does not allocate: a peer that announces a large message
// and sends little costs at most one chunk.
func TestReceiveDoesNotTrustLengths(t *testing.T) {
	data := append(newStream().bytes(), byte(msgState), 0x00, 0xff, 0xff, 0xff)
	fr := frameReader{r: bytes.NewReader(data[len(preamble()):]), maxState: 32 << 20}
	if _, _, err := fr.readFrame(); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("error %v, want truncation", err)
	}
	if cap(fr.buf) > 1<<20 {
		t.Errorf("a 16 MiB claim with no data allocated %d bytes", cap(fr.buf))
	}
}

func FuzzReceive(f *testing.F) {
	valid := validStream()
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(newStream().hello(smallLayout...).bytes())
	f.Add(newStream().hello(Region{0, 16 * PageSize}, Region{1 << 32, PageSize}).
		pages(page{1 << 32, dataPage(7)}, page{5 * PageSize, nil}).roundEnd(1, 2).bytes())
	f.Add(newStream().bytes())
	for _, i := range []int{0, 9, 12, 13, 20, 40, len(valid) - 9, len(valid) - 1} {
		m := bytes.Clone(valid)
		m[i] ^= 0x5a
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tgt := newFakeTarget()
		_, err := receiveBytes(data, tgt)
		if err == nil && !tgt.resumed {
			t.Fatal("Receive succeeded without resuming the target")
		}
		if err != nil && tgt.resumed {
			t.Fatalf("Receive failed (%v) after resuming the target", err)
		}
		if err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}

// failWriter refuses the reply of one type.
type failWriter struct {
	io.Reader
	fail msgType
}

func (w *failWriter) Write(b []byte) (int, error) {
	if msgType(b[0]) == w.fail {
		return 0, io.ErrClosedPipe
	}
	return len(b), nil
}

// If Resumed cannot be sent, the guest still runs here: Receive succeeds
// and notes the lost acknowledgement (the source reports ErrOutcomeUnknown).
func TestReceiveLostResumedStillRuns(t *testing.T) {
	tgt := newFakeTarget()
	rep, err := Receive(context.Background(), &failWriter{Reader: bytes.NewReader(validStream()), fail: msgResumed}, tgt, ReceiveOptions{})
	if err != nil || !tgt.resumed || !strings.Contains(rep.AckError, "sending Resumed") {
		t.Errorf("err %v resumed %v AckError %q; want success with the lost ack noted", err, tgt.resumed, rep.AckError)
	}
}
