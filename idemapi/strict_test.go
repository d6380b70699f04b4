package idemapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/idemkit/idem"
)

func TestCheckStrict(t *testing.T) {
	t.Parallel()
	complete := shapeFor(reflect.TypeFor[*CompleteRequest]())
	begin := shapeFor(reflect.TypeFor[*BeginRequest]())
	for _, tc := range []struct {
		name   string
		sh     *shape
		body   string
		detail string // "" means accepted
	}{
		{"complete", complete, `{"scope":"a","key":"k","token":1,"outcome":{"data":"AAE=","meta":{"s":"200"}}}`, ""},
		{"nulls", begin, `{"scope":null,"key":"k","lease_ms":null}`, ""},
		{"escaped name", begin, `{"\u006bey":"k"}`, ""},
		{"surrogate pair", begin, `{"key":"\ud83d\ude00"}`, ""},
		{"whitespace", begin, " \t\r\n{ \"key\" : \"k\" } \n", ""},
		{"negative zero", begin, `{"lease_ms":-0}`, ""},

		{"empty", begin, ``, "the body is empty; send a JSON object"},
		{"array", begin, `[1]`, "the body must be a JSON object, not an array"},
		{"null body", begin, `null`, "the body must be a JSON object, not null"},
		{"two values", begin, `{"key":"k"} {}`, "unexpected data after the JSON object at byte 12"},
		{"garbage", begin, `{"key":"k"}x`, "unexpected data after the JSON object at byte 11"},
		{"cut", begin, `{"key":"k"`, "the body ends inside a JSON value"},
		{"syntax", begin, `{"key" "k"}`, "malformed JSON at byte 7"},
		{"not JSON", begin, `hello`, "malformed JSON at byte 0"},
		{"leading zero", begin, `{"lease_ms":01}`, "malformed JSON at byte 13"},
		{"control char", begin, "{\"key\":\"a\x01\"}", "malformed JSON at byte 9: a control character in a string (escape it)"},
		{"bad escape", begin, `{"key":"\x"}`, "malformed JSON at byte 9: unknown escape"},

		{"upper-case field", begin, `{"KEY":"k"}`, `unknown field "KEY": field names are case-sensitive (did you mean "key"?)`},
		{"unknown field", begin, `{"key":"k","lease":5}`, `unknown field "lease"`},
		{"unknown nested", complete, `{"outcome":{"body":""}}`, `unknown field "outcome.body"`},
		{"repeated field", begin, `{"key":"a","key":"b"}`, `field "key" appears twice`},
		{"repeated escaped", begin, `{"key":"a","k\u0065y":"b"}`, `field "key" appears twice`},
		{"repeated meta", complete, `{"outcome":{"meta":{"a":"1","a":"2"}}}`, `field "outcome.meta.a" appears twice`},

		{"invalid UTF-8 key", begin, "{\"key\":\"\xff\xfe\"}", "key is not valid UTF-8 (byte 8)"},
		{"invalid UTF-8 fingerprint", begin, "{\"fingerprint\":\"ok\xc3\"}", "fingerprint is not valid UTF-8 (byte 18)"},
		{"invalid UTF-8 meta", complete, "{\"outcome\":{\"meta\":{\"m\":\"\xe2\x82\"}}}", `outcome.meta["m"] is not valid UTF-8 (byte 25)`},
		{"invalid UTF-8 meta name", complete, "{\"outcome\":{\"meta\":{\"\xff\":\"\"}}}", "a name in outcome.meta is not valid UTF-8 (byte 21)"},
		{"invalid UTF-8 field name", begin, "{\"k\xffy\":\"\"}", "a field name in the body is not valid UTF-8 (byte 3)"},
		{"lone high surrogate", begin, `{"key":"\ud800"}`, "key holds a lone UTF-16 surrogate escape, which is no character (byte 8)"},
		{"lone low surrogate", begin, `{"key":"a\udc00"}`, "key holds a lone UTF-16 surrogate escape, which is no character (byte 9)"},
		{"reversed pair", begin, `{"key":"\ude00\ud83d"}`, "key holds a lone UTF-16 surrogate escape, which is no character (byte 8)"},

		{"bad base64", complete, `{"outcome":{"data":"!!"}}`, "outcome.data is not valid base64 (standard alphabet, padded), at byte 19"},
		{"unpadded base64", complete, `{"outcome":{"data":"AAE"}}`, "outcome.data is not valid base64 (standard alphabet, padded), at byte 19"},
		{"array for object", complete, `{"outcome":[]}`, "outcome must be an object, not an array"},
		{"string for map", complete, `{"outcome":{"meta":"x"}}`, "outcome.meta must be an object, not a string"},
		{"number for meta value", complete, `{"outcome":{"meta":{"s":200}}}`, `outcome.meta["s"] must be a string, not a number`},
		{"number for key", begin, `{"key":7}`, "key must be a string, not a number"},
		{"string for int", complete, `{"token":"1"}`, "token must be an integer, not a string"},
		{"bool for int", complete, `{"token":true}`, "token must be an integer, not a boolean"},
		{"fraction", begin, `{"lease_ms":1.5}`, "lease_ms must be an integer, not 1.5"},
		{"exponent", begin, `{"lease_ms":1e3}`, "lease_ms must be an integer, not 1e3"},
		{"overflow", begin, `{"lease_ms":92233720368547758070}`, "lease_ms is out of range: 92233720368547758070"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkStrict([]byte(tc.body), tc.sh)
			switch {
			case tc.detail == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.detail != "" && (err == nil || err.Error() != tc.detail):
				t.Fatalf("error %v, want %q", err, tc.detail)
			}
		})
	}
}

