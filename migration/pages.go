package migration

import (
	"fmt"
	"math/bits"
	"sort"
)

// pageIndex numbers the pages of a memory layout 0..total-1 in GPA order,
// so that dirty sets can be dense bitmaps (one bit per page, like KVM's
// dirty log) instead of maps.
type pageIndex struct {
	layout []Region
	first  []uint64 // page number of each region's first page
	total  uint64   // pages in the layout
}

// newPageIndex indexes a layout that ValidateLayout accepted.
func newPageIndex(layout []Region) *pageIndex {
	x := &pageIndex{layout: layout, first: make([]uint64, len(layout))}
	for i, r := range layout {
		x.first[i] = x.total
		x.total += r.Size / PageSize
	}
	return x
}

// index returns the page number of gpa, which must be page-aligned and
// inside the layout.
func (x *pageIndex) index(gpa uint64) (uint64, error) {
	if gpa%PageSize != 0 {
		return 0, fmt.Errorf("page address %#x is not page-aligned", gpa)
	}
	// The first region that ends after gpa.
	i := sort.Search(len(x.layout), func(i int) bool {
		r := x.layout[i]
		return r.Start+r.Size > gpa
	})
	if i == len(x.layout) || gpa < x.layout[i].Start {
		return 0, fmt.Errorf("page address %#x is outside guest memory", gpa)
	}
	return x.first[i] + (gpa-x.layout[i].Start)/PageSize, nil
}

// gpa is the inverse of index.
func (x *pageIndex) gpa(n uint64) uint64 {
	i := sort.Search(len(x.first), func(i int) bool { return x.first[i] > n }) - 1
	return x.layout[i].Start + (n-x.first[i])*PageSize
}

// bitmap is a set of page numbers.
type bitmap []uint64

func newBitmap(pages uint64) bitmap { return make(bitmap, (pages+63)/64) }

func (b bitmap) set(n uint64)      { b[n/64] |= 1 << (n % 64) }
func (b bitmap) has(n uint64) bool { return b[n/64]&(1<<(n%64)) != 0 }

// setAll marks pages 0..pages-1.
func (b bitmap) setAll(pages uint64) {
	for i := range b {
		b[i] = ^uint64(0)
	}
	if r := pages % 64; r != 0 {
		b[len(b)-1] = 1<<r - 1
	}
}

func (b bitmap) clear() { clear(b) }

func (b bitmap) count() uint64 {
	var n int
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// next returns the first page number >= n in the set, or false.
func (b bitmap) next(n uint64) (uint64, bool) {
	i := n / 64
	if i >= uint64(len(b)) {
		return 0, false
	}
	w := b[i] >> (n % 64)
	if w != 0 {
		return n + uint64(bits.TrailingZeros64(w)), true
	}
	for i++; i < uint64(len(b)); i++ {
		if b[i] != 0 {
			return i*64 + uint64(bits.TrailingZeros64(b[i])), true
		}
	}
	return 0, false
}
