package disk

import (
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in   string
		want Spec
		str  string // String(); "" means in
	}{
		{"/var/lib/x.img", Spec{Kind: KindFile, Path: "/var/lib/x.img"}, "file:/var/lib/x.img"},
		{"x.img", Spec{Kind: KindFile, Path: "x.img"}, "file:x.img"},
		{"file:/x.img", Spec{Kind: KindFile, Path: "/x.img"}, ""},
		{"file:/x.img,readonly", Spec{Kind: KindFile, Path: "/x.img", ReadOnly: true}, ""},
		{"/x.img,ro", Spec{Kind: KindFile, Path: "/x.img", ReadOnly: true}, "file:/x.img,readonly"},
		{"/a,,b.img", Spec{Kind: KindFile, Path: "/a,b.img"}, "file:/a,,b.img"},
		{"/dev/disk/by-id/a:b", Spec{Kind: KindFile, Path: "/dev/disk/by-id/a:b"}, "file:/dev/disk/by-id/a:b"},
		{"nbd://127.0.0.1:10809/disk0,readonly", Spec{Kind: KindNBD, Network: "tcp", Address: "127.0.0.1:10809", Export: "disk0", ReadOnly: true}, ""},
		{"nbd://nas.example", Spec{Kind: KindNBD, Network: "tcp", Address: "nas.example:10809"}, "nbd://nas.example:10809/"},
		{"nbd://nas.example/", Spec{Kind: KindNBD, Network: "tcp", Address: "nas.example:10809"}, "nbd://nas.example:10809/"},
		{"nbd://[::1]:2000/a%20b", Spec{Kind: KindNBD, Network: "tcp", Address: "[::1]:2000", Export: "a b"}, ""},
		{"nbd://h:1/dir/disk", Spec{Kind: KindNBD, Network: "tcp", Address: "h:1", Export: "dir/disk"}, ""},
		{"nbd+unix:///disk?socket=/run/nbd.sock", Spec{Kind: KindNBD, Network: "unix", Address: "/run/nbd.sock", Export: "disk"}, ""},
		{"nbd+unix:///?socket=/tmp/a%20b.sock,ro", Spec{Kind: KindNBD, Network: "unix", Address: "/tmp/a b.sock", ReadOnly: true}, "nbd+unix:///?socket=/tmp/a+b.sock,readonly"},
		{"nbd+unix://?socket=rel.sock", Spec{Kind: KindNBD, Network: "unix", Address: "rel.sock"}, "nbd+unix:///?socket=rel.sock"},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseSpec(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		str := tt.str
		if str == "" {
			str = tt.in
		}
		if s := got.String(); s != str {
			t.Errorf("ParseSpec(%q).String() = %q, want %q", tt.in, s, str)
		}
		again, err := ParseSpec(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q through %q = %+v, %v", tt.in, got.String(), again, err)
		}
	}
}

func TestParseSpecErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty path or URI"},
		{",readonly", "empty path or URI"},
		{"http://x/y", `unknown scheme "http"`},
		{"nbds://h/x", "TLS"},
		{"nbd+unix:///disk", "needs ?socket=PATH"},
		{"nbd+unix://host/disk?socket=/s", "takes no host"},
		{"nbd+unix:///d?socket=/s&tls=on", `unknown query parameter "tls"`},
		{"nbd://h:99999/x", `bad port "99999"`},
		{"nbd://h:0/x", `bad port "0"`},
		{"nbd://h:port/x", "port"},
		{"nbd://h:/x", "empty port"},
		{"nbd:///x", "needs a host"},
		{"nbd://h/x?y=1", "no query"},
		{"file:", "needs a path"},
		{"/x.img,rw", `unknown option "rw"`},
		{"/x.img,", "empty option"},
	}
	for _, tt := range tests {
		_, err := ParseSpec(tt.in)
		if err == nil {
			t.Errorf("ParseSpec(%q) succeeded, want an error containing %q", tt.in, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSpec(%q) = %q, want it to contain %q", tt.in, err, tt.want)
		}
	}
}

// Spec values built by hand (not parsed) survive String and ParseSpec, even
// with characters that need escaping.
func TestSpecStringRoundTrip(t *testing.T) {
	specs := []Spec{
		{Kind: KindFile, Path: "/images/a,b c?.img", ReadOnly: true},
		{Kind: KindNBD, Network: "tcp", Address: "10.0.0.1:10809", Export: "x,y?z#w%"},
		{Kind: KindNBD, Network: "unix", Address: "/run/my nbd,1.sock", Export: "disk/0"},
		{Kind: KindNBD, Network: "tcp", Address: "[fe80::1]:7000"},
	}
	for _, s := range specs {
		got, err := ParseSpec(s.String())
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", s.String(), err)
			continue
		}
		if got != s {
			t.Errorf("ParseSpec(%q) = %+v, want %+v", s.String(), got, s)
		}
	}
}