// FuzzCheckStrict: what the strict check accepts is valid JSON and valid
// UTF-8, decodes into the request type without error, and holds exactly
// the field names of the type, each once; and a body that is not valid
// JSON is refused.
func FuzzCheckStrict(f *testing.F) {
	for _, s := range []string{
		`{"scope":"a","key":"k","token":1,"outcome":{"data":"AAE=","meta":{"s":"200"}}}`,
		`{"scope":"a","key":"k","fingerprint":"f","lease_ms":1000,"window_ms":60000,"retention_ms":0}`,
		`{"KEY":"k"}`, `{"key":"a","key":"b"}`, "{\"key\":\"\xff\xfe\"}", `{"key":"\ud800"}`,
		`{"key":"\ud83d\ude00"}`, `{"outcome":{"data":"!!"}}`, `{"outcome":[]}`, `{"lease_ms":1e3}`,
		`{"outcome":{"meta":{"a":"1","a":"2"}}}`, `{"\u006bey":"k"}`, ` {} `, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	sh := shapeFor(reflect.TypeFor[*fuzzRequest]())
	names := map[string]bool{}
	for n := range sh.fields {
		names[n] = true
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		err := checkStrict(body, sh)
		if err == nil {
			if !json.Valid(body) || !utf8.Valid(body) {
				t.Fatalf("accepted invalid JSON or UTF-8: %q", body)
			}
			var v fuzzRequest
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatalf("accepted %q, which does not decode: %v", body, err)
			}
			// Field names as the body spells them, in order.
			dec := json.NewDecoder(bytes.NewReader(body))
			if _, err := dec.Token(); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for dec.More() {
				tok, err := dec.Token()
				if err != nil {
					t.Fatal(err)
				}
				name := tok.(string)
				if !names[name] || seen[name] {
					t.Fatalf("accepted field %q of %q", name, body)
				}
				seen[name] = true
				var skip json.RawMessage
				if err := dec.Decode(&skip); err != nil {
					t.Fatal(err)
				}
			}
			// Nothing was replaced by U+FFFD on the way in.
			lower := bytes.ToLower(body)
			if !bytes.Contains(body, []byte("\uFFFD")) && !bytes.Contains(lower, []byte(`\ufffd`)) && bytes.Contains(mustMarshal(t, v), []byte("\uFFFD")) {
				t.Fatalf("accepted %q, which decodes with U+FFFD", body)
			}
			return
		}
		if _, ok := err.(*strictError); !ok {
			t.Fatalf("error %T %v", err, err)
		}
	})
}

type fuzzRequest struct {
	Scope       string       `json:"scope"`
	Key         string       `json:"key"`
	Fingerprint string       `json:"fingerprint"`
	Token       int64        `json:"token"`
	LeaseMS     *int64       `json:"lease_ms"`
	Outcome     idem.Outcome `json:"outcome"`
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func BenchmarkCheckStrict(b *testing.B) {
	body := []byte(`{"scope":"billing","key":"order-42","fingerprint":"9f86d081884c7d659a2feaa0c55ad015","lease_ms":30000,"window_ms":86400000,"retention_ms":0}`)
	sh := shapeFor(reflect.TypeFor[*BeginRequest]())
	b.ReportAllocs()
	for b.Loop() {
		if err := checkStrict(body, sh); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeBody is what decode spends on a body once read: the
// strict check, then encoding/json, for the bodies of a cycle (a begin,
// and a complete of a 256-byte outcome as idem bench sends them).
func BenchmarkDecodeBody(b *testing.B) {
	outcome := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'a'}, 256))
	bodies := []struct {
		name string
		body []byte
		into func() any
	}{
		{"begin", []byte(`{"scope":"bench","key":"bench-5f0c9a1b2e3d-t0-1042","fingerprint":"","lease_ms":30000,"window_ms":3600000}`),
			func() any { return new(BeginRequest) }},
		{"complete", []byte(`{"scope":"bench","key":"bench-5f0c9a1b2e3d-t0-1042","token":123456,"outcome":{"data":"` + outcome + `"}}`),
			func() any { return new(CompleteRequest) }},
	}
	for _, c := range bodies {
		sh := shapeFor(reflect.TypeOf(c.into()))
		b.Run(c.name+"/strict", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := checkStrict(c.body, sh); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := json.Unmarshal(c.body, c.into()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
