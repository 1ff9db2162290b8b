#!/usr/bin/env python3
"""Generate the checkpoint-loader test fixtures.

Writes into crates/segment-anything/tests/fixtures/checkpoints/ (total well under 1 MB):

* tensors.pth               torch.save'd OrderedDict (a real module state_dict, so it has `_metadata`) with f32, f16, bf16,
                            f64, i64, i32, i16, u8, i8, bool tensors, a transposed (non-contiguous) tensor, slices of a shared
                            storage (storage offset, stride 3), an expanded tensor (stride 0), a 0-d scalar, an empty tensor
                            and an nn.Parameter (`_rebuild_parameter`).
* tensors_expected.json     expected dtype / shape / values of every tensor in tensors.pth (floats also as f64 bit
                            patterns, for exact comparison).
* tensors.safetensors       the same tensors (contiguous) written by safetensors.torch.
* nested_model.pth          {"model": state_dict, "epoch": 3, "lr": 0.1, "name": "x", "flags": [True, None]}
* nested_state_dict.pth     {"state_dict": state_dict}
* bigendian.pth             tensors.pth-like f32 dict whose storages were byte-swapped and `byteorder` set to "big".
* malicious.pth             hand-built zip whose data.pkl calls `os.system` (GLOBAL + REDUCE), never executed here.
* malicious_stack_global.pth hand-built zip whose data.pkl uses protocol-4 STACK_GLOBAL for `builtins.eval`.
* truncated.pth             the first half of tensors.pth.
* missing_storage.pth       tensors.pth with one `data/<key>` entry removed.
* storage_too_small.pth     tensors.pth with one storage entry cut short.
* legacy.pth                torch.save(..., _use_new_zipfile_serialization=False).
* not_a_checkpoint.png      a tiny PNG image.
* tiny_official.pth         state_dict of a tiny official SAM (segment_anything.modeling classes, random weights).
* tiny_official_config.json the architecture of that tiny model in the Rust `SamConfig` field names.
* tiny_hf.safetensors       the same weights converted to the Hugging Face transformers layout with transformers' own
                            conversion mapping (KEYS_TO_MODIFY_MAPPING / replace_keys from convert_sam_to_hf.py),
                            loaded strictly into transformers.SamModel and written by `save_pretrained`.
* official_shapes.json      key -> shape of the official vit_b / vit_l / vit_h state dicts (built on the meta device).
* tiny_hf_tied.safetensors  the converted dict written directly (keeps both tied positional-embedding keys, as some
                            hub checkpoints do).

Run from the repository root:  python tools/reference/checkpoint_fixtures/make_checkpoint_fixtures.py
Requires torch, numpy, safetensors, segment_anything and transformers (no network access needed).
"""

import collections
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from functools import partial

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(ROOT, "crates", "segment-anything", "tests", "fixtures", "checkpoints")


def out(name):
    return os.path.join(OUT, name)


# --------------------------------------------------------------------------------------------------------------------
# Generic tensors
# --------------------------------------------------------------------------------------------------------------------


def make_tensor_dict():
    g = torch.Generator().manual_seed(1234)
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 3, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g))
    sd = lin.state_dict()  # OrderedDict with `_metadata` -> BUILD opcode in the pickle
    sd["f32"] = torch.randn(3, 4, generator=g)
    sd["f16"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.tensor([[-3, -2, -1], [0, 1, 2**40]], dtype=torch.int64)
    sd["i32"] = torch.tensor([-(2**31), 7, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-5, 300], dtype=torch.int16)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["bool"] = torch.tensor([True, False, True])
    base = torch.arange(20, dtype=torch.float32) * 0.5
    sd["shared_base"] = base
    sd["shared_offset"] = base[5:11].view(2, 3)  # storage offset 5, same storage as shared_base
    sd["shared_strided"] = base[1::3]  # offset 1, stride 3
    sd["transposed"] = torch.randn(3, 5, generator=g).t()  # shape (5, 3), stride (1, 5)
    sd["expanded"] = torch.randn(3, 1, generator=g).expand(3, 4)  # stride (1, 0)
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    assert not sd["transposed"].is_contiguous()
    assert sd["shared_offset"].storage_offset() == 5
    return sd


DTYPE_NAMES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.uint8: "u8",
    torch.int8: "i8",
    torch.bool: "bool",
}


