package disk

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"govmm/devices/disk/nbd"
)

// Kind is a backend type.
type Kind string

const (
	KindFile Kind = "file" // an image file or block device on this host
	KindNBD  Kind = "nbd"  // an export of an NBD server
)

// DefaultNBDPort is NBD's IANA port, used when nbd:// names none.
const DefaultNBDPort = 10809

// defaultConnectTimeout bounds Open's connection to an NBD server when
// OpenOptions.Context is nil.
const defaultConnectTimeout = 30 * time.Second

// Spec says which disk to open, as parsed from a --disk argument. It is
// plain data, so it can travel in migration state and be reopened on the
// destination: ParseSpec(s.String()) gives s back.
type Spec struct {
	Kind Kind
	// Path is the file (KindFile).
	Path string
	// Network is "tcp" or "unix", Address "host:port" or the socket's
	// path, and Export the export name, "" for the server's default
	// (KindNBD).
	Network string
	Address string
	Export  string
	// ReadOnly refuses writes, even where the backend would take them.
	ReadOnly bool
}

// ParseSpec reads a disk spec in QEMU's and libnbd's spelling:
//
//	PATH or file:PATH                    an image file or block device
//	nbd://HOST[:PORT][/EXPORT]           NBD over TCP (port 10809 by default)
//	nbd+unix:///[EXPORT]?socket=PATH     NBD over a unix socket
//
// followed by options after commas: ",readonly" (or ",ro"). As in QEMU, a
// comma that belongs to the path or URI is written twice (",,"). The export
// in a URI is percent-decoded; IPv6 hosts go in brackets
// (nbd://[::1]:10809/disk).
//
// UNTRUSTED: a spec also arrives in the migration stream from the source
// govmm. ParseSpec only validates; nothing is opened until Open.
func ParseSpec(s string) (Spec, error) {
	target, opts := splitOptions(s)
	if target == "" {
		return Spec{}, fmt.Errorf("disk %q: empty path or URI", s)
	}
	var spec Spec
	var err error
	scheme, _, hasScheme := strings.Cut(target, ":")
	switch {
	case strings.HasPrefix(target, "nbd://"):
		spec, err = parseNBDTCP(target)
	case strings.HasPrefix(target, "nbd+unix://"):
		spec, err = parseNBDUnix(target)
	case strings.HasPrefix(target, "file:"):
		spec = Spec{Kind: KindFile, Path: strings.TrimPrefix(target, "file:")}
		if spec.Path == "" {
			err = fmt.Errorf("file: needs a path")
		}
	case strings.HasPrefix(target, "nbds://"), strings.HasPrefix(target, "nbds+unix://"):
		err = fmt.Errorf("NBD over TLS (%s:) is not supported", scheme)
	case hasScheme && strings.HasPrefix(target[len(scheme)+1:], "//"):
		err = fmt.Errorf("unknown scheme %q (use nbd://, nbd+unix:// or file:)", scheme)
	default:
		// A plain path; it may contain colons (file:a:b is the same file).
		spec = Spec{Kind: KindFile, Path: target}
	}
	if err != nil {
		return Spec{}, fmt.Errorf("disk %q: %w", s, err)
	}
	for _, opt := range opts {
		switch opt {
		case "readonly", "ro", "readonly=on", "ro=on":
			spec.ReadOnly = true
		case "":
			return Spec{}, fmt.Errorf("disk %q: empty option after a comma (a comma in a path is written ,,)", s)
		default:
			return Spec{}, fmt.Errorf("disk %q: unknown option %q (known: readonly, ro)", s, opt)
		}
	}
	return spec, nil
}

// splitOptions cuts s at its single commas; ",," stands for a comma in the
// first part.
func splitOptions(s string) (target string, opts []string) {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != ',' {
			cur.WriteByte(s[i])
			continue
		}
		if len(parts) == 0 && i+1 < len(s) && s[i+1] == ',' {
			cur.WriteByte(',')
			i++
			continue
		}
		parts = append(parts, cur.String())
		cur.Reset()
	}
	parts = append(parts, cur.String())
	return parts[0], parts[1:]
}

