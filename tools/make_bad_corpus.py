"""Writes tests/bad/: inputs that `vae` must refuse with a clear error (see tests/bad.rs).

    python3 tools/make_bad_corpus.py

Only the standard library and numpy-free code, so it reruns anywhere. The corrupt PngSuite
files (x*.png) are copied from ../shared/testdata/pngsuite by hand, not by this script.
"""

import json
import pickle
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests/bad"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def safetensors(tensors: dict, metadata: dict | None = None, header_override: bytes | None = None) -> bytes:
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = header_override or json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def f32(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def images() -> None:
    d = BAD / "images"
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_bytes(b"this is a text file, not an image\n")
    photo = (ROOT / "tests/fixtures/images/kodim03.png").read_bytes()
    (d / "truncated.png").write_bytes(photo[: len(photo) // 3])
    row = b"\x00" + b"\x80" * 3 * 4
    (d / "zero_width.png").write_bytes(png(0, 4, zlib.compress(b"\x00" * 4)))
    (d / "zero_height.png").write_bytes(png(4, 0, zlib.compress(row)))
    # A decompression bomb: 100000 x 100000 RGB declared, a few bytes of data.
    (d / "bomb.png").write_bytes(png(100_000, 100_000, zlib.compress(b"\x00" * 1024)))
    # The same bomb with a JPEG extension: format sniffing must still catch it.
    (d / "bomb_named.jpg").write_bytes(png(100_000, 100_000, zlib.compress(b"\x00" * 1024)))


def weights() -> None:
    d = BAD / "weights"
    good = (ROOT / "tests/fixtures/weights/tiny_sd_f16.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(good[:65536])
    (d / "absurd_header.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b'{"a": 1}')
    (d / "header_not_json.safetensors").write_bytes(struct.pack("<Q", 16) + b"\xff" * 16)
    (d / "tiny.safetensors").write_bytes(b"\x01\x02")
    (d / "not_safetensors.safetensors").write_bytes((ROOT / "tests/fixtures/images/kodim03.png").read_bytes()[:4096])
    (d / "unknown_layout.safetensors").write_bytes(
        safetensors({"model.layers.0.weight": ("F32", [2, 2], f32([1, 2, 3, 4])), "lm_head.weight": ("F32", [2], f32([1, 2]))})
    )
    (d / "empty.safetensors").write_bytes(safetensors({}))
    # Zero-size tensors declaring 2^20 channels: a config that must not be allocated.
    big = 1 << 20
    (d / "huge_shapes.safetensors").write_bytes(
        safetensors({
            "encoder.conv_in.weight": ("F32", [big, 3, 3, 0], b""),
            "encoder.down_blocks.0.resnets.0.conv1.weight": ("F32", [big, big, 3, 0], b""),
            "decoder.conv_in.weight": ("F32", [big, 4, 3, 0], b""),
            "decoder.conv_out.weight": ("F32", [3, big, 3, 0], b""),
        })
    )
    # Pickles: refused by extension and, under a safetensors name, by content. Never loaded.
    payload = pickle.dumps({"state_dict": {"encoder.conv_in.weight": [0.0]}}, protocol=2)
    for ext in ("ckpt", "pt", "pth", "bin"):
        (d / f"model.{ext}").write_bytes(payload)
    (d / "pickle_inside.safetensors").write_bytes(payload)
    # torch.save's zip container under a safetensors name.
    (d / "zip_inside.safetensors").write_bytes(b"PK\x03\x04" + b"\x00" * 60)


def npy(descr: str, shape: tuple, data: bytes) -> bytes:
    """A version 1.0 .npy file declaring `shape`, whatever `data` holds."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def latents() -> None:
    d = BAD / "latents"
    sixteen = f32([0.5] * 4 * 4 * 4)
    (d / "wrong_rank.safetensors").write_bytes(safetensors({"latent": ("F32", [4, 16], f32([0.5] * 64))}))
    (d / "five_dims.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 1, 4, 4, 4], sixteen)}))
    (d / "batch_of_two.safetensors").write_bytes(safetensors({"latent": ("F32", [2, 4, 4, 2], sixteen)}))
    (d / "empty_dim.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 0, 4], b"")}))
    (d / "wrong_channels.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 3, 4, 4], f32([0.5] * 48))}))
    nan = f32([0.5] * 63 + [float("nan")])
    (d / "nan.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 4, 4], nan)}))
    inf = f32([float("inf")] + [0.5] * 62 + [float("-inf")])
    (d / "inf.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 4, 4], inf)}))
    (d / "several.safetensors").write_bytes(
        safetensors({"mean": ("F32", [1, 4, 4, 4], sixteen), "logvar": ("F32", [1, 4, 4, 4], sixteen)})
    )
    (d / "int_dtype.safetensors").write_bytes(safetensors({"latent": ("I32", [1, 4, 4, 4], struct.pack("<64i", *range(64)))}))
    (d / "no_tensor.safetensors").write_bytes(safetensors({}, {"format": "vae-latent"}))
    (d / "bad_scaling.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 4, 4], sixteen)}, {"scaling_factor": "0"}))
    # Declared shapes whose number of values overflows 64 bits (2^62+1 rows; 2^62
    # rows, whose product wraps to exactly 0), in each latent format, under 200 bytes.
    (d / "overflow.npy").write_bytes(npy("<f4", (1, 4, 2**62 + 1, 4), f32([0.5] * 16)))
    (d / "wraps_to_zero.npy").write_bytes(npy("<f4", (1, 4, 2**62, 4), b""))
    (d / "short_data.npy").write_bytes(npy("<f4", (1, 4, 4, 4), f32([0.5] * 4)))
    (d / "long_data.npy").write_bytes(npy("<f4", (1, 4, 4, 4), f32([0.5] * 65)))
    (d / "overflow.latent").write_bytes(safetensors({"latent_tensor": ("F32", [1, 4, 2**62 + 1, 4], f32([0.5] * 16))}))
    (d / "overflow.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 2**62, 4], b"")}))
    # Scaling metadata that f32 latents cannot use.
    for name, key, value in [("huge_scaling", "scaling_factor", "1e39"), ("tiny_scaling", "scaling_factor", "1e-40"),
                             ("huge_shift", "shift_factor", "1e300")]:
        (d / f"{name}.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 4, 4], sixteen)}, {key: value}))
    # Finite values that overflow f32 once unscaled by 0.18215: they decode to NaN.
    (d / "huge_values.safetensors").write_bytes(safetensors({"latent": ("F32", [1, 4, 4, 4], f32([3e38] * 64))}))
    # A valid scaling that these values do not fit: 1e10 / 1e-30 overflows f32.
    (d / "unscaled_overflow.safetensors").write_bytes(
        safetensors({"latent": ("F32", [1, 4, 4, 4], f32([1e10] * 64))}, {"scaling_factor": "1e-30"})
    )
    (d / "garbage.safetensors").write_bytes(bytes((i * 7919 + 13) % 251 for i in range(3000)))
    (d / "empty.safetensors").write_bytes(b"")


if __name__ == "__main__":
    for sub in ("images", "weights", "latents"):
        (BAD / sub).mkdir(parents=True, exist_ok=True)
    images()
    weights()
    latents()
    for p in sorted(BAD.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)}\t{p.stat().st_size}")
