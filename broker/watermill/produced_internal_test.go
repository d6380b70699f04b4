package watermill

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem"
)

func TestProducedEncodingRoundTrip(t *testing.T) {
	a := message.NewMessage("u-1", []byte("payload"))
	a.Metadata.Set("b", "2")
	a.Metadata.Set("a", "\xff not UTF-8")
	b := message.NewMessage("\xfe", nil) // no metadata, no payload
	enc := encodeProduced([]*message.Message{a, b})
	if enc[0] != producedV1 {
		t.Fatalf("version byte %d, want %d", enc[0], producedV1)
	}
	// Metadata in key order: the same messages encode to the same bytes.
	if again := encodeProduced([]*message.Message{a, b}); !bytes.Equal(enc, again) {
		t.Fatalf("encoding is not deterministic: %x vs %x", enc, again)
	}
	want := []byte{1, 2,
		3, 'u', '-', '1', 2, 1, 'a', 11, 0xff, ' ', 'n', 'o', 't', ' ', 'U', 'T', 'F', '-', '8', 1, 'b', 1, '2', 7, 'p', 'a', 'y', 'l', 'o', 'a', 'd',
		1, 0xfe, 0, 0}
	if !bytes.Equal(enc, want) {
		t.Fatalf("encoding = %x, want %x", enc, want)
	}
	got, err := decodeProduced(enc)
	if err != nil || len(got) != 2 {
		t.Fatalf("decode: %v, %v", got, err)
	}
	for i, m := range []*message.Message{a, b} {
		if got[i].UUID != m.UUID || !bytes.Equal(got[i].Payload, m.Payload) || !maps.Equal(got[i].Metadata, m.Metadata) {
			t.Fatalf("message %d = %+v, want %+v", i, got[i], m)
		}
	}
	enc[len(enc)-8] = 'X' // the decoded payload is a copy, not the record's bytes
	if string(got[0].Payload) != "payload" {
		t.Fatalf("decoded payload shares the record: %q", got[0].Payload)
	}
	if none, err := decodeProduced(nil); none != nil || err != nil {
		t.Fatalf("no result: %v, %v; want no messages", none, err)
	}
}

func TestProducedEncodingMalformed(t *testing.T) {
	enc := encodeProduced([]*message.Message{message.NewMessage("u-1", []byte("payload"))})
	bad := [][]byte{
		{2},                         // another version
		append(bytes.Clone(enc), 0), // trailing bytes
		{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // an overlong count
		{1, 5, 0}, // more messages than bytes
	}
	for n := 1; n < len(enc); n++ {
		bad = append(bad, enc[:n]) // every truncation
	}
	for _, b := range bad {
		if msgs, err := decodeProduced(b); !errors.Is(err, idem.ErrInvalid) || msgs != nil {
			t.Errorf("decode(%x) = %v, %v; want an error wrapping idem.ErrInvalid", b, msgs, err)
		}
	}
}
