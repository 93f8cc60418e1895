// Command gendir writes the Big test directory of package matchertest as
// JSON lines, for `groupmatch directory load`:
//
//	go run ./matcher/matchertest/gendir -n 1000000 > /tmp/dir1m.jsonl
//	groupmatch directory load --tenant big /tmp/dir1m.jsonl
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/groupmatch/groupmatch/matcher/matchertest"
)

func main() {
	n := flag.Int("n", 1000000, "number of customers")
	from := flag.Int("from", 0, "first customer (customerId from+1)")
	flag.Parse()
	if err := matchertest.WriteBig(os.Stdout, *from, *from+*n); err != nil {
		fmt.Fprintln(os.Stderr, "gendir:", err)
		os.Exit(1)
	}
}
