// Prints what linkedin/goavro computes for each Avro schema file given: its Rabin fingerprint
// (as framed: 8 bytes little-endian, in hex), its canonical form, and a command encoded with
// goavro's single-object encoding. Run by tests/interop/test_goavro.py.
package main

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/linkedin/goavro/v2"
)

func main() {
	for _, path := range os.Args[1:] {
		text, err := os.ReadFile(path)
		if err != nil {
			fail(err)
		}
		codec, err := goavro.NewCodec(string(text))
		if err != nil {
			fail(err)
		}
		framed := make([]byte, 8)
		binary.LittleEndian.PutUint64(framed, codec.Rabin)
		encoded := ""
		if strings.Contains(path, "points_adjustment_requested") {
			record := map[string]interface{}{
				"idempotency_key":      "goavro-1",
				"bank_account_number":  "5123456789012345000",
				"points_to_adjust":     int64(250),
				"adjustment_type_code": "GOODWILL",
				"adjustment_reason":    "Late delivery",
				"adjusted_by":          "agent-0042",
				"correlation_id":       "corr-go",
				"requested_by":         "go-service",
				"occurred_at":          time.UnixMilli(1741064767891).UTC(),
				"metadata":             map[string]interface{}{"case": "1"},
			}
			if strings.Contains(path, ".v2.") {
				record["channel"] = goavro.Union("string", "web")
			}
			single, err := codec.SingleFromNative(nil, record)
			if err != nil {
				fail(err)
			}
			encoded = hex.EncodeToString(single)
		}
		fmt.Printf("%s\t%s\t%s\t%s\n", path, hex.EncodeToString(framed), codec.CanonicalSchema(), encoded)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
