"""bench/check: `envmgr check --python X` against a bare script running the same kernels.

The bare script is what a user would write instead: import torch, run the same kernels at the
same sizes and repetitions (fp32 matmul with its float64 reference, bf16/fp16 matmuls, a conv2d,
attention, a device copy and a single-rank NCCL all-reduce on each GPU; the CPU kernels when
there is no GPU), print nothing. Both run with the same interpreter, alternately, in the same
run; the ratio of the medians is envmgr's overhead (the issue's budget: at most 1.3x).

    python bench/check.py [--python PATH] [--runs 5] [--max-ratio 1.3]

Reference (issue): a bare probe takes 8.4 s on an H200, 5.5 s of it `import torch`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envmgr.gpu.probe import DEFAULT_SIZES  # noqa: E402

BARE = r'''
import math, os, socket, sys, time, datetime
S = json_sizes
import torch
F = torch.nn.functional

def timed(fn, sync, reps):
    fn(); sync()
    for _ in range(max(1, reps)):
        fn(); sync()

def kernels(dev):
    cuda = dev.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    g = torch.Generator().manual_seed(0)
    rn = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(device=dev, dtype=dtype)
    reps = S["reps"]
    n = S["gpu_mm_check" if cuda else "cpu_mm"]
    a, b = rn(n, n), rn(n, n)
    timed(lambda: a @ b, sync, reps); (a @ b); (a.double() @ b.double()); sync()
    if cuda:
        for dt in (torch.bfloat16, torch.float16):
            m = S["gpu_mm_perf"]
            x, y = rn(m, m, dtype=dt), rn(m, m, dtype=dt)
            timed(lambda: x @ y, sync, reps); (x[:64].float() @ y[:, :64].float()); sync()
    bt, ch, hw = S["gpu_conv" if cuda else "cpu_conv"]
    dt = torch.float16 if cuda else torch.float32
    x, w = rn(bt, ch, hw, hw, dtype=dt), rn(ch, ch, 3, 3, dtype=dt)
    timed(lambda: F.conv2d(x, w, padding=1), sync, reps)
    F.conv2d(x[:1].double().cpu(), w.double().cpu(), padding=1)
    bb, h, s, d = S["gpu_sdpa" if cuda else "cpu_sdpa"]
    dt = torch.bfloat16 if cuda else torch.float32
    q, k, v = (rn(bb, h, s, d, dtype=dt) for _ in range(3))
    timed(lambda: F.scaled_dot_product_attention(q, k, v), sync, reps)
    q0, k0, v0 = (t[0, 0].double() for t in (q, k, v))
    torch.softmax(q0 @ k0.T / math.sqrt(d), -1) @ v0
    cnt = S["gpu_copy_mib" if cuda else "cpu_copy_mib"] * (1 << 20) // 4
    src = torch.arange(cnt, dtype=torch.int32, device=dev); dst = torch.empty_like(src)
    timed(lambda: dst.copy_(src), sync, reps); torch.equal(src, dst)

if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        kernels("cuda:%d" % i)
    import torch.distributed as dist
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method="env://", rank=0, world_size=1)
    t = torch.ones(S["allreduce_elems"], device="cuda:0"); dist.all_reduce(t); dist.all_reduce(t)
    torch.cuda.synchronize(); dist.destroy_process_group()
else:
    kernels("cpu")
'''


def wall(argv: list[str], env: dict, cwd: str) -> float:
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    secs = time.perf_counter() - start
    if r.returncode not in (0, 1):  # 1: a check failed, still a full run
        sys.exit(f"{argv[:4]} failed (rc {r.returncode}):\n{r.stderr[-2000:]}")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter with torch (default: this one)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each, alternating")
    ap.add_argument("--max-ratio", type=float, default=None, help="exit 1 when the ratio is above this")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVMGR_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="envmgr-bench-check-") as tmp:
        bare = Path(tmp) / "bare.py"
        bare.write_text(BARE.replace("json_sizes", json.dumps(DEFAULT_SIZES)))
        check_argv = [sys.executable, "-m", "envmgr", "check", "--python", args.python, "--json"]
        bare_argv = [args.python, str(bare)]
        wall(bare_argv, env, tmp)  # warm the page cache for torch's libraries once
        checks, bares = [], []
        for _ in range(args.runs):
            bares.append(wall(bare_argv, env, tmp))
            checks.append(wall(check_argv, env, tmp))
        report = json.loads(subprocess.run(check_argv, capture_output=True, text=True, env=env, cwd=tmp).stdout)
    mc, mb = statistics.median(checks), statistics.median(bares)
    ratio = mc / mb
    gpus = ", ".join(g["name"] for g in report.get("gpus") or []) or "no GPU (CPU kernels)"
    print(f"target: {args.python}: torch {report['torch']['version']}, {gpus}")
    print(f"bare script (import torch + the same kernels): median {mb:.2f} s  runs {' '.join(f'{x:.2f}' for x in bares)}")
    print(f"envmgr check --python:                         median {mc:.2f} s  runs {' '.join(f'{x:.2f}' for x in checks)}")
    print(f"  of which import torch {report.get('import_s') or 0:.2f} s, probe {report.get('probe_s') or 0:.2f} s")
    print(f"ratio {ratio:.3f} (budget 1.3)")
    if args.max_ratio is not None and ratio > args.max_ratio:
        sys.exit(1)


if __name__ == "__main__":
    main()
