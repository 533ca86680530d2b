package console

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func run(t *testing.T, input string) (guest, out string, quits int) {
	t.Helper()
	var g, o bytes.Buffer
	c := New(strings.NewReader(input), &o, &g, func() { quits++ })
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return g.String(), o.String(), quits
}

func TestPlainInputReachesGuest(t *testing.T) {
	g, o, q := run(t, "ls -l\r\x03")
	if g != "ls -l\r\x03" || o != "" || q != 0 {
		t.Fatalf("guest %q out %q quits %d", g, o, q)
	}
}

func TestCtrlAXQuits(t *testing.T) {
	g, _, q := run(t, "abc\x01xdef")
	if q != 1 {
		t.Fatalf("Ctrl-A x ran quit %d times", q)
	}
	if g != "abcdef" {
		t.Fatalf("guest got %q; the escape must not reach it", g)
	}
}

func TestCtrlAASendsLiteralCtrlA(t *testing.T) {
	g, _, q := run(t, "\x01a\x01\x01")
	if g != "\x01\x01" || q != 0 {
		t.Fatalf("guest got %q quits %d", g, q)
	}
}

func TestCtrlAHPrintsHelp(t *testing.T) {
	g, o, _ := run(t, "\x01h")
	if g != "" || !strings.Contains(o, "Ctrl-A x") || !strings.Contains(o, "quit") {
		t.Fatalf("guest %q help %q", g, o)
	}
}

func TestEscapeSplitAcrossReads(t *testing.T) {
	var g, o bytes.Buffer
	quits := 0
	r := &chunked{parts: []string{"a\x01", "xb"}}
	c := New(r, &o, &g, func() { quits++ })
	c.Run()
	if quits != 1 || g.String() != "ab" {
		t.Fatalf("quits %d guest %q", quits, g.String())
	}
}

func TestUnknownEscapeIsSwallowed(t *testing.T) {
	g, _, q := run(t, "\x01zq")
	if g != "q" || q != 0 {
		t.Fatalf("guest %q quits %d", g, q)
	}
}

type chunked struct{ parts []string }

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts = c.parts[1:]
	return n, nil
}

func TestPromptingCommandReadsALine(t *testing.T) {
	var g, o bytes.Buffer
	var got []string
	c := New(strings.NewReader("ab\x01m127.0.0.2\x7f1:4444\rcd\x01mxyz\x03ef"), &o, &g, func() {})
	c.Bind(Command{Key: 'm', Help: "migrate", Prompt: "to: ", RunLine: func(l string) { got = append(got, l) }})
	c.Run()
	if len(got) != 1 || got[0] != "127.0.0.1:4444" {
		t.Fatalf("lines %q; want the edited line once (the second prompt was cancelled)", got)
	}
	if g.String() != "abcdef" {
		t.Fatalf("guest got %q: prompt keys must not reach it", g.String())
	}
	if !strings.Contains(o.String(), "to: ") || !strings.Contains(o.String(), "cancelled") {
		t.Fatalf("console output %q", o.String())
	}
}
