#!/usr/bin/env python3
"""Side-by-side CPU benchmark: segment-anything-rs (`sam bench`) vs the official PyTorch code and ONNX Runtime.

Same image, same thread count, same prompt, random weights everywhere (random weights do not change the speed).
Every measurement runs in its own fresh subprocess, one at a time, so that peak-memory figures never mix and at most
one framework holds a model in memory at any moment. See tools/bench/README.md for what exactly is timed.

    python tools/bench/bench_peers.py                       # vit_b, all cores
    python tools/bench/bench_peers.py --models vit_b,vit_l,vit_h --threads 2 \
        --json-out bench.json --markdown-out bench.md
    python tools/bench/bench_peers.py --quick               # smoke test (fewer runs)

The orchestrator (this file without --worker) imports only the standard library, so that the subprocesses it starts
inherit no large address space (a child's ru_maxrss starts from its parent's size at exec time).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_IMAGE = os.path.join("assets", "images", "rocket.jpg")
DEFAULT_SAM_BIN = os.path.join("target", "release", "sam")
MODELS = ("vit_b", "vit_l", "vit_h")
FRAMEWORKS = ("ours", "torch", "sdpa", "ort")
SEED = 0
# Official SAM pre-processing constants (what `Sam.pixel_mean` / `pixel_std` hold).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
INPUT_SIZE = 1024


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers (standard library only)
# ----------------------------------------------------------------------------------------------------------------

def stats(samples_ms: List[float]) -> Dict[str, Any]:
    """Median / min / max like `sam bench` (median = sorted[n // 2], i.e. the upper median for even n)."""
    v = sorted(samples_ms)
    return {"median_ms": v[len(v) // 2], "min_ms": v[0], "max_ms": v[-1], "runs": len(v), "samples_ms": samples_ms}


def timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> Dict[str, Any]:
    """One warm-up call (as `sam bench` does), then `runs` timed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return stats(samples)


def loadavg() -> Optional[List[float]]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def vm_hwm_mib() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ru_maxrss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux `clear_refs` 5). Also resets what ru_maxrss reports."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pkg_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


# ----------------------------------------------------------------------------------------------------------------
# Workers (each runs in a fresh subprocess: `bench_peers.py --worker KIND ...`)
# ----------------------------------------------------------------------------------------------------------------

def _torch_setup(threads: int):
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools", "reference"))
    return torch


def _load_image(path: str):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _peak_fields(before_reset: Optional[float] = None) -> Dict[str, Any]:
    """Peak RSS of this worker: max of ru_maxrss before a reset (if any) and now."""
    now = ru_maxrss_mib()
    peak = max(now, before_reset) if before_reset is not None else now
    return {"peak_rss_mib": peak, "vm_hwm_mib_at_end": vm_hwm_mib()}


def w_torch_prepare(a) -> Dict[str, Any]:
    """Random official weights (tools/reference `randomize_`), saved with torch.save (.pth) and as safetensors."""
    torch = _torch_setup(a.threads)
    from sam_reference import build_official_sam, config_dict, randomize_
    from safetensors.torch import save_file
    t = time.perf_counter()
    sam = build_official_sam(config_dict(a.model))
    randomize_(sam, SEED)
    sd = {k: v.contiguous() for k, v in sam.state_dict().items()}
    torch.save(sd, os.path.join(a.tmp, "model.pth"))
    save_file(sd, os.path.join(a.tmp, "model.safetensors"))
    n = sum(v.numel() for v in sd.values())
    return {"params": n, "seconds": time.perf_counter() - t,
            "pth_bytes": os.path.getsize(os.path.join(a.tmp, "model.pth"))}


def _build_from_pth(torch, model: str, path: str):
    """What the official `build_sam_*(checkpoint)` does: construct, `torch.load`, `load_state_dict`."""
    from sam_reference import build_official_sam, config_dict
    t0 = time.perf_counter()
    sam = build_official_sam(config_dict(model))
    t1 = time.perf_counter()
    with open(path, "rb") as f:
        sd = torch.load(f)
    t2 = time.perf_counter()
    sam.load_state_dict(sd)
    del sd
    t3 = time.perf_counter()
    return sam, (t1 - t0, t2 - t1, t3 - t2)


def w_torch_load(a) -> Dict[str, Any]:
    torch = _torch_setup(a.threads)
    from safetensors.torch import load_file
    from sam_reference import build_official_sam, config_dict
    pth = os.path.join(a.tmp, "model.pth")
    parts: List[tuple] = []

    def load_pth():
        sam, p = _build_from_pth(torch, a.model, pth)
        parts.append(p)
        del sam
        gc.collect()

    res: Dict[str, Any] = {"load": timed(load_pth, a.load_runs)}
    parts = parts[1:]  # drop the warm-up
    med = lambda xs: sorted(xs)[len(xs) // 2] * 1e3  # noqa: E731
    res["load_breakdown_median_ms"] = {"construct": med([p[0] for p in parts]),
                                       "torch_load": med([p[1] for p in parts]),
                                       "load_state_dict": med([p[2] for p in parts])}
    peak_pth = ru_maxrss_mib()
    res.update(_peak_fields())
    # Same, from the safetensors file (the format our `Sam::load` reads); not in the peak figure above.
    st = os.path.join(a.tmp, "model.safetensors")

    def load_st():
        sam = build_official_sam(config_dict(a.model))
        sam.load_state_dict(load_file(st))
        del sam
        gc.collect()

    res["peak_rss_mib"] = peak_pth
    did_reset = reset_peak_rss()
    res["load_safetensors"] = timed(load_st, a.load_runs)
    res["peak_rss_load_safetensors_mib"] = vm_hwm_mib() if did_reset else None
    res["threads"] = torch.get_num_threads()
    return res


def _sdpa_attention_forward(self, x):
    """`image_encoder.Attention.forward` with fused SDPA; the decomposed rel-pos bias goes in as `attn_mask`."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos
    B, H, W, _ = x.shape
    nh = self.num_heads
    qkv = self.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, nh, HW, C)
    mask = None
    if self.use_rel_pos:
        Rh = get_rel_pos(H, H, self.rel_pos_h)
        Rw = get_rel_pos(W, W, self.rel_pos_w)
        r_q = q.reshape(B * nh, H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
        mask = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(B, nh, H * W, H * W)
    # default scale = head_dim ** -0.5 == self.scale
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return self.proj(o)


def w_torch_run(a) -> Dict[str, Any]:
    """Official `SamPredictor`: load from .pth, then set_image (encoder) and predict timings, peak RSS."""
    torch = _torch_setup(a.threads)
    import numpy as np
    from segment_anything import SamPredictor
    from segment_anything.modeling.image_encoder import Attention
    image = _load_image(a.image)
    h, w = image.shape[:2]
    sam, _ = _build_from_pth(torch, a.model, os.path.join(a.tmp, "model.pth"))
    gc.collect()
    peak_load = ru_maxrss_mib()
    did_reset = reset_peak_rss()
    predictor = SamPredictor(sam)
    res: Dict[str, Any] = {"threads": torch.get_num_threads(), "image": [w, h]}
    original_forward = Attention.forward
    if a.sdpa:
        Attention.forward = _sdpa_attention_forward
    try:
        res["encoder"] = timed(lambda: predictor.set_image(image), a.encoder_runs)
        if not a.sdpa:
            pts, lbl = np.array([[w / 2, h / 2]]), np.array([1])
            res["predict"] = timed(
                lambda: predictor.predict(point_coords=pts, point_labels=lbl, multimask_output=True), a.predict_runs)
        res["peak_rss_after_load_mib"] = vm_hwm_mib() if did_reset else None
        res.update(_peak_fields(peak_load))
        if a.sdpa:
            fused = predictor.features.clone()
            Attention.forward = original_forward
            predictor.set_image(image)
            ref = predictor.features
            res["check"] = {"max_abs_diff_vs_eager": float((fused - ref).abs().max()),
                            "embedding_max_abs": float(ref.abs().max()),
                            "embedding_std": float(ref.std())}
    finally:
        Attention.forward = original_forward
    return res


def w_ort_export(a) -> Dict[str, Any]:
    """Export the official encoder and `SamOnnxModel` decoder as scripts/export_onnx_model.py does (opset 17),
    plus reference outputs of the official predictor for the numerical check of the ONNX Runtime run."""
    torch = _torch_setup(a.threads)
    import warnings
    import numpy as np
    from sam_reference import build_official_sam, config_dict, randomize_
    from segment_anything import SamPredictor
    from segment_anything.utils.onnx import SamOnnxModel
    sam = build_official_sam(config_dict(a.model))
    randomize_(sam, SEED)
    res: Dict[str, Any] = {"opset": a.opset}
    enc_path = os.path.join(a.tmp, "encoder.onnx")
    dec_path = os.path.join(a.tmp, "decoder.onnx")

    def export(module, args, path, input_names, output_names, dynamic_axes):
        errors = []
        for dynamo in (False, True):  # the official script's (TorchScript) exporter first
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, args, path, export_params=True, verbose=False,
                                      opset_version=a.opset, do_constant_folding=True, input_names=input_names,
                                      output_names=output_names, dynamic_axes=dynamic_axes, dynamo=dynamo)
                return "dynamo" if dynamo else "torchscript", errors
            except Exception as e:  # noqa: BLE001
                errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {e}"[:500])
                gc.collect()
        raise RuntimeError("; ".join(errors))

    with torch.no_grad():
        t = time.perf_counter()
        res["encoder_exporter"], errs = export(
            sam.image_encoder, (torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE),), enc_path, ["x"], ["image_embeddings"],
            {"x": {0: "batch"}})
        res["encoder_export_s"] = time.perf_counter() - t
        if errs:
            res["encoder_export_fallback_reasons"] = errs
        gc.collect()
        onnx_model = SamOnnxModel(model=sam, return_single_mask=False)
        embed_size = sam.prompt_encoder.image_embedding_size
        dummy = {
            "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *embed_size, dtype=torch.float),
            "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
            "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
            "mask_input": torch.randn(1, 1, *[4 * x for x in embed_size], dtype=torch.float),
            "has_mask_input": torch.tensor([1], dtype=torch.float),
            "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
        }
        t = time.perf_counter()
        res["decoder_exporter"], errs = export(
            onnx_model, tuple(dummy.values()), dec_path, list(dummy.keys()),
            ["masks", "iou_predictions", "low_res_masks"],
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
        res["decoder_export_s"] = time.perf_counter() - t
        if errs:
            res["decoder_export_fallback_reasons"] = errs
    res["onnx_bytes"] = sum(os.path.getsize(os.path.join(a.tmp, f)) for f in os.listdir(a.tmp)
                            if not f.endswith((".pth", ".safetensors", ".npy", ".json")))
    gc.collect()
    # Reference values from the official predictor on the benchmark image (for the ORT run's check).
    image = _load_image(a.image)
    h, w = image.shape[:2]
    predictor = SamPredictor(sam)
    t_img = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1).contiguous()[None, :, :, :]
    np.save(os.path.join(a.tmp, "ref_input.npy"), sam.preprocess(t_img.float()).numpy())
    predictor.set_image(image)
    np.save(os.path.join(a.tmp, "ref_embedding.npy"), predictor.features.numpy())
    masks, _, low = predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]),
                                      multimask_output=True, return_logits=True)
    np.save(os.path.join(a.tmp, "ref_masks_logits.npy"), masks.astype(np.float32))
    np.save(os.path.join(a.tmp, "ref_low_res.npy"), low.astype(np.float32))
    return res


