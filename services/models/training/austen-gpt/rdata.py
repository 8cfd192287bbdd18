"""A small reader for R's serialisation format (XDR, versions 2 and 3), enough to
read the janeaustenr package's data without R.

janeaustenr keeps its data sets in a lazy-load database: data/Rdata.rdx is a
gzip-compressed serialised index (variable name -> [offset, length] in
Rdata.rdb), and each blob in Rdata.rdb is a 4-byte big-endian uncompressed
length followed by a zlib stream (or, for R's other compression types, a type
byte 'Z' zlib, '2' bzip2, 'X' xz, '0' none) holding one serialised R object.
.rds files are the same serialisation, gzip-, bzip2- or xz-compressed.

Usage: python3 rdata.py PACKAGE_DATA_DIR OUT_DIR  (writes NAME.txt per character vector)
"""
import bz2
import gzip
import lzma
import pathlib
import struct
import sys
import zlib

REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ALTREP_SXP = 242, 241, 238
NA_INTEGER = -(2 ** 31)


class RObject:
    """A value with R attributes (names, class, row.names ...)."""

    def __init__(self, rtype, value, attributes=None):
        self.rtype, self.value, self.attributes = rtype, value, attributes or {}

    def __repr__(self):
        return f"RObject({self.rtype}, {str(self.value)[:60]}, attrs={list(self.attributes)})"


class Reader:
    def __init__(self, data):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n):
        out = self.data[self.pos:self.pos + n]
        if len(out) != n:
            raise EOFError("truncated R serialisation")
        self.pos += n
        return out

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def read(self):
        head = self.take(2)
        if head != b"X\n":
            raise ValueError(f"only XDR serialisation is supported, got {head!r}")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported serialisation version {version}")
        return self.item()

    def string(self):
        length = self.int()
        return None if length == -1 else self.take(length).decode("utf-8", errors="replace")

    def attributes(self, has_attr):
        if not has_attr:
            return {}
        pairs = self.item()
        return pairs.value if isinstance(pairs, RObject) and pairs.rtype == "pairlist" else {}

    def item(self):
        flags = self.int()
        sxp = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if sxp in (NILVALUE_SXP, EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP,
                   BASENAMESPACE_SXP):
            return None
        if sxp == REFSXP:
            index = flags >> 8
            if index == 0:
                index = self.int()
            return self.refs[index - 1]
        if sxp in (NAMESPACESXP, PACKAGESXP, PERSISTSXP):
            if self.int() != 0:
                raise ValueError("bad persistent name")
            names = [self.item() for _ in range(self.int())]
            obj = RObject("namespace", names)
            self.refs.append(obj)
            return obj
        if sxp == ALTREP_SXP:
            info, state, attrs = self.item(), self.item(), self.item()
            cls = info.value.get(0) if isinstance(info, RObject) else None
            if cls == "compact_intseq":  # state: length, first, step
                n, first, step = (int(v) for v in state.value)
                value = RObject("integer", [first + i * step for i in range(n)])
            elif cls == "compact_realseq":
                n, first, step = state.value
                value = RObject("double", [first + i * step for i in range(int(n))])
            elif cls in ("wrap_integer", "wrap_real", "wrap_string", "wrap_logical", "wrap_list"):
                value = state.value[0]
            elif cls == "deferred_string":
                value = RObject("character", [str(v) for v in state.value[0].value])
            else:
                raise ValueError(f"unsupported ALTREP class {cls}")
            if isinstance(attrs, RObject) and attrs.rtype == "pairlist":
                value.attributes = attrs.value
            return value
        if sxp == 4:  # ENVSXP
            obj = RObject("environment", None)
            self.refs.append(obj)
            self.int()  # locked
            enclos, frame, hashtab, attrs = self.item(), self.item(), self.item(), self.item()
            obj.value = {"frame": frame, "hashtab": hashtab, "enclos": enclos}
            return obj
        if sxp == 1:  # SYMSXP
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name
        if sxp in (2, 6, 17):  # LISTSXP, LANGSXP, DOTSXP: pairlists
            items, attrs = {}, self.attributes(has_attr)
            index = 0
            while True:
                tag = self.item() if has_tag else None
                value = self.item()
                items[tag if tag is not None else index] = value
                index += 1
                flags = self.int()
                sxp = flags & 0xFF
                if sxp == NILVALUE_SXP:
                    break
                if sxp not in (2, 6, 17):
                    # A dotted pair ending in a non-list: step back and read it as the tail.
                    self.pos -= 4
                    items["__tail__"] = self.item()
                    break
                if flags & (1 << 9):
                    self.attributes(True)
                has_tag = bool(flags & (1 << 10))
            return RObject("pairlist" if sxp != 6 else "call", items, attrs)
        if sxp == 3:  # CLOSXP
            attrs = self.attributes(has_attr)
            env, formals, body = self.item(), self.item(), self.item()
            return RObject("closure", {"formals": formals, "body": body}, attrs)
        if sxp == 9:  # CHARSXP
            length = self.int()
            if length == -1:
                return None
            raw = self.take(length)
            encoding = "latin-1" if flags & (1 << 14) else "utf-8"  # LATIN1_MASK; UTF8/ASCII decode as UTF-8
            return raw.decode(encoding, errors="replace")
        if sxp in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            values = list(struct.unpack(f">{n}i", self.take(4 * n)))
            values = [None if v == NA_INTEGER else v for v in values]
            return RObject("logical" if sxp == 10 else "integer", values, self.attributes(has_attr))
        if sxp == 14:  # REALSXP
            n = self.int()
            return RObject("double", list(struct.unpack(f">{n}d", self.take(8 * n))), self.attributes(has_attr))
        if sxp == 16:  # STRSXP
            n = self.int()
            values = [self.item() for _ in range(n)]
            return RObject("character", values, self.attributes(has_attr))
        if sxp in (19, 20):  # VECSXP, EXPRSXP
            n = self.int()
            values = [self.item() for _ in range(n)]
            return RObject("list", values, self.attributes(has_attr))
        if sxp == 24:  # RAWSXP
            n = self.int()
            return RObject("raw", self.take(n), self.attributes(has_attr))
        if sxp in (7, 8):  # SPECIALSXP, BUILTINSXP
            return RObject("builtin", self.take(self.int()).decode())
        if sxp == 25:  # S4SXP
            return RObject("s4", None, self.attributes(has_attr))
        if sxp == 21:  # BCODESXP is not needed for data
            raise ValueError("byte code is not supported")
        raise ValueError(f"unsupported SEXP type {sxp} at byte {self.pos}")


