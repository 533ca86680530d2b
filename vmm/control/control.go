// Package control is govmm's control API: JSON over HTTP on a unix socket,
// as Firecracker and Cloud Hypervisor do, so that a running VM can be
// inspected, paused, resumed and migrated from another terminal:
//
//	curl --unix-socket /tmp/govmm.sock http://govmm/status
//	curl --unix-socket /tmp/govmm.sock -X POST http://govmm/pause
//	curl --unix-socket /tmp/govmm.sock -X POST http://govmm/resume
//	curl --unix-socket /tmp/govmm.sock -X POST -d '{"to":"127.0.0.1:4444"}' http://govmm/migrate
//	curl --unix-socket /tmp/govmm.sock http://govmm/migration
//	curl --unix-socket /tmp/govmm.sock http://govmm/vcpus
//
// POST /migrate answers with a stream of JSON lines, one per pre-copy round
// as it ends, then one with the final report or the error; `govmm migrate`
// is a client of exactly that. The server knows the VM only through the VM
// interface, which cmd/govmm implements with the machine.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"govmm/migration"
)

// VM is what the control API can do to a virtual machine.
type VM interface {
	Status() Status
	Pause() error
	Resume() error
	// Migrate sends the VM to req.To and returns when it runs there (or
	// the migration failed and it runs here again). progress is called
	// after each pre-copy round.
	Migrate(ctx context.Context, req MigrateRequest, progress func(migration.Round)) (*migration.Report, error)
	// VCPUs reports where each vCPU is (registers, the code at RIP),
	// briefly pausing a running VM: the first thing to look at when a
	// guest seems hung.
	VCPUs() ([]string, error)
}

// VCPUsReport is the answer of GET /vcpus: one crash-report-style text per
// vCPU.
type VCPUsReport struct {
	VCPUs []string `json:"vcpus"`
}

// Status is the answer of GET /status.
type Status struct {
	State       string `json:"state"` // running, paused, migrating, stopped
	MemoryBytes uint64 `json:"memory_bytes"`
	VCPUs       int    `json:"vcpus"`
	Kernel      string `json:"kernel,omitempty"`
}

// MigrateRequest is the body of POST /migrate. Zero values take the
// migration package's defaults (QEMU's: 128 MiB/s, 300 ms).
type MigrateRequest struct {
	To              string `json:"to"`                          // host:port of `govmm receive`
	MaxBandwidth    int64  `json:"max_bandwidth,omitempty"`     // bytes/s; -1 unlimited
	DowntimeLimitMS int64  `json:"downtime_limit_ms,omitempty"` // estimated downtime to aim for
	MaxRounds       int    `json:"max_rounds,omitempty"`        // including the stop-and-copy round
	Verify          bool   `json:"verify,omitempty"`            // check RAM page by page on the destination (migration.Options.Verify)
	Adaptive        bool   `json:"adaptive,omitempty"`          // Xen's adaptive rate limit
	StartBandwidth  int64  `json:"start_bandwidth,omitempty"`   // first limit when adaptive
}

// MigrateEvent is one line of the POST /migrate response and of
// GET /migration.
type MigrateEvent struct {
	Round  *migration.Round  `json:"round,omitempty"`
	Report *migration.Report `json:"report,omitempty"`
	Error  string            `json:"error,omitempty"`
	Done   bool              `json:"done"`
}

// Server serves the control API for one VM.
type Server struct {
	vm   VM
	path string
	ln   net.Listener
	http *http.Server

	mu        sync.Mutex
	migrating bool
	events    []MigrateEvent // of the current or last migration
	finished  chan struct{}  // closed when a migration's response is written
}

// Listen starts serving on the unix socket at path. A leftover socket from
// a govmm that died is replaced; one that still answers is refused, since
// it belongs to a running VM.
func Listen(path string, vm VM) (*Server, error) {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is in use by another govmm (choose another with --api)", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{vm: vm, path: path, ln: ln, finished: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("POST /pause", s.action(vm.Pause))
	mux.HandleFunc("POST /resume", s.action(vm.Resume))
	mux.HandleFunc("POST /migrate", s.migrate)
	mux.HandleFunc("GET /migration", s.migration)
	mux.HandleFunc("GET /vcpus", s.vcpus)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(ln)
	return s, nil
}

// Close stops serving and removes the socket.
func (s *Server) Close() {
	s.http.Close()
	os.Remove(s.path)
}