def _ort_sessions(a):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    prov = ["CPUExecutionProvider"]
    t0 = time.perf_counter()
    enc = ort.InferenceSession(os.path.join(a.tmp, "encoder.onnx"), so, providers=prov)
    t1 = time.perf_counter()
    dec = ort.InferenceSession(os.path.join(a.tmp, "decoder.onnx"), so, providers=prov)
    t2 = time.perf_counter()
    return enc, dec, (t1 - t0, t2 - t1)


def _np_preprocess_shape(h: int, w: int):
    # ResizeLongestSide.get_preprocess_shape
    scale = INPUT_SIZE * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _np_preprocess(image):
    """ResizeLongestSide.apply_image (Pillow bilinear) + Sam.preprocess (normalise, zero-pad), in numpy."""
    import numpy as np
    from PIL import Image
    h, w = image.shape[:2]
    nh, nw = _np_preprocess_shape(h, w)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), dtype=np.float32)
    x = (resized - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)
    out = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    out[0, :, :nh, :nw] = x.transpose(2, 0, 1)
    return out


def _ort_decoder_inputs(embedding, point_xy, h: int, w: int):
    """As in the official ONNX notebook: the point plus a padding point (label -1), coordinates in the model frame."""
    import numpy as np
    nh, nw = _np_preprocess_shape(h, w)
    coords = np.array([[point_xy, [0.0, 0.0]]], dtype=np.float64)
    coords = coords * np.array([nw / w, nh / h])  # ResizeLongestSide.apply_coords
    return {
        "image_embeddings": embedding,
        "point_coords": coords.astype(np.float32),
        "point_labels": np.array([[1, -1]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array([h, w], dtype=np.float32),
    }


def w_ort_load(a) -> Dict[str, Any]:
    parts: List[tuple] = []

    def load():
        enc, dec, p = _ort_sessions(a)
        parts.append(p)
        del enc, dec
        gc.collect()

    res: Dict[str, Any] = {"load": timed(load, a.load_runs)}
    parts = parts[1:]
    med = lambda xs: sorted(xs)[len(xs) // 2] * 1e3  # noqa: E731
    res["load_breakdown_median_ms"] = {"encoder_session": med([p[0] for p in parts]),
                                       "decoder_session": med([p[1] for p in parts])}
    res.update(_peak_fields())
    return res


def w_ort_run(a) -> Dict[str, Any]:
    """ONNX Runtime (no torch imported in this process): sessions, numpy pre-processing, encoder, decoder."""
    import numpy as np
    import onnxruntime as ort
    image = _load_image(a.image)
    h, w = image.shape[:2]
    enc, dec, _ = _ort_sessions(a)
    gc.collect()
    peak_load = ru_maxrss_mib()
    did_reset = reset_peak_rss()
    res: Dict[str, Any] = {"threads": a.threads, "image": [w, h], "onnxruntime": ort.__version__,
                           "providers": enc.get_providers()}
    res["preprocess"] = timed(lambda: _np_preprocess(image), max(a.encoder_runs, 10))
    x = _np_preprocess(image)
    out: Dict[str, Any] = {}

    def run_encoder():
        out["emb"] = enc.run(None, {"x": x})[0]

    res["encoder_model"] = timed(run_encoder, a.encoder_runs)
    emb = out["emb"]
    point = [w / 2, h / 2]

    def predict():
        masks = dec.run(None, _ort_decoder_inputs(emb, point, h, w))[0]
        return masks[:, 1:] > 0.0  # the 3 multimask outputs, thresholded (mask_threshold 0)

    res["predict"] = timed(predict, a.predict_runs)
    res["encoder"] = {"median_ms": res["encoder_model"]["median_ms"] + res["preprocess"]["median_ms"],
                      "note": "sum of the medians of encoder_model and preprocess"}
    res["peak_rss_after_load_mib"] = vm_hwm_mib() if did_reset else None
    res.update(_peak_fields(peak_load))
    # Numerical check against the official PyTorch predictor (same random weights, from the export step).
    chk: Dict[str, Any] = {}
    try:
        ref_in = np.load(os.path.join(a.tmp, "ref_input.npy"))
        ref_emb = np.load(os.path.join(a.tmp, "ref_embedding.npy"))
        chk["preprocess_max_abs_diff_vs_torch"] = float(np.abs(x - ref_in).max())
        chk["embedding_max_abs_diff_vs_torch"] = float(np.abs(emb - ref_emb).max())
        chk["embedding_max_abs"] = float(np.abs(ref_emb).max())
        masks, _, low = dec.run(None, _ort_decoder_inputs(ref_emb, point, h, w))
        ref_masks = np.load(os.path.join(a.tmp, "ref_masks_logits.npy"))
        ref_low = np.load(os.path.join(a.tmp, "ref_low_res.npy"))
        chk["low_res_max_abs_diff_vs_torch"] = float(np.abs(low[0, 1:] - ref_low).max())
        chk["masks_logits_max_abs_diff_vs_torch"] = float(np.abs(masks[0, 1:] - ref_masks).max())
        chk["mask_pixels_disagreeing"] = float(np.mean((masks[0, 1:] > 0) != (ref_masks > 0)))
    except Exception as e:  # noqa: BLE001
        chk["error"] = f"{type(e).__name__}: {e}"
    res["check"] = chk
    return res


WORKERS = {
    "torch_prepare": w_torch_prepare,
    "torch_load": w_torch_load,
    "torch_run": w_torch_run,
    "ort_export": w_ort_export,
    "ort_load": w_ort_load,
    "ort_run": w_ort_run,
}


def worker_main(a) -> int:
    t = time.perf_counter()
    try:
        res = WORKERS[a.worker](a)
        rc = 0
    except BaseException as e:  # noqa: BLE001 - reported as n/a by the orchestrator
        res = {"error": f"{type(e).__name__}: {e}".strip()[:2000], "traceback": traceback.format_exc()[-4000:]}
        rc = 1
    res["worker_wall_s"] = time.perf_counter() - t
    res["loadavg_at_end"] = loadavg()
    with open(a.result, "w") as f:
        json.dump(res, f)
    return rc


# ----------------------------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_child(cmd: List[str], env: Dict[str, str], timeout: float, log_path: str) -> Dict[str, Any]:
    """Run a subprocess (own process group), output to log_path; returns rc, wall time, the child's ru_maxrss."""
    t = time.perf_counter()
    with open(log_path, "wb") as logf:
        try:
            p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                 start_new_session=True)
        except OSError as e:
            return {"rc": None, "error": f"cannot start {cmd[0]}: {e}", "wall_s": 0.0}
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # e.g. Ctrl-C: the child has its own session, so take it down with us
            kill()
            os.waitpid(p.pid, 0)
            raise
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    out = {"rc": p.returncode, "wall_s": time.perf_counter() - t, "child_maxrss_mib": ru.ru_maxrss / 1024}
    if timed_out.is_set():
        out["error"] = f"timed out after {timeout:.0f} s (killed)"
    elif p.returncode < 0:
        sig = -p.returncode
        out["error"] = f"killed by signal {sig}" + (" (probably out of memory)" if sig == signal.SIGKILL else "")
    return out


def tail(path: str, n: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [l.rstrip() for l in f if l.strip()]
        return "\n".join(lines[-n:])
    except OSError:
        return ""


class Orchestrator:
    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ)
        n = str(a.threads)
        self.env.update({"RAYON_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
                         "OPENBLAS_NUM_THREADS": n, "PYTHONUNBUFFERED": "1"})
        self.logdir = a.log_dir

    # -- ours ----------------------------------------------------------------------------------------------------
    def ours(self, model: str, extra: List[str], tag: str) -> Dict[str, Any]:
        a = self.a
        if not os.path.isfile(a.sam_bin) or not os.access(a.sam_bin, os.X_OK):
            return {"error": f"{a.sam_bin} not found: build it with `cargo build --release -p sam-cli` (or --build)"}
        cmd = [a.sam_bin, "bench", "--models", model, "--image", a.image, "--json"] + extra
        log_path = os.path.join(self.logdir, f"{model}-ours-{tag}.log")
        la = loadavg()
        r = run_child(cmd, self.env, a.timeout, log_path)
        res: Dict[str, Any] = {"cmd": " ".join(shlex.quote(c) for c in cmd), "loadavg_at_start": la,
                               "loadavg_at_end": loadavg(), "wall_s": r["wall_s"],
                               "child_maxrss_mib": r.get("child_maxrss_mib")}
        if r.get("error") or r["rc"] != 0:
            res["error"] = (r.get("error") or f"exit code {r['rc']}") + ": " + tail(log_path, 6)
            return res
        parsed = None
        with open(log_path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        j = json.loads(line)
                    except ValueError:
                        continue
                    if j.get("model") == model:
                        parsed = j
        if parsed is None:
            res["error"] = "no JSON line for the model in the output: " + tail(log_path, 6)
            return res
        res.update(parsed)
        res["threads_reported"] = res.pop("threads", None)
        res["threads"] = a.threads  # RAYON_NUM_THREADS; `sam bench` prints available_parallelism, not this
        return res

    # -- python workers ------------------------------------------------------------------------------------------
    def worker(self, kind: str, model: str, tmp: str, tag: str, extra: Optional[List[str]] = None) -> Dict[str, Any]:
        a = self.a
        result = os.path.join(tmp, f"result-{tag}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--model", model, "--tmp", tmp,
               "--result", result, "--image", a.image, "--threads", str(a.threads),
               "--encoder-runs", str(a.encoder_runs), "--predict-runs", str(a.predict_runs),
               "--load-runs", str(a.load_runs), "--opset", str(a.opset)] + (extra or [])
        log_path = os.path.join(self.logdir, f"{model}-{tag}.log")
        la = loadavg()
        r = run_child(cmd, self.env, a.timeout, log_path)
        res: Dict[str, Any] = {}
        if os.path.exists(result):
            with open(result) as f:
                res = json.load(f)
            os.remove(result)
        res.update({"loadavg_at_start": la, "wall_s": r["wall_s"], "child_maxrss_mib": r.get("child_maxrss_mib")})
        if r.get("error"):
            res["error"] = r["error"]
        elif r["rc"] != 0 and "error" not in res:
            res["error"] = f"exit code {r['rc']}: " + tail(log_path, 6)
        return res

    def step(self, label: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        log(f"{label} ... (load average {fmt_la(loadavg())})")
        res = fn()
        if res.get("error"):
            log(f"{label}: FAILED: {res['error'].splitlines()[0][:300]}")
        else:
            log(f"{label}: done in {res.get('wall_s', 0):.0f} s")
        return res

    def run_model(self, model: str) -> Dict[str, Any]:
        a = self.a
        fw = set(a.frameworks)
        out: Dict[str, Any] = {"model": model, "loadavg_at_start": loadavg()}
        runs = ["--encoder-runs", str(a.encoder_runs), "--predict-runs", str(a.predict_runs),
                "--load-runs", str(a.load_runs)]
        if "ours" in fw:
            out["ours"] = self.step(f"{model}: ours (sam bench)", lambda: self.ours(model, runs, "run"))
            # Load-only peak: the same load path, encoder skipped (predict on a random embedding, negligible).
            out["ours_load"] = self.step(
                f"{model}: ours, load-only peak",
                lambda: self.ours(model, ["--skip-encoder", "--predict-runs", "1", "--load-runs",
                                          str(a.load_runs)], "load"))
        tmp = tempfile.mkdtemp(prefix=f"sam-bench-peers-{model}-", dir=a.tmpdir)
        try:
            if fw & {"torch", "sdpa"}:
                prep = self.step(f"{model}: PyTorch, random weights -> .pth",
                                 lambda: self.worker("torch_prepare", model, tmp, "torch-prepare"))
                out["torch_prepare"] = prep
                if prep.get("error"):
                    err = {"error": "preparing the random checkpoint failed: " + prep["error"]}
                    if "torch" in fw:
                        out["torch_load"] = dict(err)
                        out["torch_eager"] = dict(err)
                    if "sdpa" in fw:
                        out["torch_sdpa"] = dict(err)
                else:
                    if "torch" in fw:
                        out["torch_load"] = self.step(f"{model}: PyTorch load",
                                                      lambda: self.worker("torch_load", model, tmp, "torch-load"))
                        out["torch_eager"] = self.step(f"{model}: PyTorch eager encoder + predict",
                                                       lambda: self.worker("torch_run", model, tmp, "torch-eager"))
                    if "sdpa" in fw:
                        out["torch_sdpa"] = self.step(
                            f"{model}: PyTorch SDPA encoder",
                            lambda: self.worker("torch_run", model, tmp, "torch-sdpa", ["--sdpa"]))
                for f in ("model.pth", "model.safetensors"):
                    p = os.path.join(tmp, f)
                    if os.path.exists(p):
                        os.remove(p)
            if "ort" in fw:
                exp = self.step(f"{model}: ONNX export (official encoder + SamOnnxModel)",
                                lambda: self.worker("ort_export", model, tmp, "ort-export"))
                out["ort_export"] = exp
                if exp.get("error"):
                    err = {"error": "ONNX export failed: " + exp["error"]}
                    out["ort_load"], out["ort_run"] = dict(err), dict(err)
                else:
                    out["ort_load"] = self.step(f"{model}: ONNX Runtime load (sessions)",
                                                lambda: self.worker("ort_load", model, tmp, "ort-load"))
                    out["ort_run"] = self.step(f"{model}: ONNX Runtime encoder + decoder",
                                               lambda: self.worker("ort_run", model, tmp, "ort-run"))
        finally:
            if a.keep_tmp:
                log(f"{model}: temporary files kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        out["loadavg_at_end"] = loadavg()
        return out


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = [("ours", "ours"), ("eager", "PyTorch eager"), ("sdpa", "PyTorch SDPA"), ("ort", "ONNX Runtime")]
ROWS = [("load", "load"), ("encoder", "encoder (set_image)"), ("predict", "predict (1 point, 3 masks)"),
        ("peak_load", "peak RSS, load only"), ("peak_run", "peak RSS, load + encoder + predict")]


def fmt_la(la: Optional[List[float]]) -> str:
    return "n/a" if not la else " ".join(f"{x:.2f}" for x in la)


def _median(d: Optional[Dict[str, Any]], key: str) -> Optional[float]:
    if not d or d.get("error") or not isinstance(d.get(key), dict):
        return None
    return d[key].get("median_ms")


def cells(m: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{row: {col: {"value": float|None, "unit": "ms"|"MiB", "text": str, "why": reason|None}}}."""
    def cell(src: Optional[Dict[str, Any]], value: Optional[float], unit: str, extra: str = "",
             na: bool = False) -> Dict[str, Any]:
        if na:
            return {"value": None, "unit": unit, "text": "—", "why": None}
        if src is None:
            return {"value": None, "unit": unit, "text": "not run", "why": None}
        if src.get("error"):
            return {"value": None, "unit": unit, "text": "n/a", "why": src["error"]}
        if value is None:
            return {"value": None, "unit": unit, "text": "n/a", "why": "no figure"}
        return {"value": value, "unit": unit, "text": fmt_value(value, unit) + extra, "why": None}

    ours, ours_load = m.get("ours"), m.get("ours_load")
    tl, te, ts = m.get("torch_load"), m.get("torch_eager"), m.get("torch_sdpa")
    ol, orun = m.get("ort_load"), m.get("ort_run")
    ort_enc_extra = ""
    if orun and not orun.get("error") and "encoder_model" in orun:
        ort_enc_extra = (f" ({fmt_value(orun['encoder_model']['median_ms'], 'ms')} model"
                         f" + {fmt_value(orun['preprocess']['median_ms'], 'ms')} pre)")
    pk = lambda d: None if not d else d.get("peak_rss_mib")  # noqa: E731
    ours_enc_missing = ours is not None and not ours.get("error") and ours.get("encoder") is None
    return {
        "load": {"ours": cell(ours, _median(ours, "load"), "ms"), "eager": cell(tl, _median(tl, "load"), "ms"),
                 "sdpa": cell(None, None, "ms", na=True), "ort": cell(ol, _median(ol, "load"), "ms")},
        "encoder": {"ours": cell(ours, _median(ours, "encoder"), "ms", na=ours_enc_missing),
                    "eager": cell(te, _median(te, "encoder"), "ms"),
                    "sdpa": cell(ts, _median(ts, "encoder"), "ms"),
                    "ort": cell(orun, _median(orun, "encoder"), "ms", ort_enc_extra)},
        "predict": {"ours": cell(ours, _median(ours, "predict"), "ms"),
                    "eager": cell(te, _median(te, "predict"), "ms"),
                    "sdpa": cell(None, None, "ms", na=True), "ort": cell(orun, _median(orun, "predict"), "ms")},
        "peak_load": {"ours": cell(ours_load, pk(ours_load), "MiB"), "eager": cell(tl, pk(tl), "MiB"),
                      "sdpa": cell(None, None, "MiB", na=True), "ort": cell(ol, pk(ol), "MiB")},
        "peak_run": {"ours": cell(ours, pk(ours), "MiB"), "eager": cell(te, pk(te), "MiB"),
                     "sdpa": cell(ts, pk(ts), "MiB"), "ort": cell(orun, pk(orun), "MiB")},
    }


def fmt_value(v: float, unit: str) -> str:
    if unit == "MiB":
        return f"{v:,.0f} MiB"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def ratio(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[float]:
    if a["value"] is None or b["value"] is None or b["value"] == 0:
        return None
    return a["value"] / b["value"]


def fmt_ratio(r: Optional[float]) -> str:
    return "—" if r is None else f"{r:.2f}×"


def table_rows(m: Dict[str, Any]):
    c = cells(m)
    header = ["", *[name for _, name in COLUMNS], "ours/eager", "ours/SDPA", "ours/ORT"]
    rows = []
    for key, label in ROWS:
        r = c[key]
        rows.append([label, *[r[col]["text"] for col, _ in COLUMNS],
                     *[fmt_ratio(ratio(r["ours"], r[col])) for col in ("eager", "sdpa", "ort")]])
    return header, rows, c


def failures(m: Dict[str, Any]) -> List[str]:
    out = []
    names = {"ours": "ours (sam bench)", "ours_load": "ours, load-only run", "torch_prepare": "PyTorch prepare",
             "torch_load": "PyTorch load", "torch_eager": "PyTorch eager", "torch_sdpa": "PyTorch SDPA",
             "ort_export": "ONNX export", "ort_load": "ONNX Runtime load", "ort_run": "ONNX Runtime run"}
    for k, name in names.items():
        d = m.get(k)
        if d and d.get("error"):
            out.append(f"{name}: {' '.join(d['error'].split())[:400]}")
    return out


def checks(m: Dict[str, Any]) -> List[str]:
    out = []
    ts = m.get("torch_sdpa")
    if ts and ts.get("check"):
        c = ts["check"]
        out.append(f"PyTorch SDPA vs eager embedding: max |diff| {c['max_abs_diff_vs_eager']:.2e} "
                   f"(embedding max |x| {c['embedding_max_abs']:.2f})")
    orun = m.get("ort_run")
    if orun and orun.get("check"):
        c = orun["check"]
        if "error" in c:
            out.append(f"ONNX Runtime check failed: {c['error']}")
        else:
            out.append(f"ONNX Runtime vs PyTorch: pre-processing max |diff| {c['preprocess_max_abs_diff_vs_torch']:.2e}, "
                       f"embedding {c['embedding_max_abs_diff_vs_torch']:.2e}, low-res logits "
                       f"{c['low_res_max_abs_diff_vs_torch']:.2e}, upscaled logits "
                       f"{c['masks_logits_max_abs_diff_vs_torch']:.2e}, mask pixels disagreeing "
                       f"{100 * c['mask_pixels_disagreeing']:.4f} %")
    ex = m.get("ort_export")
    if ex and not ex.get("error"):
        out.append(f"ONNX export: encoder {ex.get('encoder_export_s', 0):.0f} s ({ex.get('encoder_exporter')} "
                   f"exporter), decoder {ex.get('decoder_export_s', 0):.0f} s ({ex.get('decoder_exporter')}), "
                   f"opset {ex.get('opset')}, {ex.get('onnx_bytes', 0) / 2**20:,.0f} MiB of ONNX files")
    tl = m.get("torch_load")
    if tl and not tl.get("error") and "load_safetensors" in tl:
        b = tl.get("load_breakdown_median_ms", {})
        st_peak = tl.get("peak_rss_load_safetensors_mib")
        out.append(f"PyTorch load from .pth: construct {b.get('construct', 0):,.0f} ms + torch.load "
                   f"{b.get('torch_load', 0):,.0f} ms + load_state_dict {b.get('load_state_dict', 0):,.0f} ms; "
                   f"from safetensors instead: {fmt_value(tl['load_safetensors']['median_ms'], 'ms')}"
                   + (f", peak RSS {fmt_value(st_peak, 'MiB')}" if st_peak else ""))
    ours = m.get("ours")
    if ours and not ours.get("error") and ours.get("threads_reported") not in (None, ours.get("threads")):
        out.append(f"ours: ran with RAYON_NUM_THREADS={ours['threads']} (`sam bench` reports "
                   f"{ours['threads_reported']}, the available parallelism, whatever RAYON_NUM_THREADS says)")
    return out


def text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for j, r in enumerate([header] + rows):
        lines.append("  ".join((c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def image_desc(m: Dict[str, Any], meta: Dict[str, Any]) -> str:
    for k in ("ours", "torch_eager", "ort_run"):
        d = m.get(k)
        if d and d.get("image"):
            return f"{d['image'][0]}×{d['image'][1]}"
    return os.path.basename(meta["image"])


def render(summary: Dict[str, Any], markdown: bool) -> str:
    meta = summary["meta"]
    out = []
    if markdown:
        out.append(f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores available, "
                   f"{meta['mem_total_gib']} GiB), **{meta['threads']} threads** for every framework; "
                   f"image `{meta['image']}`; medians of {meta['encoder_runs']} encoder / {meta['predict_runs']} "
                   f"predict / {meta['load_runs']} load runs after one warm-up; random weights.")
        out.append("")
        out.append(f"Command: `{meta['command']}`")
        out.append("")
        v = meta["versions"]
        out.append("Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]) + f"; repository {meta['git']}.")
        out.append("")
        out.append(f"Load average: {fmt_la(meta['loadavg_at_start'])} at the start, "
                   f"{fmt_la(meta['loadavg_at_end'])} at the end.")
    else:
        out.append(f"{meta['date']}  {meta['cpu']}  {meta['cores']} cores, {meta['threads']} threads, "
                   f"{meta['mem_total_gib']} GiB")
        out.append(f"command: {meta['command']}")
        out.append(f"load average: {fmt_la(meta['loadavg_at_start'])} (start) -> "
                   f"{fmt_la(meta['loadavg_at_end'])} (end)")
    for model, m in summary["models"].items():
        header, rows, _ = table_rows(m)
        title = (f"{model} — {image_desc(m, meta)} image, {meta['threads']} threads "
                 f"(load average {fmt_la(m.get('loadavg_at_start'))} → {fmt_la(m.get('loadavg_at_end'))})")
        out.append("")
        if markdown:
            out.append(f"#### {title}")
            out.append("")
            out.append(md_table(header, rows))
            notes = checks(m) + [f"n/a — {f}" for f in failures(m)]
            if notes:
                out.append("")
                out += [f"* {n}" for n in notes]
        else:
            out.append(title)
            out.append(text_table(header, rows))
            for n in checks(m):
                out.append(f"  * {n}")
            for f in failures(m):
                out.append(f"  ! n/a — {f}")
    if markdown:
        out.append("")
        out.append("Ratios are ours ÷ peer: below 1 means ours is faster (or smaller). ONNX Runtime's encoder is its "
                   "session run on the pre-processed 1×3×1024×1024 input plus the numpy resize/normalise/pad time. "
                   "Peak RSS is per process (fresh subprocess per framework and measurement).")
    return "\n".join(out) + "\n"


def git_desc() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head + (" (with local changes)" if dirty else "") if head else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def sam_version(sam_bin: str) -> Optional[str]:
    try:
        r = subprocess.run([sam_bin, "--version"], capture_output=True, text=True, timeout=30)
        v = r.stdout.strip()
        return v.split(" ", 1)[1] if v.startswith("sam ") else (v or None)
    except Exception:  # noqa: BLE001
        return None


def parse_args(argv: Optional[List[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_b", help="comma-separated: vit_b, vit_l, vit_h (default vit_b)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image for every framework (default {DEFAULT_IMAGE})")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every framework (torch.set_num_threads, ORT intra_op_num_threads, "
                        "RAYON_NUM_THREADS); default: all available cores")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="subset of ours,torch,sdpa,ort (default: all)")
    p.add_argument("--encoder-runs", type=int, default=None, help="timed encoder runs (default 3, --quick 1)")
    p.add_argument("--predict-runs", type=int, default=None, help="timed predict runs (default 20, --quick 5)")
    p.add_argument("--load-runs", type=int, default=None, help="timed loads (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="fewer runs, for smoke tests")
    p.add_argument("--sam-bin", default=DEFAULT_SAM_BIN, help=f"our binary (default {DEFAULT_SAM_BIN})")
    p.add_argument("--build", action="store_true", help="run `cargo build --release -p sam-cli` first")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, as the official script)")
    p.add_argument("--json-out", help="write the JSON summary here")
    p.add_argument("--markdown-out", help="write a Markdown report (tables) here")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per subprocess (default 7200)")
    p.add_argument("--tmpdir", default=None, help="where temporary checkpoints / ONNX files go (default: system)")
    p.add_argument("--keep-tmp", action="store_true", help="keep temporary files and per-step logs")
    # worker mode (internal)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--sdpa", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.threads = a.threads or available_cores()
    quick = a.quick
    a.encoder_runs = a.encoder_runs or (1 if quick else 3)
    a.predict_runs = a.predict_runs or (5 if quick else 20)
    a.load_runs = a.load_runs or (1 if quick else 3)
    return a


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    if a.worker:
        return worker_main(a)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"unknown model(s) {bad}; expected some of {', '.join(MODELS)}", file=sys.stderr)
        return 2
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    if any(f not in FRAMEWORKS for f in fws):
        print(f"unknown framework in {a.frameworks}; expected some of {', '.join(FRAMEWORKS)}", file=sys.stderr)
        return 2
    a.frameworks = fws
    a.image = os.path.abspath(os.path.join(REPO_ROOT, a.image) if not os.path.isabs(a.image) else a.image)
    if not os.path.isfile(a.image):
        print(f"image {a.image} not found", file=sys.stderr)
        return 2
    a.sam_bin = a.sam_bin if os.path.isabs(a.sam_bin) else os.path.join(REPO_ROOT, a.sam_bin)
    command = "python " + " ".join(shlex.quote(x) for x in
                                   [os.path.relpath(os.path.abspath(__file__), REPO_ROOT)] + sys.argv[1:])
    if a.build:
        log("cargo build --release -p sam-cli ...")
        r = subprocess.run(["cargo", "build", "--release", "-p", "sam-cli"], cwd=REPO_ROOT)
        if r.returncode != 0:
            log("cargo build failed; `ours` will be n/a if the binary is missing")
    own_logdir = None
    if a.keep_tmp:
        a.log_dir = tempfile.mkdtemp(prefix="sam-bench-peers-logs-", dir=a.tmpdir)
    else:
        a.log_dir = own_logdir = tempfile.mkdtemp(prefix="sam-bench-peers-logs-", dir=a.tmpdir)
    meta = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": available_cores(), "threads": a.threads, "mem_total_gib": mem_total_gib(),
        "image": os.path.relpath(a.image, REPO_ROOT), "models": models, "frameworks": fws,
        "encoder_runs": a.encoder_runs, "predict_runs": a.predict_runs, "load_runs": a.load_runs,
        "quick": a.quick, "git": git_desc(), "loadavg_at_start": loadavg(),
        "sam_binary": {"path": os.path.relpath(a.sam_bin, REPO_ROOT),
                       "mtime": (_dt.datetime.fromtimestamp(os.path.getmtime(a.sam_bin), _dt.timezone.utc)
                                 .strftime("%Y-%m-%d %H:%M:%S UTC") if os.path.exists(a.sam_bin) else None)},
        "versions": {"sam": sam_version(a.sam_bin), "python": platform.python_version(),
                     "torch": pkg_version("torch"), "torchvision": pkg_version("torchvision"),
                     "segment-anything": pkg_version("segment-anything"), "onnx": pkg_version("onnx"),
                     "onnxruntime": pkg_version("onnxruntime"), "numpy": pkg_version("numpy"),
                     "pillow": pkg_version("pillow")},
    }
    log(f"{meta['cpu']}, {meta['cores']} cores, {a.threads} threads; models {models}; frameworks {fws}; "
        f"runs: encoder {a.encoder_runs}, predict {a.predict_runs}, load {a.load_runs}; "
        f"load average {fmt_la(meta['loadavg_at_start'])}")
    orch = Orchestrator(a)
    summary: Dict[str, Any] = {"meta": meta, "models": {}}
    try:
        for model in models:
            summary["models"][model] = orch.run_model(model)
    finally:
        meta["loadavg_at_end"] = loadavg()
        if own_logdir:
            shutil.rmtree(own_logdir, ignore_errors=True)
        else:
            log(f"per-step logs kept in {a.log_dir}")
    for model, m in summary["models"].items():
        _, _, c = table_rows(m)
        m["table"] = {row: {col: {"value": v["value"], "unit": v["unit"], "why": v["why"]}
                            for col, v in cols.items()} for row, cols in c.items()}
        m["ratios_ours_over_peer"] = {row: {col: ratio(cols["ours"], cols[col]) for col in ("eager", "sdpa", "ort")}
                                      for row, cols in c.items()}
    text = render(summary, markdown=False)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        log(f"JSON summary written to {a.json_out}")
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write(render(summary, markdown=True))
        log(f"Markdown written to {a.markdown_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
