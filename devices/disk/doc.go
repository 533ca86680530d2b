// Package disk is where a virtual disk's bytes live: the backends behind
// virtio-blk. A backend is a Disk (disk.go), a flat array of bytes read and
// written at byte offsets, made durable by Flush, and optionally able to
// discard or zero a range without sending data. virtio-blk knows nothing
// else about it: the same device serves a local image file or an export of
// a network server.
//
// # Naming a disk
//
// Users name a disk with a spec on `govmm run --disk SPEC`, spelled as QEMU
// and libnbd spell it (spec.go):
//
//	/var/lib/govmm/root.img             an image file or block device
//	file:/var/lib/govmm/root.img        the same, explicitly
//	nbd://192.0.2.7:10809/root          an NBD export over TCP (default port 10809)
//	nbd://192.0.2.7                     that server's default export ("")
//	nbd+unix:///root?socket=/run/nbd.sock   an NBD export over a unix socket
//	nbd://192.0.2.7/root,readonly       any of them, with writes refused (or ,ro)
//
// ParseSpec reads one into a Spec, Spec.String writes it back (a migration
// carries it, so that the destination reopens the same disk), and Open
// turns it into a Disk.
//
// # How data flows
//
//	guest driver ─ virtqueue ─▶ virtio-blk request (sector, data buffers)
//	      │ VIRTIO_BLK_T_IN / OUT / FLUSH / DISCARD / WRITE_ZEROES
//	      ▼
//	Disk.ReadAt / WriteAt / Flush / Discard / WriteZeroes   (many goroutines)
//	      │
//	      ├─ File (file.go): pread, pwrite, fdatasync, fallocate on the image
//	      │
//	      └─ nbd.Client (nbd/): NBD_CMD_READ, WRITE, FLUSH, TRIM,
//	         WRITE_ZEROES on a connection to nbdkit, qemu-nbd or
//	         `govmm nas serve` (an nbd.Server over a File)
//
// # Errors
//
// Errors are per request and name the disk. A write to a read-only disk
// fails with an error for which errors.Is(err, fs.ErrPermission) holds, with
// either backend; a write outside the disk wraps syscall.ENOSPC. A read that
// reaches the end returns io.EOF, as io.ReaderAt asks. An NBD disk whose
// server went away fails requests with nbd.ErrDisconnected until it has
// reconnected; it never retries a write behind the guest's back.
//
// Read spec.go, then file.go; the network backend and its protocol are in
// package nbd (start with nbd/doc.go).
package disk
