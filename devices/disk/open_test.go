package disk

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"govmm/devices/disk/nbd"
)

// Open of an nbd+unix:// spec reaches an nbd.Server serving a File: the
// whole path from a --disk argument to the bytes in an image.
func TestOpenNBD(t *testing.T) {
	path, want := newImage(t, 1<<20)
	f := mustOpenFile(t, path, false)
	dir, err := os.MkdirTemp("", "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &nbd.Server{Exports: map[string]nbd.Export{"img": f}}
	go srv.Serve(ln)
	defer srv.Close()

	spec, err := ParseSpec("nbd+unix:///img?socket=" + sock)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != 1<<20 || d.ReadOnly() {
		t.Fatalf("Size, ReadOnly = %d, %v", d.Size(), d.ReadOnly())
	}
	data := bytes.Repeat([]byte("via nbd "), 512)
	if _, err := d.WriteAt(data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	copy(want[8192:], data)
	got := make([]byte, 1<<20)
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the image does not hold what was written through NBD (err %v)", err)
	}

	spec.ReadOnly = true
	ro, err := Open(spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt(data, 0); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("a write through a ,readonly spec = %v", err)
	}

	spec = Spec{Kind: KindNBD, Network: "unix", Address: sock, Export: "nope"}
	_, err = Open(spec, OpenOptions{})
	if want := "disk " + spec.String() + `: export "nope" not found on ` + sock; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Open of an unknown export = %v; want it to start with %q", err, want)
	}
}
