package testhost

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// fakeBzImage builds the parts of a bzImage ExtractVmlinux reads: the setup
// header fields and an LZ4 legacy payload followed by its le32 size.
func fakeBzImage(t *testing.T, vmlinux []byte) []byte {
	t.Helper()
	var z bytes.Buffer
	w := lz4.NewWriter(&z)
	if err := w.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(vmlinux); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	payload := binary.LittleEndian.AppendUint32(z.Bytes(), uint32(len(vmlinux)))

	const setupSects, payloadOffset = 3, 0x180
	pmStart := (setupSects + 1) * 512
	img := make([]byte, pmStart+payloadOffset+len(payload)+64)
	img[hdrSetupSects] = setupSects
	copy(img[hdrMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[hdrVersion:], 0x20f)
	binary.LittleEndian.PutUint32(img[hdrPayloadOffset:], payloadOffset)
	binary.LittleEndian.PutUint32(img[hdrPayloadLength:], uint32(len(payload)))
	copy(img[pmStart+payloadOffset:], payload)
	return img
}

func fakeVmlinux() []byte {
	r := rand.New(rand.NewSource(1))
	b := make([]byte, 3<<20) // several LZ4 blocks
	for i := range b {
		b[i] = byte(r.Intn(8)) // compressible, not trivially
	}
	copy(b, "\x7fELF")
	return b
}

func TestExtractVmlinux(t *testing.T) {
	want := fakeVmlinux()
	got, err := ExtractVmlinux(fakeBzImage(t, want))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("extracted %d bytes, differ from the %d-byte original", len(got), len(want))
	}
}

func TestExtractVmlinuxRejects(t *testing.T) {
	vmlinux := fakeVmlinux()
	for _, tc := range []struct {
		name   string
		mutate func(img []byte) []byte
		want   string
	}{
		{"short file", func(img []byte) []byte { return img[:0x100] }, "too short"},
		{"no magic", func(img []byte) []byte { img[hdrMagic] = 'X'; return img }, "HdrS"},
		{"old protocol", func(img []byte) []byte {
			binary.LittleEndian.PutUint16(img[hdrVersion:], 0x206)
			return img
		}, "2.08"},
		{"payload past the end", func(img []byte) []byte {
			binary.LittleEndian.PutUint32(img[hdrPayloadLength:], uint32(len(img)))
			return img
		}, "outside"},
		{"not lz4", func(img []byte) []byte { img[4*512+0x180] = 0x1f; return img }, "not LZ4"},
		{"wrong size trailer", func(img []byte) []byte {
			end := 4*512 + 0x180 + int(binary.LittleEndian.Uint32(img[hdrPayloadLength:]))
			binary.LittleEndian.PutUint32(img[end-4:], uint32(len(vmlinux)+1))
			return img
		}, "trailer says"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ExtractVmlinux(tc.mutate(fakeBzImage(t, vmlinux)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
