#!/usr/bin/env python3
"""Keeps the entries of an imatrix file (GGUF or legacy .dat, as llama-imatrix writes them)
whose tensor names start with one of the given prefixes; metadata and trailer are kept.

    filter_imatrix.py IN OUT PREFIX...
"""
import struct
import sys

src, dst, *prefixes = sys.argv[1:]
keep = lambda name: any(name.startswith(p) for p in prefixes)

if open(src, "rb").read(4) == b"GGUF":
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, arch="imatrix")
    w.kv_data[0].pop("general.architecture", None)  # imatrix files carry no architecture
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if f.name == "imatrix.datasets":
            w.add_array(f.name, [bytes(f.parts[i]).decode() for i in f.data])
        elif f.name == "general.type":
            w.add_string(f.name, bytes(f.parts[f.data[0]]).decode())
        else:
            w.add_uint32(f.name, int(f.parts[f.data[0]][0]))
    for t in r.tensors:
        base = t.name.rsplit(".", 1)[0]
        if keep(base):
            w.add_tensor(t.name, np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
else:
    b = open(src, "rb").read()
    (n,), at, entries = struct.unpack_from("<i", b, 0), 4, []
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", b, at)
        name = b[at + 4 : at + 4 + ln].decode()
        at += 4 + ln
        ncall, nval = struct.unpack_from("<ii", b, at)
        data = b[at + 8 : at + 8 + 4 * nval]
        at += 8 + 4 * nval
        if keep(name):
            entries.append((name, ncall, nval, data))
    out = struct.pack("<i", len(entries))
    for name, ncall, nval, data in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, nval) + data
    open(dst, "wb").write(out + b[at:])
