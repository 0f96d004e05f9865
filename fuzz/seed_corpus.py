#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets under fuzz/corpus/TARGET.

Seeds are small on purpose (libFuzzer mutates each one many times a second):
the repo's bad-input corpus (tests/bad/*), small valid files of every format a
reader accepts, and shapes of the Hub's JSON answers as tests/hub.rs serves
them. Existing files of a corpus are kept (same names are rewritten). Python 3
standard library only; run from anywhere:

    python3 fuzz/seed_corpus.py
"""

import io
import json
import struct
import tarfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
CORPUS = FUZZ / "corpus"


def out(target, name, data):
    if target == "latent_npy":
        # That target adds NumPy's magic itself: its seeds start after it.
        if not data.startswith(b"\x93NUMPY"):
            return
        data = data[6:]
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def copy_dir(target, folder, pattern="*"):
    for path in sorted((REPO / folder).glob(pattern)):
        if path.is_file() and path.stat().st_size <= 64 << 10:
            out(target, f"{path.parent.name}_{path.name}", path.read_bytes())


# --- latents: safetensors (ours and ComfyUI's .latent) and .npy ---------------


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)]"""
    header, offset, body = {}, 0, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        body += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def floats(n, fmt="<f"):
    return b"".join(struct.pack(fmt, (i % 7) * 0.25 - 0.5) for i in range(n))


def npy(shape, descr="<f4", fortran=False, version=(1, 0), data=None):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr,
        "True" if fortran else "False",
        "".join(f"{d}, " for d in shape) if len(shape) != 1 else f"{shape[0]},",
    )
    length_format = "<H" if version[0] == 1 else "<I"
    fixed = 6 + 2 + struct.calcsize(length_format)
    header += " " * (-(fixed + len(header) + 1) % 64) + "\n"
    if data is None:
        count = 1
        for d in shape:
            count *= d
        size = int(descr[2:]) if descr[2:].isdigit() else 4
        data = bytes(count * size) if count * size <= 4096 else b""
    return b"\x93NUMPY" + bytes(version) + struct.pack(length_format, len(header)) + header.encode("latin1") + data


def latents(target):
    copy_dir(target, "tests/bad/latents")
    safetensors_latents(target)
    npy_latents(target)


def safetensors_latents(target):
    out(target, "ours.safetensors", safetensors(
        [("latent", "F32", [1, 4, 2, 3], floats(24))],
        {"vae_scaling_factor": "0.18215", "vae_shift_factor": "0", "vae_model": "tiny_sd"}))
    out(target, "ours_f16.safetensors", safetensors([("latent", "F16", [4, 2, 2], floats(16, "<e"))]))
    out(target, "ours_bf16.safetensors", safetensors([("latent", "BF16", [16, 1, 1], bytes(32))]))
    # ComfyUI's SaveLatent: `latent_tensor` and the version marker.
    out(target, "comfy.latent", safetensors(
        [("latent_tensor", "F32", [1, 4, 2, 2], floats(16)), ("latent_format_version_0", "F32", [0], b"")]))
    # Older ComfyUI files: no marker (legacy scaled).
    out(target, "comfy_legacy.latent", safetensors([("latent_tensor", "F32", [1, 4, 2, 2], floats(16))]))
    out(target, "comfy_batch.latent", safetensors([("latent_tensor", "F32", [2, 4, 1, 1], floats(8))]))


def npy_latents(target):
    copy_dir(target, "tests/bad/latents", "*.npy")
    out(target, "f32.npy", npy((1, 4, 2, 2), data=floats(16)))
    out(target, "f32_chw.npy", npy((4, 2, 2), data=floats(16)))
    out(target, "f16.npy", npy((4, 2, 2), "<f2", data=floats(16, "<e")))
    out(target, "f64_big_endian.npy", npy((4, 1, 2), ">f8", data=floats(8, ">d")))
    out(target, "fortran.npy", npy((1, 4, 2, 2), fortran=True, data=floats(16)))
    out(target, "v2.npy", npy((4, 1, 1), version=(2, 0), data=floats(4)))
    out(target, "v3.npy", npy((4, 1, 1), version=(3, 0), data=floats(4)))
    out(target, "int.npy", npy((4, 1, 1), "<i4", data=bytes(16)))
    out(target, "object.npy", npy((4, 1, 1), "|O"))
    out(target, "overflow.npy", npy((1, 4, 2**62 + 1, 4)))
    out(target, "wraps_to_zero.npy", npy((2**32, 2**32, 4)))
    out(target, "truncated.npy", npy((1, 4, 8, 8), data=floats(10)))


# --- tar shards ---------------------------------------------------------------

PNG = (REPO / "tests/pngsuite/basn0g01.png").read_bytes()


def member(name, data=b"", kind=tarfile.REGTYPE, **extra):
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    info.mtime = 1_700_000_000
    for key, value in extra.items():
        setattr(info, key, value)
    return info, (data if kind == tarfile.REGTYPE else None)


def tar(members, format=tarfile.GNU_FORMAT, pax_headers=None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format, pax_headers=pax_headers or {},
                      encoding="utf-8", errors="surrogateescape") as archive:
        for info, data in members:
            archive.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def sample(key, *exts):
    data = {"png": PNG, "jpg": b"\xff\xd8\xff\xe0 not really", "json": b'{"caption": "x"}', "txt": b"a cat"}
    return [member(f"{key}.{ext}", data.get(ext, b"x")) for ext in exts]


