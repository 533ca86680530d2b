package linux

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"
)

// A QMP client, just enough to drive QEMU's own live migration for the
// benchmarks' side-by-side figures (BenchmarkMigration). QMP is JSON over
// a socket (QEMU's docs/interop/qmp-spec.rst): QEMU greets with
// {"QMP": ...}, the client leaves capabilities negotiation with
// qmp_capabilities, then every {"execute": ...} gets exactly one
// {"return": ...} or {"error": ...}; {"event": ...} lines may come in
// between at any time and are skipped here.

type qmp struct {
	t    testing.TB
	conn net.Conn
	in   *bufio.Scanner
}

// dialQMP connects to QEMU's QMP socket (-qmp unix:PATH,server=on,wait=off)
// and negotiates capabilities, retrying until QEMU has created the socket.
func dialQMP(t testing.TB, path string) *qmp {
	t.Helper()
	deadline := time.Now().Add(listenTimeout)
	var conn net.Conn
	for {
		var err error
		if conn, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP socket %s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(func() { conn.Close() })
	q := &qmp{t: t, conn: conn, in: bufio.NewScanner(conn)}
	q.in.Buffer(make([]byte, 0, 64<<10), 1<<20)
	if _, err := q.read(); err != nil { // the greeting
		t.Fatalf("QMP greeting: %v", err)
	}
	q.run("qmp_capabilities", nil, nil)
	return q
}

// qmpMessage is any line QEMU sends.
type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class, Desc string
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

func (q *qmp) read() (qmpMessage, error) {
	q.conn.SetReadDeadline(time.Now().Add(replyTimeout))
	if !q.in.Scan() {
		if err := q.in.Err(); err != nil {
			return qmpMessage{}, err
		}
		return qmpMessage{}, fmt.Errorf("QEMU closed the QMP connection")
	}
	var m qmpMessage
	err := json.Unmarshal(q.in.Bytes(), &m)
	return m, err
}

// run executes command with arguments (nil for none) and decodes its
// return value into result (nil to ignore it). A QMP error fails the test.
func (q *qmp) run(command string, arguments, result any) {
	q.t.Helper()
	req := map[string]any{"execute": command}
	if arguments != nil {
		req["arguments"] = arguments
	}
	line, err := json.Marshal(req)
	if err != nil {
		q.t.Fatal(err)
	}
	if _, err := q.conn.Write(append(line, '\n')); err != nil {
		q.t.Fatalf("QMP %s: %v", command, err)
	}
	for {
		m, err := q.read()
		switch {
		case err != nil:
			q.t.Fatalf("QMP %s: %v", command, err)
		case m.Event != "":
			continue
		case m.Error != nil:
			q.t.Fatalf("QMP %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		}
		if result != nil {
			if err := json.Unmarshal(m.Return, result); err != nil {
				q.t.Fatalf("QMP %s: reply %s: %v", command, m.Return, err)
			}
		}
		return
	}
}

// qemuMigration is the part of QMP's query-migrate answer (MigrationInfo
// in QEMU's qapi/migration.json) the benchmark reports. Times are in
// milliseconds. QEMU's downtime runs from stopping the vCPUs on the source
// to the end of the stream as the source sees it; govmm's runs to the
// destination's resume, so it is the longer of the two by a round trip.
type qemuMigration struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	RAM       struct {
		Transferred    uint64 `json:"transferred"`
		Total          uint64 `json:"total"`
		DirtySyncCount uint64 `json:"dirty-sync-count"`
	} `json:"ram"`
	ErrorDesc string `json:"error-desc"`
}