def decompress_file(raw):
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    return raw


def read_rds(path):
    return Reader(decompress_file(pathlib.Path(path).read_bytes())).read()


def decompress_blob(blob):
    """A lazy-load DB blob: 4-byte big-endian length, then zlib, or a type byte and its stream."""
    length = struct.unpack(">I", blob[:4])[0]
    kind = blob[4:5]
    if kind == b"Z":
        out = zlib.decompress(blob[5:])
    elif kind == b"2":
        out = bz2.decompress(blob[5:])
    elif kind == b"X":
        out = lzma.decompress(blob[5:])
    elif kind == b"0":
        out = blob[5:]
    else:
        out = zlib.decompress(blob[4:])
    if len(out) != length:
        raise ValueError("lazy-load blob has the wrong length")
    return out


def read_lazyload_db(stem):
    """Returns {name: object} for the variables of STEM.rdx/STEM.rdb."""
    stem = pathlib.Path(stem)
    index = read_rds(stem.with_suffix(".rdx"))
    parts = dict(zip(index.attributes["names"].value, index.value))
    names = parts["variables"].attributes["names"].value
    rdb = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, where in zip(names, parts["variables"].value):
        offset, length = (int(v) for v in where.value)
        out[name] = Reader(decompress_blob(rdb[offset:offset + length])).read()
    return out


def main():
    data_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, obj in sorted(read_lazyload_db(data_dir / "Rdata").items()):
        if isinstance(obj, RObject) and obj.rtype == "character":
            lines = ["" if line is None else line for line in obj.value]
            (out_dir / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            print(f"{name}: {len(lines)} lines", flush=True)


if __name__ == "__main__":
    main()
