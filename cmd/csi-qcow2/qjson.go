package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// qemu-img prints its JSON (and the "Format specific information" of info)
// by walking a QEMU QDict, whose iteration order is the order of its hash
// buckets, not the order in which keys were added. To print the same bytes
// as qemu-img, qdict sorts its keys the same way.

// qdictBuckets is QEMU's QDICT_BUCKET_MAX.
const qdictBuckets = 512

// qdictBucket is the bucket QEMU's QDict puts key in (its tdb-style hash).
func qdictBucket(key string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % qdictBuckets
}

// qval is a JSON value in qemu-img's output: int64, bool, string, *qdict or
// []any of those.
type qval = any

// qdict is an object whose members print in QDict order.
type qdict struct {
	keys []string
	vals map[string]qval
}

func newQdict() *qdict { return &qdict{vals: map[string]qval{}} }

// set adds or replaces a member.
func (d *qdict) set(key string, v qval) *qdict {
	if _, ok := d.vals[key]; !ok {
		d.keys = append(d.keys, key)
	}
	d.vals[key] = v
	return d
}

// ordered returns the keys in QDict iteration order: by bucket, and within
// a bucket the most recently inserted first.
func (d *qdict) ordered() []string {
	type kb struct {
		key    string
		bucket uint32
		seq    int
	}
	l := make([]kb, len(d.keys))
	for i, k := range d.keys {
		l[i] = kb{k, qdictBucket(k), i}
	}
	sort.Slice(l, func(a, b int) bool {
		if l[a].bucket != l[b].bucket {
			return l[a].bucket < l[b].bucket
		}
		return l[a].seq > l[b].seq
	})
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = x.key
	}
	return out
}

// qjson renders v as QEMU's pretty JSON writer does (4-space indent,
// "key": value, non-ASCII escaped), without a trailing newline.
func qjson(v qval) string {
	var b strings.Builder
	writeQJSON(&b, v, 0)
	return b.String()
}

func writeQJSON(b *strings.Builder, v qval, level int) {
	indent := func(l int) { b.WriteString("\n" + strings.Repeat("    ", l)) }
	switch x := v.(type) {
	case *qdict:
		b.WriteByte('{')
		for i, k := range x.ordered() {
			if i > 0 {
				b.WriteByte(',')
			}
			indent(level + 1)
			b.WriteString(qjsonString(k))
			b.WriteString(": ")
			writeQJSON(b, x.vals[k], level+1)
		}
		if len(x.keys) > 0 {
			indent(level)
		}
		b.WriteByte('}')
	case []qval:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			indent(level + 1)
			writeQJSON(b, e, level+1)
		}
		// QEMU's JSON writer breaks the line before ']' even for an
		// empty list (a bitmap's "flags": [ ]).
		indent(level)
		b.WriteByte(']')
	case string:
		b.WriteString(qjsonString(x))
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case int:
		b.WriteString(strconv.Itoa(x))
	default:
		panic(fmt.Sprintf("qjson: unsupported type %T", v))
	}
}

// qjsonString quotes s as QEMU does: the usual short escapes, and \uXXXX
// (upper-case hex, surrogate pairs) for control and non-ASCII characters.
func qjsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			switch {
			case r >= 0x20 && r < 0x7f:
				b.WriteRune(r)
			case r > 0xffff:
				r -= 0x10000
				fmt.Fprintf(&b, `\u%04X\u%04X`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			default:
				fmt.Fprintf(&b, `\u%04X`, r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// dumpHuman prints d as qemu-img's human dump of a QDict: one "key: value"
// line per member, dashes in keys shown as spaces, nested objects indented
// by four more spaces.
func dumpHuman(b *strings.Builder, d *qdict, level int) {
	for _, k := range d.ordered() {
		b.WriteString(strings.Repeat("    ", level))
		b.WriteString(strings.ReplaceAll(k, "-", " "))
		b.WriteByte(':')
		switch x := d.vals[k].(type) {
		case *qdict:
			b.WriteByte('\n')
			dumpHuman(b, x, level+1)
		case []qval:
			b.WriteByte('\n')
			for i, e := range x {
				if sub, ok := e.(*qdict); ok {
					fmt.Fprintf(b, "%s[%d]:\n", strings.Repeat("    ", level+1), i)
					dumpHuman(b, sub, level+2)
				} else {
					fmt.Fprintf(b, "%s[%d]: %v\n", strings.Repeat("    ", level+1), i, e)
				}
			}
		default:
			fmt.Fprintf(b, " %v\n", x)
		}
	}
}