def expected_json(sd):
    res = {}
    for k, t in sd.items():
        t = t.detach()
        entry = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        if t.dtype.is_floating_point:
            vals = [float(v) for v in t.double().flatten().tolist()]  # exact: f16/bf16/f32 widen exactly to f64
            entry["values"] = vals
            # Bit patterns of the f64 values, so the Rust test does not depend on decimal float parsing.
            entry["f64_bits"] = [struct.unpack("<Q", struct.pack("<d", v))[0] for v in vals]
        else:
            entry["values"] = [int(v) for v in t.flatten().tolist()]
        res[k] = entry
    return res


def zip_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i, z.read(i.filename)) for i in z.infolist()]


def write_zip(path, entries):
    """Re-write (ZipInfo, bytes) pairs as a stored (uncompressed) zip, like torch does."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info.filename, data)


def hand_built_zip(path, pickle_bytes, archive="archive"):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pickle_bytes)
        z.writestr(f"{archive}/byteorder", b"little")
        z.writestr(f"{archive}/version", b"3\n")


def png_bytes():
    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"".join(bytes([x * 60, y * 60, 128]) for x in range(4)) for y in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def generic_fixtures():
    sd = make_tensor_dict()
    torch.save(sd, out("tensors.pth"))
    with open(out("tensors_expected.json"), "w") as f:
        json.dump(expected_json(sd), f, indent=1)
        f.write("\n")
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, out("tensors.safetensors"))

    small = collections.OrderedDict((k, sd[k]) for k in ["weight", "bias", "f32", "transposed"])
    torch.save({"model": small, "epoch": 3, "lr": 0.1, "name": "x", "flags": [True, None]}, out("nested_model.pth"))
    torch.save({"state_dict": small}, out("nested_state_dict.pth"))

    # Big-endian: only f32 tensors so every storage can be byte-swapped with the same element size.
    be = collections.OrderedDict((k, sd[k]) for k in ["weight", "bias", "f32", "transposed", "shared_base", "shared_offset"])
    tmp = out("bigendian.tmp")
    torch.save(be, tmp)
    entries = []
    for info, data in zip_entries(tmp):
        if info.filename.endswith("/byteorder"):
            data = b"big"
        elif "/data/" in info.filename and not info.filename.split("/")[-1].startswith("."):
            data = np.frombuffer(data, dtype="<f4").astype(">f4").tobytes()
        entries.append((info, data))
    write_zip(out("bigendian.pth"), entries)
    os.remove(tmp)

    # Malicious pickles: never executed (we only write bytes).
    evil = (
        b"\x80\x02"  # PROTO 2
        b"cos\nsystem\n"  # GLOBAL os.system
        b"q\x00"
        b"X\x17\x00\x00\x00echo pwned > /tmp/pwned"  # BINUNICODE
        b"\x85"  # TUPLE1
        b"R"  # REDUCE
        b"."  # STOP
    )
    assert len("echo pwned > /tmp/pwned") == 0x17
    hand_built_zip(out("malicious.pth"), evil)
    evil2 = (
        b"\x80\x04"  # PROTO 4
        b"\x8c\x08builtins"  # SHORT_BINUNICODE
        b"\x94"  # MEMOIZE
        b"\x8c\x04eval"
        b"\x94"
        b"\x93"  # STACK_GLOBAL builtins.eval
        b"\x94"  # MEMOIZE
        + b"\x8c" + bytes([len(b"1 + 1")]) + b"1 + 1"  # SHORT_BINUNICODE
        + b"\x85R."
    )
    hand_built_zip(out("malicious_stack_global.pth"), evil2)

    data = open(out("tensors.pth"), "rb").read()
    with open(out("truncated.pth"), "wb") as f:
        f.write(data[: len(data) // 2])

    entries = zip_entries(out("tensors.pth"))
    write_zip(out("missing_storage.pth"), [(i, d) for i, d in entries if not i.filename.endswith("/data/2")])
    write_zip(
        out("storage_too_small.pth"),
        [(i, d[: len(d) // 2] if i.filename.endswith("/data/2") else d) for i, d in entries],
    )

    torch.save(small, out("legacy.pth"), _use_new_zipfile_serialization=False)
    with open(out("not_a_checkpoint.png"), "wb") as f:
        f.write(png_bytes())


# --------------------------------------------------------------------------------------------------------------------
# Tiny SAM, official layout and Hugging Face layout
# --------------------------------------------------------------------------------------------------------------------

# Copied verbatim from transformers/models/sam/convert_sam_to_hf.py (transformers main; the script is not shipped in
# the wheel). This is the mapping Hugging Face used to produce the hub checkpoints (facebook/sam-vit-*).
KEYS_TO_MODIFY_MAPPING = {
    "iou_prediction_head.layers.0": "iou_prediction_head.proj_in",
    "iou_prediction_head.layers.1": "iou_prediction_head.layers.0",
    "iou_prediction_head.layers.2": "iou_prediction_head.proj_out",
    "mask_decoder.output_upscaling.0": "mask_decoder.upscale_conv1",
    "mask_decoder.output_upscaling.1": "mask_decoder.upscale_layer_norm",
    "mask_decoder.output_upscaling.3": "mask_decoder.upscale_conv2",
    "mask_downscaling.0": "mask_embed.conv1",
    "mask_downscaling.1": "mask_embed.layer_norm1",
    "mask_downscaling.3": "mask_embed.conv2",
    "mask_downscaling.4": "mask_embed.layer_norm2",
    "mask_downscaling.6": "mask_embed.conv3",
    "point_embeddings": "point_embed",
    "pe_layer.positional_encoding_gaussian_matrix": "shared_embedding.positional_embedding",
    "image_encoder": "vision_encoder",
    "neck.0": "neck.conv1",
    "neck.1": "neck.layer_norm1",
    "neck.2": "neck.conv2",
    "neck.3": "neck.layer_norm2",
    "patch_embed.proj": "patch_embed.projection",
    ".norm": ".layer_norm",
    "blocks": "layers",
}


def replace_keys(state_dict):
    model_state_dict = {}
    state_dict.pop("pixel_mean", None)
    state_dict.pop("pixel_std", None)

    output_hypernetworks_mlps_pattern = r".*.output_hypernetworks_mlps.(\d+).layers.(\d+).*"

    for key, value in state_dict.items():
        for key_to_modify, new_key in KEYS_TO_MODIFY_MAPPING.items():
            if key_to_modify in key:
                key = key.replace(key_to_modify, new_key)

        if re.match(output_hypernetworks_mlps_pattern, key):
            layer_nb = int(re.match(output_hypernetworks_mlps_pattern, key).group(2))
            if layer_nb == 0:
                key = key.replace("layers.0", "proj_in")
            elif layer_nb == 1:
                key = key.replace("layers.1", "layers.0")
            elif layer_nb == 2:
                key = key.replace("layers.2", "proj_out")

        model_state_dict[key] = value

    model_state_dict["shared_image_embedding.positional_embedding"] = model_state_dict[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]

    return model_state_dict


TINY = dict(
    img_size=32,
    patch=8,
    enc_dim=16,
    depth=3,
    heads=2,
    mlp_ratio=2.0,
    window=2,
    global_idx=[1],
    embed_dim=16,
    mask_hidden=8,
    dec_depth=2,
    dec_heads=2,
    dec_mlp=24,
    iou_depth=3,
    iou_hidden=12,
    multimask=3,
)


def tiny_official():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = TINY
    grid = c["img_size"] // c["patch"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["depth"],
            embed_dim=c["enc_dim"],
            img_size=c["img_size"],
            mlp_ratio=c["mlp_ratio"],
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["heads"],
            patch_size=c["patch"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["global_idx"],
            window_size=c["window"],
            out_chans=c["embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(c["img_size"], c["img_size"]),
            mask_in_chans=c["mask_hidden"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=c["multimask"],
            transformer=TwoWayTransformer(
                depth=c["dec_depth"], embedding_dim=c["embed_dim"], mlp_dim=c["dec_mlp"], num_heads=c["dec_heads"]
            ),
            transformer_dim=c["embed_dim"],
            iou_head_depth=c["iou_depth"],
            iou_head_hidden_dim=c["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for _, t in sam.state_dict(keep_vars=True).items():
            t.copy_(torch.randn(t.shape, generator=g))
    sd = sam.state_dict()
    assert "pixel_mean" not in sd

    config = {
        "name": "custom",
        "in_channels": 3,
        "input_size": [c["img_size"], c["img_size"]],
        "embed_dim": c["embed_dim"],
        "nb_multimask_outputs": c["multimask"],
        "encoder_patch_size": c["patch"],
        "encoder_embed_dim": c["enc_dim"],
        "encoder_nb_blocks": c["depth"],
        "encoder_nb_heads": c["heads"],
        "encoder_mlp_ratio": c["mlp_ratio"],
        "encoder_qkv_bias": True,
        "encoder_global_attn_indices": c["global_idx"],
        "encoder_window_size": c["window"],
        "prompt_mask_hidden_dim": c["mask_hidden"],
        "decoder_nb_blocks": c["dec_depth"],
        "decoder_nb_heads": c["dec_heads"],
        "decoder_mlp_channels": c["dec_mlp"],
        "decoder_iou_head_depth": c["iou_depth"],
        "decoder_iou_hidden_dim": c["iou_hidden"],
    }
    return sd, config


def tiny_hf(official_sd):
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    c = TINY
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=c["enc_dim"],
            output_channels=c["embed_dim"],
            num_hidden_layers=c["depth"],
            num_attention_heads=c["heads"],
            image_size=c["img_size"],
            patch_size=c["patch"],
            mlp_dim=int(c["enc_dim"] * c["mlp_ratio"]),
            window_size=c["window"],
            global_attn_indexes=c["global_idx"],
            num_pos_feats=c["embed_dim"] // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=c["embed_dim"],
            image_size=c["img_size"],
            patch_size=c["patch"],
            mask_input_channels=c["mask_hidden"],
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=c["embed_dim"],
            num_hidden_layers=c["dec_depth"],
            num_attention_heads=c["dec_heads"],
            mlp_dim=c["dec_mlp"],
            iou_head_depth=c["iou_depth"],
            iou_head_hidden_dim=c["iou_hidden"],
            num_multimask_outputs=c["multimask"],
        ),
    )
    hf_sd = replace_keys(collections.OrderedDict((k, v.clone()) for k, v in official_sd.items()))
    model = SamModel(cfg)
    result = model.load_state_dict(hf_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    # Every HF tensor must equal the official one it came from.
    msd = model.state_dict()
    for k, v in hf_sd.items():
        assert torch.equal(msd[k], v), k
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        shutil.copy(os.path.join(d, "model.safetensors"), out("tiny_hf.safetensors"))
    save_file({k: v.contiguous().clone() for k, v in hf_sd.items()}, out("tiny_hf_tied.safetensors"))


def tiny_fixtures():
    sd, config = tiny_official()
    torch.save(sd, out("tiny_official.pth"))
    with open(out("tiny_official_config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")
    tiny_hf(sd)


def official_shapes():
    """Key -> shape of the three official models, built on the meta device (no memory, no weights)."""
    from segment_anything import sam_model_registry

    res = {}
    for name in ["vit_b", "vit_l", "vit_h"]:
        with torch.device("meta"):
            sam = sam_model_registry[name](checkpoint=None)
        res[name] = [[k, list(v.shape)] for k, v in sam.state_dict().items()]
    assert len(res["vit_b"]) == 314 and len(res["vit_l"]) == 482 and len(res["vit_h"]) == 594
    with open(out("official_shapes.json"), "w") as f:
        f.write("{\n")
        for i, (name, items) in enumerate(res.items()):
            body = ",\n".join("  " + json.dumps(kv) for kv in items)
            f.write(f'"{name}": [\n{body}\n]' + (",\n" if i < 2 else "\n"))
        f.write("}\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    generic_fixtures()
    tiny_fixtures()
    official_shapes()
    total = 0
    for name in sorted(os.listdir(OUT)):
        size = os.path.getsize(out(name))
        total += size
        print(f"{size:8d}  {name}")
    print(f"{total:8d}  total")
    assert total < 1_000_000, "fixtures must stay under 1 MB"


if __name__ == "__main__":
    main()
