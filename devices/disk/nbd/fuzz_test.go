package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// scripted is one side of a connection whose peer's bytes are fixed in
// advance: reads come from in, writes are kept (or dropped).
type scripted struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (s *scripted) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { return s.out.Write(p) }

// clientBytes is a well-behaved client's side of a session: handshake,
// then requests.
func clientBytes(opts []byte, requests ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	b = append(b, opts...)
	for _, r := range requests {
		b = append(b, r...)
	}
	return b
}

func FuzzServer(f *testing.F) {
	goOpt := appendOption(nil, optGo, goData("disk", infoBlockSize, infoName))
	write := append(request{cmd: cmdWrite, cookie: 1, offset: 512, length: 8}.append(nil), "abcdefgh"...)
	f.Add(clientBytes(goOpt,
		write,
		request{cmd: cmdRead, cookie: 2, offset: 0, length: 1024}.append(nil),
		request{cmd: cmdFlush, cookie: 3}.append(nil),
		request{cmd: cmdTrim, cookie: 4, offset: 4096, length: 4096}.append(nil),
		request{cmd: cmdWriteZeroes, cookie: 5, flags: cmdFlagNoHole, length: 8192}.append(nil),
		request{cmd: cmdDisc, cookie: 6}.append(nil)))
	f.Add(clientBytes(appendOption(appendOption(appendOption(nil, optList, nil), optInfo, goData("nope")), optExportName, []byte("disk")),
		request{cmd: cmdRead, cookie: 1, offset: 1 << 20, length: 1}.append(nil)))
	f.Add(clientBytes(appendOption(nil, optAbort, nil)))
	f.Add(clientBytes(goOpt, request{cmd: cmdWrite, offset: 1<<16 - 4, length: 1 << 20}.append(nil)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(clientBytes(appendOption(nil, optGo, []byte{0, 0, 0, 200, 'x'})))

	f.Fuzz(func(t *testing.T, in []byte) {
		disk := newMemDisk(64 << 10)
		srv := &Server{Exports: map[string]Export{"disk": disk}, MaxBlockSize: 32 << 10}
		conn := &scripted{in: bytes.NewReader(in)}
		// Whatever the bytes, handle returns (the input runs out) without
		// a panic; memDisk fails the test if an out-of-range request
		// reaches it.
		err := srv.handle(conn, func(time.Time) error { return nil }, "fuzz")
		if err != nil && err.Error() == "" {
			t.Fatal("an error without a message")
		}
		if disk.Size() != 64<<10 {
			t.Fatal("the disk changed size")
		}
	})
}

// serverBytes is a server's side of a handshake, made with the server's
// own encoders.
func serverBytes(flags uint16, replies ...[]byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicNBD)
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	b = binary.BigEndian.AppendUint16(b, flags)
	for _, r := range replies {
		b = append(b, r...)
	}
	return b
}

func FuzzClientHandshake(f *testing.F) {
	export := binary.BigEndian.AppendUint16(nil, infoExport)
	export = binary.BigEndian.AppendUint64(export, 1<<20)
	export = binary.BigEndian.AppendUint16(export, transHasFlags|transSendFlush)
	blockSize := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	blockSize = binary.BigEndian.AppendUint32(blockSize, 512)
	blockSize = binary.BigEndian.AppendUint32(blockSize, 4096)
	blockSize = binary.BigEndian.AppendUint32(blockSize, 1<<20)
	both := flagFixedNewstyle | flagNoZeroes
	f.Add(serverBytes(uint16(both),
		appendOptionReply(nil, optGo, repInfo, export),
		appendOptionReply(nil, optGo, repInfo, blockSize),
		appendOptionReply(nil, optGo, repAck, nil)))
	f.Add(serverBytes(uint16(both), appendOptionReply(nil, optGo, repErrUnknown, []byte("no such export"))))
	f.Add(serverBytes(uint16(both), appendOptionReply(nil, optGo, repErrUnsup, nil), make([]byte, 10)))
	f.Add(serverBytes(0, make([]byte, 10+exportNameReplyZeros)))
	f.Add(serverBytes(uint16(both), appendOptionReply(nil, optGo, repInfo, []byte{0, 3, 0, 0, 0, 3})))

	f.Fuzz(func(t *testing.T, in []byte) {
		conn := &scripted{in: bytes.NewReader(in)}
		info, err := negotiate(conn, "disk", "fuzz")
		if err != nil {
			return
		}
		// A handshake that succeeds has produced usable block sizes.
		if info.minBlock == 0 || info.maxRequest < info.minBlock || info.maxRequest%info.minBlock != 0 || info.maxRequest > defaultMaxBlock {
			t.Fatalf("accepted block sizes min %d, max request %d", info.minBlock, info.maxRequest)
		}
		if info.size > 1<<63-1 {
			t.Fatalf("accepted size %d", info.size)
		}
	})
}

// FuzzClientReplies feeds arbitrary server bytes to a connection with four
// requests in flight: each must complete (with its data or an error), and
// none may hang or panic.
func FuzzClientReplies(f *testing.F) {
	reply := func(errno Errno, cookie uint64, data []byte) []byte {
		return append(appendSimpleReply(nil, errno, cookie), data...)
	}
	f.Add(bytes.Join([][]byte{reply(0, 1, nil), reply(0, 0, make([]byte, 512)), reply(EIO, 3, nil), reply(0, 2, nil)}, nil))
	f.Add(reply(0, 99, nil))
	f.Add(reply(0, 0, make([]byte, 100)))
	f.Add(binary.BigEndian.AppendUint32(nil, magicStructReply))

	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		cn := newConn(client, exportInfo{size: 1 << 20, flags: transHasFlags | transSendFlush, minBlock: 1, maxRequest: 1 << 16})
		go cn.readLoop()
		go func() {
			// Swallow the requests; play the fuzzer's replies; hang up.
			go io.Copy(io.Discard, server)
			server.Write(in)
			server.Close()
		}()
		var calls []*call
		for _, r := range []struct {
			cmd    uint16
			length uint32
		}{{cmdRead, 512}, {cmdWrite, 512}, {cmdFlush, 0}, {cmdRead, 100}} {
			cl, err := cn.start(r.cmd, 0, 0, r.length, make([]byte, r.length))
			if err != nil {
				if !errors.Is(err, ErrDisconnected) {
					t.Fatalf("start: %v", err)
				}
				continue
			}
			calls = append(calls, cl)
		}
		for _, cl := range calls {
			select {
			case err := <-cl.done:
				var errno Errno
				if err != nil && !errors.Is(err, ErrDisconnected) && !errors.As(err, &errno) {
					t.Fatalf("a request failed with %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a request hung")
			}
		}
		<-cn.done
	})
}
