package aml

import (
	"errors"
	"fmt"
	"strings"
)

// Opcodes (ACPI 6.4 §20.3 "AML Byte Stream Byte Values").
const (
	zeroOp      = 0x00
	oneOp       = 0x01
	nameOp      = 0x08
	bytePrefix  = 0x0a
	wordPrefix  = 0x0b
	dwordPrefix = 0x0c
	stringPref  = 0x0d
	qwordPrefix = 0x0e
	scopeOp     = 0x10
	bufferOp    = 0x11
	packageOp   = 0x12
	extOpPrefix = 0x5b
	deviceOp    = 0x82 // after extOpPrefix

	dualNamePrefix  = 0x2e
	multiNamePrefix = 0x2f
	rootChar        = '\\'
	parentPrefix    = '^'
	nullName        = 0x00
)

// Term is one AML object or statement.
type Term interface {
	appendAML(dst []byte) ([]byte, error)
}

// termFunc lets each constructor below be a closure.
type termFunc func(dst []byte) ([]byte, error)

func (f termFunc) appendAML(dst []byte) ([]byte, error) { return f(dst) }

// Encode returns the AML for terms, in order: a TermList (§20.2.5).
func Encode(terms ...Term) ([]byte, error) {
	return appendTerms(nil, terms)
}