// parseNBDTCP reads nbd://HOST[:PORT][/EXPORT].
func parseNBDTCP(target string) (Spec, error) {
	u, err := url.Parse(target)
	if err != nil {
		return Spec{}, fmt.Errorf("not a valid URI: %w", err)
	}
	if u.User != nil {
		return Spec{}, fmt.Errorf("nbd:// takes no user name")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Spec{}, fmt.Errorf("nbd:// takes no query or fragment (got %q)", "?"+u.RawQuery)
	}
	host := u.Hostname()
	if host == "" {
		return Spec{}, fmt.Errorf("nbd:// needs a host, as in nbd://127.0.0.1:10809/export")
	}
	port := DefaultNBDPort
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Spec{}, fmt.Errorf("bad port %q (want 1-65535)", p)
		}
		port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return Spec{}, fmt.Errorf("empty port after %q", u.Host)
	}
	return Spec{
		Kind:    KindNBD,
		Network: "tcp",
		Address: net.JoinHostPort(host, strconv.Itoa(port)),
		Export:  strings.TrimPrefix(u.Path, "/"),
	}, nil
}

// parseNBDUnix reads nbd+unix:///[EXPORT]?socket=PATH.
func parseNBDUnix(target string) (Spec, error) {
	u, err := url.Parse(target)
	if err != nil {
		return Spec{}, fmt.Errorf("not a valid URI: %w", err)
	}
	if u.Host != "" || u.User != nil {
		return Spec{}, fmt.Errorf("nbd+unix:// takes no host (%q); write nbd+unix:///EXPORT?socket=PATH", u.Host)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Spec{}, fmt.Errorf("bad query %q: %w", u.RawQuery, err)
	}
	socket := q.Get("socket")
	if socket == "" {
		return Spec{}, fmt.Errorf("nbd+unix:// needs ?socket=PATH, as in nbd+unix:///export?socket=/run/nbd.sock")
	}
	for key := range q {
		if key != "socket" {
			return Spec{}, fmt.Errorf("unknown query parameter %q (only socket=)", key)
		}
	}
	if len(q["socket"]) > 1 {
		return Spec{}, fmt.Errorf("socket= given %d times", len(q["socket"]))
	}
	return Spec{
		Kind:    KindNBD,
		Network: "unix",
		Address: socket,
		Export:  strings.TrimPrefix(u.Path, "/"),
	}, nil
}

// String spells the spec the way ParseSpec reads it.
func (s Spec) String() string {
	var target string
	switch s.Kind {
	case KindNBD:
		// url.URL escapes the export; a '/' in it stays as it is.
		u := url.URL{Scheme: "nbd", Host: s.Address, Path: "/" + s.Export}
		if s.Network == "unix" {
			// The socket keeps its slashes, for the reader's sake.
			u = url.URL{Scheme: "nbd+unix", Path: "/" + s.Export,
				RawQuery: "socket=" + strings.ReplaceAll(url.QueryEscape(s.Address), "%2F", "/")}
		}
		target = u.String()
	default:
		target = "file:" + s.Path
	}
	target = strings.ReplaceAll(target, ",", ",,")
	if s.ReadOnly {
		target += ",readonly"
	}
	return target
}

// OpenOptions are the host's side of opening a disk.
type OpenOptions struct {
	// Log receives backend events, one line per call: NBD connection lost
	// and reconnected. nil discards them.
	Log func(format string, args ...any)
	// Context bounds the connection to an NBD server (nil: 30 s); it does
	// not bound the disk's life.
	Context context.Context
}

// Open opens the disk a spec names. Errors start with the spec, as in
// "disk file:/x.img: open /x.img: no such file or directory".
func Open(spec Spec, opts OpenOptions) (Disk, error) {
	d, err := open(spec, opts)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", spec, err)
	}
	return d, nil
}

func open(spec Spec, opts OpenOptions) (Disk, error) {
	switch spec.Kind {
	case KindFile:
		return OpenFile(spec.Path, spec.ReadOnly)
	case KindNBD:
		if spec.Network != "tcp" && spec.Network != "unix" {
			return nil, fmt.Errorf("unknown network %q (want tcp or unix)", spec.Network)
		}
		ctx := opts.Context
		if ctx == nil {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(context.Background(), defaultConnectTimeout)
			defer cancel()
		}
		nbdOpts := []nbd.Option{nbd.WithLog(opts.Log)}
		if spec.ReadOnly {
			nbdOpts = append(nbdOpts, nbd.WithReadOnly())
		}
		return nbd.Dial(ctx, spec.Network, spec.Address, spec.Export, nbdOpts...)
	}
	return nil, fmt.Errorf("unknown kind of disk %q", spec.Kind)
}

// The NBD client is a full disk: a compile-time check that the two
// packages agree.
var _ interface {
	Disk
	Discarder
	ZeroWriter
} = (*nbd.Client)(nil)