// MigrationFinished is closed once a migration's final answer has been
// written to its client, so that a source whose guest has left can wait for
// it before exiting.
func (s *Server) MigrationFinished() <-chan struct{} { return s.finished }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

type errorBody struct {
	Error string `json:"error"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.vm.Status())
}

func (s *Server) vcpus(w http.ResponseWriter, r *http.Request) {
	if s.busy() {
		writeJSON(w, http.StatusConflict, errorBody{"a migration is in progress"})
		return
	}
	reports, err := s.vm.VCPUs()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, VCPUsReport{reports})
}

func (s *Server) action(f func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.busy() {
			writeJSON(w, http.StatusConflict, errorBody{"a migration is in progress"})
			return
		}
		if err := f(); err != nil {
			writeJSON(w, http.StatusInternalServerError, errorBody{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, s.vm.Status())
	}
}

func (s *Server) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.migrating
}

// maxRequest bounds a request body: the API is local, but a body is still
// input.
const maxRequest = 64 << 10

func (s *Server) migrate(w http.ResponseWriter, r *http.Request) {
	var req MigrateRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{"bad migrate request: " + err.Error()})
		return
	}
	if req.To == "" {
		writeJSON(w, http.StatusBadRequest, errorBody{`bad migrate request: "to" (host:port of govmm receive) is missing`})
		return
	}
	s.mu.Lock()
	if s.migrating {
		s.mu.Unlock()
		writeJSON(w, http.StatusConflict, errorBody{"a migration is already in progress"})
		return
	}
	s.migrating, s.events = true, nil
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	emit := func(e MigrateEvent) {
		s.mu.Lock()
		s.events = append(s.events, e)
		s.mu.Unlock()
		enc.Encode(e) // a client that went away does not stop the migration
		if flusher != nil {
			flusher.Flush()
		}
	}
	// The migration is not tied to this request: a client that hangs up
	// must not abort it halfway.
	report, err := s.vm.Migrate(context.Background(), req, func(round migration.Round) {
		emit(MigrateEvent{Round: &round})
	})
	final := MigrateEvent{Report: report, Done: true}
	if err != nil {
		final.Error = err.Error()
	}
	emit(final)
	s.mu.Lock()
	s.migrating = false
	succeeded := err == nil
	s.mu.Unlock()
	if succeeded {
		close(s.finished)
	}
}

func (s *Server) migration(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	events := append([]MigrateEvent(nil), s.events...)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, events)
}

// Client talks to a govmm control socket.
type Client struct {
	path string
	http *http.Client
}

// Dial returns a client for the socket at path (nothing is sent yet).
func Dial(path string) *Client {
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

func (c *Client) do(method, url string, body any) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://govmm"+url, r)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return nil, fmt.Errorf("no govmm answers on %s (is the VM running with --api %s?): %v", c.path, c.path, op.Err)
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e errorBody
		json.NewDecoder(io.LimitReader(resp.Body, maxRequest)).Decode(&e)
		return nil, fmt.Errorf("%s %s: %s", method, url, e.Error)
	}
	return resp, nil
}

// Status asks for the VM's status.
func (c *Client) Status() (Status, error) {
	var st Status
	resp, err := c.do("GET", "/status", nil)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// VCPUs asks where each vCPU is.
func (c *Client) VCPUs() ([]string, error) {
	var rep VCPUsReport
	resp, err := c.do("GET", "/vcpus", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&rep)
	return rep.VCPUs, err
}

// Pause pauses the VM; Resume resumes it.
func (c *Client) Pause() error  { return c.simple("/pause") }
func (c *Client) Resume() error { return c.simple("/resume") }

func (c *Client) simple(url string) error {
	resp, err := c.do("POST", url, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Migrate starts a migration and follows it to the end, calling onRound for
// each round as the source reports it.
func (c *Client) Migrate(req MigrateRequest, onRound func(migration.Round)) (*migration.Report, error) {
	resp, err := c.do("POST", "/migrate", req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var e MigrateEvent
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("the source govmm stopped answering before the migration ended: %v", err)
		}
		if e.Round != nil && onRound != nil {
			onRound(*e.Round)
		}
		if e.Done {
			if e.Error != "" {
				return e.Report, errors.New(e.Error)
			}
			return e.Report, nil
		}
	}
}
