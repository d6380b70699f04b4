package watermill

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem"
)

// producedV1 is the first byte of the encoding of produced messages.
const producedV1 = 1

// encodeProduced encodes msgs as the result of the handler run
// (messaging.SetResult): byte 1 (the version), then uvarint(count), then
// per message uuid, uvarint(number of metadata entries), each entry's key
// and value in key order, and the payload, where each string or byte field
// is uvarint(length) followed by its bytes. It is exact: any bytes in a
// UUID, metadata or payload come back as they were.
func encodeProduced(msgs []*message.Message) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, m := range msgs {
		size += 3*binary.MaxVarintLen64 + len(m.UUID) + len(m.Payload)
		for k, v := range m.Metadata {
			size += 2*binary.MaxVarintLen64 + len(k) + len(v)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, producedV1)
	b = binary.AppendUvarint(b, uint64(len(msgs)))
	field := func(s []byte) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	for _, m := range msgs {
		field([]byte(m.UUID))
		keys := make([]string, 0, len(m.Metadata))
		for k := range m.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = binary.AppendUvarint(b, uint64(len(keys)))
		for _, k := range keys {
			field([]byte(k))
			field([]byte(m.Metadata[k]))
		}
		field(m.Payload)
	}
	return b
}

var errProduced = errors.New("not an encoding of produced messages")

// decodeProduced decodes what encodeProduced encoded: new messages with the
// same UUIDs, metadata and payloads. An unknown version or a malformed
// encoding is an error wrapping idem.ErrInvalid.
func decodeProduced(b []byte) ([]*message.Message, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[0] != producedV1 {
		return nil, fmt.Errorf("%w: idem watermill: produced messages in encoding version %d, this version reads %d", idem.ErrInvalid, b[0], producedV1)
	}
	b = b[1:]
	bad := false
	uvarint := func() uint64 {
		n, w := binary.Uvarint(b)
		if w <= 0 {
			bad = true
			return 0
		}
		b = b[w:]
		return n
	}
	field := func() []byte {
		n := uvarint()
		if bad || n > uint64(len(b)) {
			bad = true
			return nil
		}
		f := b[:n:n]
		b = b[n:]
		return f
	}
	count := uvarint()
	if bad || count > uint64(len(b)) { // every message takes at least one byte
		return nil, fmt.Errorf("%w: idem watermill: %w", idem.ErrInvalid, errProduced)
	}
	msgs := make([]*message.Message, 0, count)
	for range count {
		uuid := string(field())
		n := uvarint()
		if bad || n > uint64(len(b)) {
			break
		}
		meta := make(message.Metadata, n)
		for range n {
			k := string(field())
			meta[k] = string(field())
		}
		payload := field()
		if bad {
			break
		}
		m := message.NewMessage(uuid, bytes.Clone(payload)) // not the record's bytes
		m.Metadata = meta
		msgs = append(msgs, m)
	}
	if bad || len(b) != 0 {
		return nil, fmt.Errorf("%w: idem watermill: %w", idem.ErrInvalid, errProduced)
	}
	return msgs, nil
}