func appendTerms(dst []byte, terms []Term) ([]byte, error) {
	var err error
	for _, t := range terms {
		if dst, err = t.appendAML(dst); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// maxPkgLength is the largest length a 4-byte PkgLength can hold (28 bits).
const maxPkgLength = 1<<28 - 1

// PkgLength returns the encoding of the PkgLength that precedes a body of
// bodyLen bytes (ACPI 6.4 §20.2.4). The encoded value counts its own bytes
// as well as the body. Up to 63 it fits in one byte (bits 0-5). Beyond, the
// lead byte's bits 6-7 give the number of bytes that follow (1-3), its bits
// 0-3 hold the low nibble, and the following bytes hold the rest, least
// significant first; bits 4-5 of the lead byte must then be zero.
func PkgLength(bodyLen int) ([]byte, error) {
	if bodyLen < 0 {
		return nil, fmt.Errorf("aml: negative length %d", bodyLen)
	}
	if total := bodyLen + 1; total <= 0x3f {
		return []byte{byte(total)}, nil
	}
	for follow := 1; follow <= 3; follow++ {
		total := bodyLen + 1 + follow
		if total >= 1<<(4+8*follow) {
			continue
		}
		b := make([]byte, 1+follow)
		b[0] = byte(follow<<6) | byte(total&0x0f)
		for i := 1; i <= follow; i++ {
			b[i] = byte(total >> (4 + 8*(i-1)))
		}
		return b, nil
	}
	return nil, fmt.Errorf("aml: length %d exceeds the PkgLength maximum %d", bodyLen, maxPkgLength)
}

// appendPkg appends PkgLength(len(body)) and body.
func appendPkg(dst, body []byte) ([]byte, error) {
	pl, err := PkgLength(len(body))
	if err != nil {
		return nil, err
	}
	return append(append(dst, pl...), body...), nil
}

// encodeNameString encodes an ASL path such as "_S5_", "\_SB_.PEVT" or
// "^PEVT" (ACPI 6.4 §20.2.2). Each segment is a NameSeg of 4 characters, a
// lead character A-Z or '_' then A-Z, 0-9 or '_'; as in ASL, a shorter
// segment is padded with '_' ("_SB" is "_SB_"). Two segments take a
// DualNamePrefix, more a MultiNamePrefix and a count.
func encodeNameString(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("aml: empty name")
	}
	var out []byte
	rest := path
	if strings.HasPrefix(rest, `\`) {
		out = append(out, rootChar)
		rest = rest[1:]
	} else {
		for strings.HasPrefix(rest, "^") {
			out = append(out, parentPrefix)
			rest = rest[1:]
		}
	}
	if rest == "" {
		return append(out, nullName), nil
	}
	segs := strings.Split(rest, ".")
	switch {
	case len(segs) == 2:
		out = append(out, dualNamePrefix)
	case len(segs) > 255:
		return nil, fmt.Errorf("aml: name %q has more than 255 segments", path)
	case len(segs) > 2:
		out = append(out, multiNamePrefix, byte(len(segs)))
	}
	for _, s := range segs {
		seg, err := nameSeg(s)
		if err != nil {
			return nil, fmt.Errorf("aml: name %q: %w", path, err)
		}
		out = append(out, seg[:]...)
	}
	return out, nil
}

func nameSeg(s string) ([4]byte, error) {
	var seg [4]byte
	if len(s) == 0 || len(s) > 4 {
		return seg, fmt.Errorf("segment %q must have 1 to 4 characters", s)
	}
	for i := range seg {
		c := byte('_')
		if i < len(s) {
			c = s[i]
		}
		lead := c >= 'A' && c <= 'Z' || c == '_'
		if !lead && (i == 0 || c < '0' || c > '9') {
			return seg, fmt.Errorf("segment %q: %q not allowed at position %d", s, c, i)
		}
		seg[i] = c
	}
	return seg, nil
}

// Integer is a constant integer, in the shortest encoding (§20.2.3):
// ZeroOp, OneOp, or a Byte/Word/DWord/QWord prefix and the value, little-
// endian.
func Integer(v uint64) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		switch {
		case v == 0:
			return append(dst, zeroOp), nil
		case v == 1:
			return append(dst, oneOp), nil
		case v <= 0xff:
			return append(dst, bytePrefix, byte(v)), nil
		case v <= 0xffff:
			return append(dst, wordPrefix, byte(v), byte(v>>8)), nil
		case v <= 0xffffffff:
			return append(dst, dwordPrefix, byte(v), byte(v>>8), byte(v>>16), byte(v>>24)), nil
		}
		dst = append(dst, qwordPrefix)
		for i := 0; i < 8; i++ {
			dst = append(dst, byte(v>>(8*i)))
		}
		return dst, nil
	})
}

// String is a constant ASCII string: StringPrefix, the characters
// (0x01-0x7f) and a NUL terminator (§20.2.3).
func String(s string) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		for i := 0; i < len(s); i++ {
			if s[i] == 0 || s[i] > 0x7f {
				return nil, fmt.Errorf("aml: string %q: byte %#02x is not allowed", s, s[i])
			}
		}
		dst = append(dst, stringPref)
		dst = append(dst, s...)
		return append(dst, 0), nil
	})
}

// EISAID is ASL EISAID("PNP0501"): a 7-character EISA/PNP device ID packed
// into a 32-bit integer (ACPI 6.4 §19.6.35). The three letters become 5-bit
// codes ('A' = 1) in the first two bytes, the four hex digits fill the
// last two; the bytes are stored in that order, so the integer's value is
// their little-endian reading.
func EISAID(id string) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		if len(id) != 7 {
			return nil, fmt.Errorf("aml: EISA ID %q must have 7 characters", id)
		}
		var l [3]byte
		for i := range l {
			c := id[i]
			if c < 'A' || c > 'Z' {
				return nil, fmt.Errorf("aml: EISA ID %q: %q is not an upper-case letter", id, c)
			}
			l[i] = c - 'A' + 1
		}
		var product uint16
		for _, c := range []byte(id[3:]) {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'A' && c <= 'F':
				d = c - 'A' + 10
			default:
				return nil, fmt.Errorf("aml: EISA ID %q: %q is not an upper-case hex digit", id, c)
			}
			product = product<<4 | uint16(d)
		}
		b0 := l[0]<<2 | l[1]>>3
		b1 := l[1]<<5 | l[2]
		v := uint64(b0) | uint64(b1)<<8 | uint64(product>>8)<<16 | uint64(product&0xff)<<24
		return Integer(v).appendAML(dst)
	})
}

// Buffer is a constant byte buffer: BufferOp PkgLength BufferSize ByteList
// (§20.2.5.4), with BufferSize the Integer len(data).
func Buffer(data []byte) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		body, err := Integer(uint64(len(data))).appendAML(nil)
		if err != nil {
			return nil, err
		}
		body = append(body, data...)
		return appendPkg(append(dst, bufferOp), body)
	})
}

// Package is a fixed-size package of data objects: PackageOp PkgLength
// NumElements PackageElementList (§20.2.5.4). NumElements is one byte, so
// at most 255 elements.
func Package(elems ...Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		if len(elems) > 255 {
			return nil, errors.New("aml: Package has more than 255 elements")
		}
		body, err := appendTerms([]byte{byte(len(elems))}, elems)
		if err != nil {
			return nil, err
		}
		return appendPkg(append(dst, packageOp), body)
	})
}

// Name creates a named object: NameOp NameString DataRefObject (§20.2.5.1),
// ASL Name(name, value).
func Name(name string, value Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		n, err := encodeNameString(name)
		if err != nil {
			return nil, err
		}
		return value.appendAML(append(append(dst, nameOp), n...))
	})
}

// Scope opens an existing namespace scope: ScopeOp PkgLength NameString
// TermList (§20.2.5.1), ASL Scope(name) { body }.
func Scope(name string, body ...Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		return appendNamedBlock(dst, []byte{scopeOp}, name, body)
	})
}

// Device declares a device object: ExtOpPrefix DeviceOp PkgLength
// NameString TermList (§20.2.5.2), ASL Device(name) { body }.
func Device(name string, body ...Term) Term {
	return termFunc(func(dst []byte) ([]byte, error) {
		return appendNamedBlock(dst, []byte{extOpPrefix, deviceOp}, name, body)
	})
}

func appendNamedBlock(dst, op []byte, name string, body []Term) ([]byte, error) {
	b, err := encodeNameString(name)
	if err != nil {
		return nil, err
	}
	if b, err = appendTerms(b, body); err != nil {
		return nil, err
	}
	return appendPkg(append(dst, op...), b)
}
