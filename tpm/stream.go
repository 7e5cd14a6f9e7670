package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// maxResponse bounds a TPM response. TPM 2.0 responses are at most a few
// KiB (TPM_PT_MAX_RESPONSE_SIZE is 4096 on every TPM we know); anything
// larger is a broken or hostile peer.
const maxResponse = 64 << 10

// commandTimeout bounds one command on a socket transport, so a hung swtpm
// cannot block gvmm forever. RSA key generation on a slow software TPM is
// the slowest legitimate command and takes well under this.
const commandTimeout = 60 * time.Second

// errShortResponse is returned for a response shorter than its header.
var errShortResponse = errors.New("TPM response shorter than its header")

// readResponse reads one TPM response: a 10-byte header whose bytes 2-5 give
// the total size, then the rest. It never trusts the size beyond maxResponse.
func readResponse(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("read TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 {
		return nil, errShortResponse
	}
	if size > maxResponse {
		return nil, fmt.Errorf("read TPM response: size %d exceeds %d", size, maxResponse)
	}
	resp := make([]byte, size)
	copy(resp, hdr)
	if _, err := io.ReadFull(r, resp[10:]); err != nil {
		return nil, fmt.Errorf("read TPM response body: %w", err)
	}
	return resp, nil
}

// streamTransport speaks raw TPM 2.0 commands over swtpm's data channel
// (started with --flags not-need-init,startup-clear, so no power-on or
// startup is needed; swtpm's control channel is never touched).
type streamTransport struct {
	conn net.Conn
}

func dialStream(ctx context.Context, network, addr string) (Transport, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial swtpm %s %s: %w", network, addr, err)
	}
	return &streamTransport{conn: conn}, nil
}

func (s *streamTransport) Send(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, fmt.Errorf("swtpm set deadline: %w", err)
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm send command: %w", err)
	}
	return readResponse(s.conn)
}

func (s *streamTransport) Close() error { return s.conn.Close() }

// rwTransport adapts a device that takes a whole command per Write and then
// yields the response through Read (the simulator). Unlike go-tpm's
// transport.ToReadWriter adapter it never reports io.EOF with data: it reads
// exactly the size the header announces.
type rwTransport struct {
	rwc io.ReadWriteCloser
}

func (r *rwTransport) Send(cmd []byte) ([]byte, error) {
	if _, err := r.rwc.Write(cmd); err != nil {
		return nil, fmt.Errorf("send TPM command: %w", err)
	}
	return readResponse(r.rwc)
}

func (r *rwTransport) Close() error { return r.rwc.Close() }