def shards(target):
    plain = sample("000000", "png", "json", "txt") + sample("000001", "jpg", "txt")
    for name, format in [("gnu", tarfile.GNU_FORMAT), ("ustar", tarfile.USTAR_FORMAT), ("pax", tarfile.PAX_FORMAT)]:
        out(target, f"{name}.tar", tar(plain, format))
    long_key = "part/" + "k" * 150
    out(target, "gnu_long_names.tar", tar(sample(long_key, "png", "txt") + sample("short", "png")))
    out(target, "pax_long_names.tar", tar(sample(long_key, "png", "txt"), tarfile.PAX_FORMAT))
    out(target, "pax_unicode.tar", tar(sample("çà/日本", "png", "txt"), tarfile.PAX_FORMAT))
    out(target, "pax_global.tar", tar(plain, tarfile.PAX_FORMAT, {"comment": "global record"}))
    out(target, "non_utf8.tar", tar(sample("caf\udce9", "png", "txt") + sample("cafe", "png")))
    out(target, "odd_members.tar", tar(
        [member("a", kind=tarfile.DIRTYPE)] + sample("a/x", "png")
        + [member("a/x.lnk", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
           member("a/x.hard", kind=tarfile.LNKTYPE, linkname="a/x.png"),
           member("a/y.fifo", kind=tarfile.FIFOTYPE),
           member("a/y.dev", kind=tarfile.CHRTYPE, devmajor=1, devminor=3),
           member("a/.hidden.png", PNG), member("README", b"no extension")]
        + [member("a/z.lnk", kind=tarfile.SYMTYPE, linkname="l" * 200)]))
    out(target, "traversal.tar", tar(
        sample("../up", "png") + sample("/abs", "png") + sample("a//b", "png") + sample("./dot", "png")))
    out(target, "repeated.tar", tar(sample("r", "png", "png", "latent.safetensors") + sample("s", "png") + sample("r", "txt")))
    gnu = tar(plain)
    out(target, "truncated.tar", gnu[:700])
    bad_sum = bytearray(gnu)
    bad_sum[0] ^= 1
    out(target, "bad_checksum.tar", bytes(bad_sum))
    out(target, "no_end_blocks.tar", gnu[:-1024])
    # A GNU sparse member: tarfile reads them but cannot write them, so the
    # header is made by hand (type 'S', one map entry, "is extended" set and
    # one extension block; 1,024 bytes stored).
    header = bytearray(512)
    header[0:9] = b"s.png\0\0\0\0"
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % 1024
    header[136:148] = b"%011o\0" % 1_700_000_000
    header[156:157] = b"S"
    header[257:265] = b"ustar  \0"
    header[386:398] = b"%011o\0" % 0
    header[398:410] = b"%011o\0" % 512
    header[482] = 1
    header[483:495] = b"%011o\0" % 1024
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    extension = bytearray(512)
    extension[0:12] = b"%011o\0" % 512
    extension[12:24] = b"%011o\0" % 512
    out(target, "gnu_sparse.tar", bytes(header) + bytes(extension) + PNG.ljust(512, b"\0") + bytes(512) + bytes(1024))


# --- the Hub's answers --------------------------------------------------------


def hub(target):
    shapes = {
        "repo.json": {"id": "org/name", "sha": "0" * 40, "private": False,
                      "siblings": [{"rfilename": "config.json"},
                                   {"rfilename": "vae/diffusion_pytorch_model.safetensors", "size": 3}]},
        "no_sha.json": {"siblings": [{"rfilename": "a.safetensors"}]},
        "empty.json": {"sha": "abc", "siblings": []},
        "extra_fields.json": {"_id": "x", "id": "o/n", "modelId": "o/n", "sha": "abc", "lastModified": "2024-01-01",
                              "tags": ["diffusers"], "cardData": {"license": "mit"}, "gated": False,
                              "siblings": [{"rfilename": "vae/config.json", "blobId": "1", "lfs": {"size": 1}}]},
        "traversal.json": {"siblings": [{"rfilename": "../../x"}]},
        "absolute.json": {"siblings": [{"rfilename": "/etc/passwd"}]},
        "backslash.json": {"siblings": [{"rfilename": "a\\..\\b"}]},
        "control.json": {"siblings": [{"rfilename": "a\nb"}]},
        "dot.json": {"siblings": [{"rfilename": "./a"}]},
        "not_a_string.json": {"siblings": [{"rfilename": 7}]},
        "null_sha.json": {"sha": None, "siblings": []},
        "error.json": {"error": "Repository not found"},
    }
    for name, value in shapes.items():
        out(target, name, json.dumps(value).encode())
    out(target, "unicode_escapes.json", rb'{"sha":"\u0061","siblings":[{"rfilename":"\ud83d\ude00/\u00e9.bin"}]}')
    out(target, "deep.json", b"[" * 200 + b"]" * 200)


if __name__ == "__main__":
    latents("latent_reader")
    npy_latents("latent_npy")
    shards("tar_shard")
    hub("hub_json")
    copy_dir("weights_header", "tests/bad/weights")
    copy_dir("image_input", "tests/pngsuite", "*.png")
    copy_dir("image_input", "tests/bad/images")
    for folder in sorted(CORPUS.iterdir()):
        print(f"{folder.name}: {len(list(folder.iterdir()))} seeds")
