"""Shared helpers for the Python reference generators (not run in CI).

Everything here builds and drives Meta's *official* ``segment_anything`` modules, so that the fixtures the Rust
tests compare against come from the reference implementation and never from our own code.

* ``config_dict(name, **overrides)``   -- a config dict in the JSON format of our Rust ``SamConfig``.
* ``save_config_json(cfg, path)``      -- write it (field order as in the Rust struct).
* ``build_official_sam(cfg)``          -- an official ``segment_anything.modeling.Sam`` for any dimensions,
                                          built exactly as ``segment_anything.build_sam._build_sam`` does.
* ``randomize_(model, seed)``          -- overwrite every tensor of the state_dict with well-conditioned random values.
* ``adapt_input_conv(weight, in_ch)``  -- the timm rule for adapting the 3-channel patch embedding to other channel counts.
* ``load_rgb`` / ``load_gray``         -- read a photo as HxWx3 / HxW uint8 arrays with Pillow.
* ``case_entry`` / ``Tensors``         -- helpers for the ``cases.json`` / ``expected.safetensors`` fixture format.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import partial
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
SAM_PIXEL_STD = [58.395, 57.12, 57.375]

# Field order of the Rust `SamConfig` struct (serde names == field names).
CONFIG_FIELDS = [
    "name", "url", "sha256", "file_size", "in_channels", "input_size", "fixed_input_size", "embed_dim",
    "nb_multimask_outputs", "mask_threshold", "encoder_patch_size", "encoder_embed_dim", "encoder_nb_blocks",
    "encoder_nb_heads", "encoder_mlp_ratio", "encoder_drop_rate", "encoder_attn_drop_rate", "encoder_drop_path_rate",
    "encoder_norm_layer", "encoder_act_layer", "encoder_qkv_bias", "encoder_global_attn_indices",
    "encoder_window_size", "prompt_mask_hidden_dim", "decoder_nb_blocks", "decoder_nb_heads", "decoder_mlp_channels",
    "decoder_iou_head_depth", "decoder_iou_hidden_dim", "mean", "std",
]

_OFFICIAL = {
    # name: (encoder_embed_dim, depth, heads, global_attn_indexes, checkpoint file, sha256, size)
    "vit_b": (768, 12, 12, [2, 5, 8, 11], "sam_vit_b_01ec64.pth",
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
    "vit_l": (1024, 24, 16, [5, 11, 17, 23], "sam_vit_l_0b3195.pth",
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
    "vit_h": (1280, 32, 16, [7, 15, 23, 31], "sam_vit_h_4b8939.pth",
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
}


def _preset(name: str) -> Dict[str, Any]:
    dim, blocks, heads, glob, file, sha, size = _OFFICIAL[name]
    return {
        "name": name,
        "url": "https://dl.fbaipublicfiles.com/segment_anything/" + file,
        "sha256": sha,
        "file_size": size,
        "in_channels": 3,
        "input_size": [1024, 1024],
        "fixed_input_size": True,
        "embed_dim": 256,
        "nb_multimask_outputs": 3,
        "mask_threshold": 0.0,
        "encoder_patch_size": 16,
        "encoder_embed_dim": dim,
        "encoder_nb_blocks": blocks,
        "encoder_nb_heads": heads,
        "encoder_mlp_ratio": 4.0,
        "encoder_drop_rate": 0.0,
        "encoder_attn_drop_rate": 0.0,
        "encoder_drop_path_rate": 0.0,
        "encoder_norm_layer": "layer_norm_eps_1e-6",
        "encoder_act_layer": "gelu",
        "encoder_qkv_bias": True,
        "encoder_global_attn_indices": list(glob),
        "encoder_window_size": 14,
        "prompt_mask_hidden_dim": 16,
        "decoder_nb_blocks": 2,
        "decoder_nb_heads": 8,
        "decoder_mlp_channels": 2048,
        "decoder_iou_head_depth": 3,
        "decoder_iou_hidden_dim": 256,
        "mean": list(SAM_PIXEL_MEAN),
        "std": list(SAM_PIXEL_STD),
    }


def _tiny() -> Dict[str, Any]:
    return {
        "name": "tiny",
        "url": None,
        "sha256": None,
        "file_size": None,
        "in_channels": 3,
        "input_size": [256, 256],
        "fixed_input_size": True,
        "embed_dim": 64,
        "nb_multimask_outputs": 3,
        "mask_threshold": 0.0,
        "encoder_patch_size": 16,
        "encoder_embed_dim": 64,
        "encoder_nb_blocks": 4,
        "encoder_nb_heads": 4,
        "encoder_mlp_ratio": 4.0,
        "encoder_drop_rate": 0.0,
        "encoder_attn_drop_rate": 0.0,
        "encoder_drop_path_rate": 0.0,
        "encoder_norm_layer": "layer_norm_eps_1e-6",
        "encoder_act_layer": "gelu",
        "encoder_qkv_bias": True,
        "encoder_global_attn_indices": [1, 3],
        "encoder_window_size": 6,
        "prompt_mask_hidden_dim": 16,
        "decoder_nb_blocks": 2,
        "decoder_nb_heads": 4,
        "decoder_mlp_channels": 128,
        "decoder_iou_head_depth": 3,
        "decoder_iou_hidden_dim": 64,
        "mean": list(SAM_PIXEL_MEAN),
        "std": list(SAM_PIXEL_STD),
    }


def config_dict(variant: str = "tiny", **overrides: Any) -> Dict[str, Any]:
    """A config dict in our `SamConfig` JSON format.

    `variant` is `vit_b`, `vit_l`, `vit_h` (the official presets, `default` = `vit_h`) or `tiny` (the fixture
    architecture); any field (including `name`) can then be overridden by keyword, giving a custom config. Unknown
    fields are rejected, as the Rust side has `deny_unknown_fields`.
    """
    if variant == "default":
        variant = "vit_h"
    if variant in _OFFICIAL:
        cfg = _preset(variant)
    elif variant == "tiny":
        cfg = _tiny()
    else:
        raise ValueError(f"unknown config `{variant}` (expected vit_b, vit_l, vit_h or tiny)")
    for k, v in overrides.items():
        if k not in CONFIG_FIELDS:
            raise KeyError(f"unknown SamConfig field `{k}`")
        cfg[k] = v
    return {k: cfg[k] for k in CONFIG_FIELDS}


def save_config_json(cfg: Dict[str, Any], path: str) -> None:
    missing = [k for k in CONFIG_FIELDS if k not in cfg]
    extra = [k for k in cfg if k not in CONFIG_FIELDS]
    if missing or extra:
        raise KeyError(f"config fields: missing {missing}, unknown {extra}")
    ordered = {k: cfg[k] for k in CONFIG_FIELDS}
    for k in ("encoder_mlp_ratio", "mask_threshold", "encoder_drop_rate", "encoder_attn_drop_rate",
              "encoder_drop_path_rate"):
        ordered[k] = float(ordered[k])
    ordered["mean"] = [float(x) for x in ordered["mean"]]
    ordered["std"] = [float(x) for x in ordered["std"]]
    with open(path, "w") as f:
        json.dump(ordered, f, indent=2)
        f.write("\n")


def _norm_eps(cfg: Dict[str, Any]) -> float:
    n = cfg["encoder_norm_layer"]
    if n == "layer_norm_eps_1e-6":
        return 1e-6
    if n in ("layer_norm_eps_1e-5", "layer_norm"):
        return 1e-5
    raise ValueError(f"unsupported encoder_norm_layer {n}")


def build_official_sam(cfg: Dict[str, Any]) -> Sam:
    """The official `Sam` for our config dict, built exactly as `_build_sam` does (with the dims of `cfg`).

    The official encoder only knows square inputs (`img_size` is an int), so `input_size` must be square; a
    `fixed_input_size = false` model is built at its nominal `input_size` (the generators run the official
    sub-modules by hand for other sizes).
    """
    h, w = cfg["input_size"]
    if h != w:
        raise ValueError("the official ImageEncoderViT only supports square input_size")
    if cfg["encoder_act_layer"] != "gelu":
        raise ValueError("only gelu is supported")
    for k in ("encoder_drop_rate", "encoder_attn_drop_rate", "encoder_drop_path_rate"):
        if cfg[k] != 0:
            raise ValueError(f"{k} must be 0")
    patch = cfg["encoder_patch_size"]
    grid = (h // patch, w // patch)
    embed_dim = cfg["embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=h,
            patch_size=patch,
            in_chans=cfg["in_channels"],
            embed_dim=cfg["encoder_embed_dim"],
            depth=cfg["encoder_nb_blocks"],
            num_heads=cfg["encoder_nb_heads"],
            mlp_ratio=cfg["encoder_mlp_ratio"],
            out_chans=embed_dim,
            qkv_bias=cfg["encoder_qkv_bias"],
            norm_layer=partial(nn.LayerNorm, eps=_norm_eps(cfg)),
            act_layer=nn.GELU,
            use_abs_pos=True,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=cfg["encoder_window_size"],
            global_attn_indexes=list(cfg["encoder_global_attn_indices"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=grid,
            input_image_size=(h, w),
            mask_in_chans=cfg["prompt_mask_hidden_dim"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg["nb_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=cfg["decoder_nb_blocks"],
                embedding_dim=embed_dim,
                mlp_dim=cfg["decoder_mlp_channels"],
                num_heads=cfg["decoder_nb_heads"],
            ),
            transformer_dim=embed_dim,
            iou_head_depth=cfg["decoder_iou_head_depth"],
            iou_head_hidden_dim=cfg["decoder_iou_hidden_dim"],
        ),
        pixel_mean=list(cfg["mean"]),
        pixel_std=list(cfg["std"]),
    )
    sam.mask_threshold = float(cfg["mask_threshold"])
    sam.eval()
    return sam


# Scales of the random weights (see README.md). Chosen so that activations stay O(1) through any depth, attention
# is neither uniform nor one-hot, and the mask logits are O(1..10) with both signs.
LN_WEIGHT_STD = 0.2
LN_BIAS_STD = 0.2
BIAS_STD = 0.1
EMBEDDING_STD = 1.0
POS_EMBED_STD = 0.5
REL_POS_STD = 0.3
GAUSSIAN_MATRIX_STD = 1.0
# Extra gain on the last layer of the hypernetwork MLPs, to bring the mask logits to O(1..10).
HYPERNET_OUT_GAIN = 3.0
# The official hypernetwork MLPs always have 3 layers (MLP(dim, dim, dim // 8, 3)).
_HYPERNET_OUT = re.compile(r"(.*\.)?output_hypernetworks_mlps\.\d+\.layers\.2\.weight")


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite EVERY tensor of `model.state_dict()` with deterministic random values (in place).

    LayerNorm weight 1 + 0.2 randn, bias 0.2 randn; Linear / Conv weights randn / sqrt(fan_in) (ConvTranspose2d:
    fan_in = in channels, as kernel == stride); biases 0.1 randn; embeddings / tokens randn; pos_embed 0.5 randn;
    rel_pos 0.3 randn; positional_encoding_gaussian_matrix randn. Tensors are visited in state_dict order with one
    `torch.Generator(seed)`, so the result depends only on the seed and the architecture.
    """
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    done = set()

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float32)

    for key, t in model.state_dict(keep_vars=True).items():
        mod_name, _, pname = key.rpartition(".")
        mod = modules[mod_name]
        if isinstance(mod, (nn.LayerNorm, LayerNorm2d)):
            v = 1.0 + LN_WEIGHT_STD * randn(t) if pname == "weight" else LN_BIAS_STD * randn(t)
        elif isinstance(mod, nn.Linear):
            if pname == "weight":
                v = randn(t) / math.sqrt(t.shape[1])
                if _HYPERNET_OUT.fullmatch(key):
                    v = v * HYPERNET_OUT_GAIN
            else:
                v = BIAS_STD * randn(t)
        elif isinstance(mod, nn.ConvTranspose2d):
            v = randn(t) / math.sqrt(t.shape[0]) if pname == "weight" else BIAS_STD * randn(t)
        elif isinstance(mod, nn.Conv2d):
            v = randn(t) / math.sqrt(t[0].numel()) if pname == "weight" else BIAS_STD * randn(t)
        elif isinstance(mod, nn.Embedding):
            v = EMBEDDING_STD * randn(t)
        elif isinstance(mod, ImageEncoderViT) and pname == "pos_embed":
            v = POS_EMBED_STD * randn(t)
        elif isinstance(mod, EncoderAttention) and pname in ("rel_pos_h", "rel_pos_w"):
            v = REL_POS_STD * randn(t)
        elif isinstance(mod, PositionEmbeddingRandom) and pname == "positional_encoding_gaussian_matrix":
            v = GAUSSIAN_MATRIX_STD * randn(t)
        else:
            raise KeyError(f"randomize_: no rule for `{key}` ({type(mod).__name__})")
        t.copy_(v)
        done.add(key)
    missing = set(model.state_dict().keys()) - done
    assert not missing, missing
    return model


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm `adapt_input_conv` for a 3-channel conv weight (O, 3, kh, kw).

    1 channel: sum over the 3 input channels. Other counts: repeat the 3 channels ceil(in/3) times, keep the first
    `in_chans`, scale by 3 / in_chans. 3: unchanged.
    """
    assert weight.shape[1] == 3
    if in_chans == 3:
        return weight.clone()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = int(math.ceil(in_chans / 3))
    w = weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :]
    return w * (3 / float(in_chans))


def repo_path(rel: str) -> str:
    return os.path.join(REPO_ROOT, rel)


def load_rgb(rel: str) -> np.ndarray:
    """HxWx3 uint8 RGB (Pillow `.convert("RGB")`)."""
    with Image.open(repo_path(rel)) as im:
        return np.array(im.convert("RGB"))


def load_gray(rel: str) -> np.ndarray:
    """HxW uint8 (Pillow `.convert("L")`)."""
    with Image.open(repo_path(rel)) as im:
        return np.array(im.convert("L"))


class Tensors:
    """Collects the tensors of `expected.safetensors` (all float32, contiguous)."""

    def __init__(self) -> None:
        self.data: Dict[str, torch.Tensor] = {}

    def put(self, name: str, t: Any) -> str:
        if name in self.data:
            raise KeyError(f"duplicate tensor {name}")
        t = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t)
        self.data[name] = t.detach().to(torch.float32).contiguous().clone()
        return name

    def put_bits(self, name: str, mask: Any) -> str:
        """Store a boolean array packed 8 pixels per byte (numpy `packbits`, big-endian bit order, C order)."""
        if name in self.data:
            raise KeyError(f"duplicate tensor {name}")
        bits = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
        self.data[name] = torch.from_numpy(bits.copy())
        return name

    def save(self, path: str) -> None:
        from safetensors.torch import save_file
        save_file(self.data, path)
        os.chmod(path, 0o644)  # safetensors creates the file 0600

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for t in self.data.values())


def case_entry(
    name: str,
    image: str,
    kind: str,
    multimask: bool,
    low_res_logits: str,
    iou_predictions: str,
    point_coords: Optional[List[List[float]]] = None,
    point_labels: Optional[List[int]] = None,
    box: Optional[List[float]] = None,
    mask_input: Optional[str] = None,
    model_points: Optional[str] = None,
    model_labels: Optional[str] = None,
    model_boxes: Optional[str] = None,
    model_masks: Optional[str] = None,
    masks_logits: Optional[str] = None,
    masks_bits: Optional[str] = None,
) -> Dict[str, Any]:
    assert kind in ("predict", "predict_torch", "decoder")
    return {
        "name": name,
        "image": image,
        "kind": kind,
        "multimask": bool(multimask),
        "point_coords": point_coords,
        "point_labels": point_labels,
        "box": box,
        "mask_input": mask_input,
        "model_points": model_points,
        "model_labels": model_labels,
        "model_boxes": model_boxes,
        "model_masks": model_masks,
        "low_res_logits": low_res_logits,
        "iou_predictions": iou_predictions,
        "masks_logits": masks_logits,
        "masks_bits": masks_bits,
    }


def write_cases_json(path: str, images: List[Dict[str, Any]], cases: List[Dict[str, Any]],
                     checkpoint: str = "model.pth", config: str = "config.json",
                     tensors: str = "expected.safetensors") -> None:
    doc = {"config": config, "checkpoint": checkpoint, "tensors": tensors, "images": images, "cases": cases}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def summarize_logits(t: torch.Tensor) -> str:
    """Short sanity summary of a B×K×H×W logits tensor."""
    t = t.float()
    pos = (t > 0).float().flatten(2).mean(-1)  # B×K
    return (f"|logit| mean {t.abs().mean():.2f} max {t.abs().max():.2f}; "
            f"positive fraction per mask {[round(x, 3) for x in pos.flatten().tolist()]}")


# ----------------------------------------------------------------------------------------------------------------
# Recording cases through the official SamPredictor
# ----------------------------------------------------------------------------------------------------------------


def image_record(predictor: Any, model: Sam, tensors: Tensors, name: str, rel_file: Optional[str],
                 image: np.ndarray) -> Dict[str, Any]:
    """`predictor.set_image(image)` and record the exact encoder input and the embedding.

    `input` = `model.preprocess(transformed)` (1×C×S×S, normalised then zero-padded), `embedding` =
    `predictor.features`. Checks that the embedding is the encoder applied to exactly that input.
    """
    transformed = predictor.transform.apply_image(image)
    t = torch.as_tensor(transformed).permute(2, 0, 1).contiguous()[None, :, :, :]
    with torch.no_grad():
        inp = model.preprocess(t)
        predictor.set_image(image)
        again = model.image_encoder(inp)
    assert torch.equal(again, predictor.features), "embedding differs from image_encoder(preprocess(x))"
    tensors.put(f"{name}/input", inp)
    tensors.put(f"{name}/embedding", predictor.features)
    return {
        "name": name,
        "file": rel_file,
        "original_size": [int(image.shape[0]), int(image.shape[1])],
        "resized_size": [int(predictor.input_size[0]), int(predictor.input_size[1])],
        "input": f"{name}/input",
        "embedding": f"{name}/embedding",
    }


# Images whose predictor cases also store the binary masks (B×K×H0×W0, bit-packed) for the mask IoU checks.
MASK_BITS_IMAGES = {"chelsea", "coffee_jpeg"}


def record_predict(predictor: Any, tensors: Tensors, image: str, case: str, *,
                   point_coords: Optional[List[List[float]]] = None, point_labels: Optional[List[int]] = None,
                   box: Optional[List[float]] = None, mask_input: Optional[np.ndarray] = None,
                   multimask: bool = True, store_masks_logits: bool = True) -> Dict[str, Any]:
    """One `predictor.predict(..., return_logits=True)` case.

    Records the model-frame inputs exactly as `predict` hands them to `predict_torch` (points 1×N×2 float32 after
    `apply_coords`, labels 1×N, box 1×1×4 after `apply_boxes`, mask 1×1×H'×W'), and the outputs with a batch dim
    of 1: low-res logits 1×K×H'×W', iou 1×K, upscaled logits 1×K×H0×W0 (if `store_masks_logits`).
    Returns the case dict; the raw outputs are in `entry["_out"]` (removed before writing JSON).
    """
    name = f"{image}/{case}"
    orig = predictor.original_size
    pc = np.array(point_coords, dtype=np.float64) if point_coords is not None else None
    pl = np.array(point_labels, dtype=np.int64) if point_labels is not None else None
    bx = np.array(box, dtype=np.float64) if box is not None else None
    masks, iou, low = predictor.predict(point_coords=pc, point_labels=pl, box=bx, mask_input=mask_input,
                                        multimask_output=multimask, return_logits=True)
    # The model-frame tensors, built exactly as SamPredictor.predict builds them.
    m_pts = m_lab = m_box = m_mask = None
    if pc is not None:
        m_pts = torch.as_tensor(predictor.transform.apply_coords(pc, orig), dtype=torch.float)[None, :, :]
        m_lab = torch.as_tensor(pl, dtype=torch.int)[None, :]
    if bx is not None:
        m_box = torch.as_tensor(predictor.transform.apply_boxes(bx, orig), dtype=torch.float)[None, :]
    if mask_input is not None:
        m_mask = torch.as_tensor(mask_input, dtype=torch.float)[None, :, :, :]
    # Cross-check: predict_torch on those tensors gives the same result.
    masks2, iou2, low2 = predictor.predict_torch(m_pts, m_lab, m_box, m_mask, multimask, return_logits=True)
    assert torch.equal(low2[0], torch.as_tensor(low)) and torch.equal(iou2[0], torch.as_tensor(iou))

    entry = case_entry(
        name, image, "predict", multimask,
        low_res_logits=tensors.put(f"{name}/low_res_logits", torch.as_tensor(low)[None]),
        iou_predictions=tensors.put(f"{name}/iou_predictions", torch.as_tensor(iou)[None]),
        point_coords=[[float(v) for v in p] for p in point_coords] if point_coords is not None else None,
        point_labels=[int(v) for v in point_labels] if point_labels is not None else None,
        box=[float(v) for v in box] if box is not None else None,
        mask_input=tensors.put(f"{name}/mask_input", torch.as_tensor(mask_input)) if mask_input is not None else None,
        model_points=tensors.put(f"{name}/points", m_pts) if m_pts is not None else None,
        model_labels=tensors.put(f"{name}/labels", m_lab) if m_lab is not None else None,
        model_boxes=tensors.put(f"{name}/boxes", m_box) if m_box is not None else None,
        model_masks=tensors.put(f"{name}/masks", m_mask) if m_mask is not None else None,
        masks_logits=tensors.put(f"{name}/masks_logits", torch.as_tensor(masks)[None]) if store_masks_logits else None,
        masks_bits=tensors.put_bits(f"{name}/masks_bits", torch.as_tensor(masks)[None] > predictor.model.mask_threshold)
        if image in MASK_BITS_IMAGES else None,
    )
    entry["_out"] = (torch.as_tensor(low)[None], torch.as_tensor(iou)[None], torch.as_tensor(masks)[None])
    return entry


def record_predict_torch(predictor: Any, tensors: Tensors, image: str, case: str, *,
                         points: List, labels: List, boxes: Optional[List] = None, multimask: bool = True,
                         store_masks_logits: bool = False) -> Dict[str, Any]:
    """One batched `predictor.predict_torch(points B×N×2, labels B×N, boxes B×4, return_logits=True)` case.

    Boxes are stored as B×1×4 (`model_boxes` is B×M2×4)."""
    name = f"{image}/{case}"
    pts = torch.tensor(points, dtype=torch.float)
    lab = torch.tensor(labels, dtype=torch.int)
    bxs = torch.tensor(boxes, dtype=torch.float) if boxes is not None else None
    masks, iou, low = predictor.predict_torch(pts, lab, bxs, None, multimask, return_logits=True)
    entry = case_entry(
        name, image, "predict_torch", multimask,
        low_res_logits=tensors.put(f"{name}/low_res_logits", low),
        iou_predictions=tensors.put(f"{name}/iou_predictions", iou),
        model_points=tensors.put(f"{name}/points", pts),
        model_labels=tensors.put(f"{name}/labels", lab),
        model_boxes=tensors.put(f"{name}/boxes", bxs[:, None, :]) if bxs is not None else None,
        masks_logits=tensors.put(f"{name}/masks_logits", masks) if store_masks_logits else None,
        masks_bits=tensors.put_bits(f"{name}/masks_bits", masks > predictor.model.mask_threshold)
        if image in MASK_BITS_IMAGES else None,
    )
    entry["_out"] = (low, iou, masks)
    return entry


@torch.no_grad()
def decoder_forward(model: Sam, prompt_encoder: PromptEncoder, embedding: torch.Tensor, *,
                    points: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                    boxes: Optional[torch.Tensor] = None, masks: Optional[torch.Tensor] = None,
                    multimask: bool = True):
    """Official prompt encoding generalised to several boxes / masks per prompt set, then the official decoder.

    points B×N×2, labels B×N (model frame, without the padding point), boxes B×M2×4, masks B×M3×H'×W'.
    Sparse tokens = [_embed_points(points, labels, pad=boxes is None), _embed_boxes(box_0), _embed_boxes(box_1), ...]
    (so the corners are interleaved per box: tl0, br0, tl1, br1, ...); dense = sum_i _embed_masks(masks[:, i:i+1])
    or no_mask_embed. With at most one box and one mask this is exactly `PromptEncoder.forward`.
    """
    pe = prompt_encoder
    if points is not None:
        bs = points.shape[0]
    elif boxes is not None:
        bs = boxes.shape[0]
    elif masks is not None:
        bs = masks.shape[0]
    else:
        bs = 1
    parts = [torch.empty((bs, 0, pe.embed_dim))]
    if points is not None:
        parts.append(pe._embed_points(points, labels, pad=boxes is None))
    if boxes is not None:
        for j in range(boxes.shape[1]):
            parts.append(pe._embed_boxes(boxes[:, j, :]))
    sparse = torch.cat(parts, dim=1)
    if masks is not None:
        dense = None
        for i in range(masks.shape[1]):
            e = pe._embed_masks(masks[:, i:i + 1, :, :])
            dense = e if dense is None else dense + e
    else:
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            bs, -1, pe.image_embedding_size[0], pe.image_embedding_size[1])
    low, iou = model.mask_decoder(image_embeddings=embedding, image_pe=pe.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=multimask)
    return low, iou


def record_decoder(model: Sam, prompt_encoder: PromptEncoder, embedding: torch.Tensor, tensors: Tensors,
                   image: str, case: str, *, points=None, labels=None, boxes=None, masks=None,
                   multimask: bool = True) -> Dict[str, Any]:
    """A seed-only ("decoder") case: inputs in the model frame, expected values from `decoder_forward`."""
    name = f"{image}/{case}"
    pts = torch.tensor(points, dtype=torch.float) if points is not None else None
    lab = torch.tensor(labels, dtype=torch.int) if labels is not None else None
    bxs = torch.tensor(boxes, dtype=torch.float) if boxes is not None else None
    msk = torch.as_tensor(masks, dtype=torch.float) if masks is not None else None
    low, iou = decoder_forward(model, prompt_encoder, embedding, points=pts, labels=lab, boxes=bxs, masks=msk,
                               multimask=multimask)
    entry = case_entry(
        name, image, "decoder", multimask,
        low_res_logits=tensors.put(f"{name}/low_res_logits", low),
        iou_predictions=tensors.put(f"{name}/iou_predictions", iou),
        model_points=tensors.put(f"{name}/points", pts) if pts is not None else None,
        model_labels=tensors.put(f"{name}/labels", lab) if lab is not None else None,
        model_boxes=tensors.put(f"{name}/boxes", bxs) if bxs is not None else None,
        model_masks=tensors.put(f"{name}/masks", msk) if msk is not None else None,
    )
    entry["_out"] = (low, iou, None)
    return entry


def strip_private(cases: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases]


def describe_case(c: Dict[str, Any]) -> str:
    low, iou, masks = c["_out"]
    s = f"{c['name']:<40} K={low.shape[1]} B={low.shape[0]} iou {[round(x, 3) for x in iou.flatten().tolist()]}\n"
    s += f"{'':<42}low-res: {summarize_logits(low)}"
    if masks is not None and c.get("masks_logits"):
        s += f"\n{'':<42}masks_logits: {summarize_logits(masks)}"
    return s
