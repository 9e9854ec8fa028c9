#!/usr/bin/env python3
"""Prints one character vector from an R lazy-load data base (Rdata.rdx + Rdata.rdb) as plain text.
Used by scripts/fetch_data.sh to take a novel out of Debian's r-cran-janeaustenr without needing R.
Standard library only.

    rdata_text.py DIR NAME [--reflow] > out.txt

DIR holds Rdata.rdx / Rdata.rdb. NAME is the object (e.g. prideprejudice: a character vector, one
element per line of the Project Gutenberg text, "" for blank lines). --reflow joins the hard-wrapped
lines of each paragraph with single spaces and separates paragraphs by one blank line.

The formats (R Internals, "Serialization formats" and "Lazy loading"):
  Rdata.rdx  gzip of one serialized R list: $variables is a named list of integer pairs
             (offset, length) into Rdata.rdb.
  Rdata.rdb  at each offset: 4-byte big-endian uncompressed length, then a zlib stream of one
             serialized object (this package uses zlib; bzip2/xz are not handled and say so).
  serialize  "X\\n" (XDR, big-endian), int version (2 or 3), two R version ints, [v3: native
             encoding string], then items: int flags (low byte = SEXP type, bit 9 = has
             attributes, bit 10 = has tag) followed by the type's payload.
"""
import gzip
import os
import struct
import sys
import zlib

NILVALUE, REFSXP, GLOBALENV, EMPTYENV, BASEENV, BASENAMESPACE, MISSINGARG, UNBOUND = (
    254, 255, 253, 242, 241, 247, 251, 252)
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19


class Reader:
    def __init__(self, buf):
        self.b, self.i, self.refs = buf, 0, []

    def int(self):
        v = struct.unpack_from(">i", self.b, self.i)[0]
        self.i += 4
        return v

    def length(self):
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self):
        if self.b[:2] != b"X\n":
            raise ValueError("not an XDR serialization")
        self.i = 2
        version = self.int()
        self.int(), self.int()
        if version == 3:
            n = self.int()
            self.i += n

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t in (NILVALUE, GLOBALENV, EMPTYENV, BASEENV, BASENAMESPACE, MISSINGARG, UNBOUND):
            return None
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            return self.refs[idx - 1]
        if t == SYMSXP:
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if t == LISTSXP:  # pairlist: [attr] [tag] car cdr -> dict of tag -> value
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            car = self.item()
            rest = self.item() or {}
            out = {tag[1] if tag else len(rest): car}
            out.update(rest)
            return out
        if t == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.b[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if t in (LGLSXP, INTSXP):
            n = self.length()
            v = list(struct.unpack_from(f">{n}i", self.b, self.i))
            self.i += 4 * n
        elif t == REALSXP:
            n = self.length()
            v = list(struct.unpack_from(f">{n}d", self.b, self.i))
            self.i += 8 * n
        elif t in (STRSXP, VECSXP):
            v = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"unsupported SEXP type {t}")
        if has_attr:
            attrs = self.item() or {}
            names = attrs.get("names")
            if t == VECSXP and names:
                return dict(zip(names, v))
        return v


def unserialize(buf):
    r = Reader(buf)
    r.header()
    return r.item()


def read_object(directory, name):
    with gzip.open(os.path.join(directory, "Rdata.rdx")) as f:  # gzip(serialize(list)), no prefix
        index = unserialize(f.read())
    offset, length = index["variables"][name]
    with open(os.path.join(directory, "Rdata.rdb"), "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    if blob[4:5] in (b"2", b"X"):
        raise ValueError("bzip2/xz-compressed lazy-load data is not supported")
    data = zlib.decompress(blob[4:])
    if len(data) != struct.unpack(">i", blob[:4])[0]:
        raise ValueError("length mismatch in Rdata.rdb entry")
    return unserialize(data)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    lines = read_object(args[0], args[1])
    if not isinstance(lines, list) or not all(isinstance(s, str) or s is None for s in lines):
        sys.exit(f"rdata_text: {args[1]} is not a character vector")
    lines = [s or "" for s in lines]
    if "--reflow" in sys.argv:
        paras, cur = [], []
        for s in lines + [""]:
            if s.strip():
                cur.append(s.strip())
            elif cur:
                paras.append(" ".join(cur))
                cur = []
        sys.stdout.write("\n\n".join(paras) + "\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
