"""``envmgr cluster slurm``: one sbatch script that checks every allocated node, then trains.

Input: a ``Workload``, nodes, GPUs and processes per node, and how the environment reaches
the nodes: ``--venv`` (default) -- envmgr syncs the lock on each node into a node-local venv
from a cache on shared storage, filled once by the batch step -- or ``--image REF`` (pinned by
digest) run through pyxis/enroot (``srun --container-image``). Output: the script's text.

What the script does, in order:
1. venv flavour: ``envmgr sync NAME --frozen`` on the batch node (downloads into the shared
   cache, hash-verified), then on every node with ``srun --ntasks-per-node=1`` ``--offline``;
2. the check, once per node: ``envmgr check NAME --python VENV --json`` (venv) or envmgr's
   probe inside the image (the probe and the lock's expectations are written next to the
   results), each node's JSON in ``CHECKS/NODE.json`` (srun's ``%N``);
3. ``envmgr cluster report CHECKS``: the table; a node that cannot run the lock stops the job;
4. training: ``srun`` one torchrun a node, c10d rendezvous on the first node of
   ``$SLURM_JOB_NODELIST``, ``$SLURM_JOB_NUM_NODES`` nodes, the job id as rendezvous id;
   the command after ``--`` (default: envmgr's all-reduce smoke test).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_atomic
from ..gpu.runner import probe_source
from .image import Pinned
from .workload import RDZV_PORT, SMOKE, Workload, torchrun_args


@dataclass(frozen=True)
class Options:
    nodes: int = 1
    gpus: int = 0
    procs: int = 1
    image: Pinned | None = None  # None: the venv flavour
    command: tuple[str, ...] = ()
    time: str = ""  # --time for sbatch; "" = the partition's default
    partition: str = ""


def _q(text: str) -> str:
    return shlex.quote(text)


def _heredoc(variable: str, text: str, tag: str) -> str:
    assert f"\n{tag}\n" not in f"\n{text}\n"
    return f"{variable}=$(cat <<'{tag}'\n{text.rstrip(chr(10))}\n{tag}\n)"


def script(work: Workload, project: Path, opts: Options) -> str:
    name, image = work.name, opts.image
    facts = f"variant {work.meta.variant}"
    if work.gpu:
        facts += f", CUDA {work.meta.cuda}, driver >= {work.meta.min_driver}, archs {' '.join(work.meta.arch_list) or '?'}"
        facts += f", PTX {work.meta.ptx}" if work.meta.ptx else ""
    lines = [
        "#!/bin/bash",
        f"# envmgr cluster slurm {name}: lock {work.digest}",
        f"# {facts}",
        f"# environment: {'image ' + str(image) if image else 'a venv synced on each node from the shared cache'}",
        f"#SBATCH --job-name=envmgr-{name}",
        f"#SBATCH --nodes={opts.nodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if opts.gpus:
        lines.append(f"#SBATCH --gpus-per-node={opts.gpus}")
    if opts.time:
        lines.append(f"#SBATCH --time={opts.time}")
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    lines += [
        f"#SBATCH --output=envmgr-{name}-%j.out",
        "set -euo pipefail",
        "",
        'ENVMGR=${ENVMGR:-envmgr}',
        f"export ENVMGR_PROJECT=${{ENVMGR_PROJECT:-{_q(str(project))}}}",
        'CHECKS=${ENVMGR_CHECK_DIR:-${SLURM_SUBMIT_DIR:-$PWD}/envmgr-checks-$SLURM_JOB_ID}',
        'mkdir -p "$CHECKS"',
        "NODES=$SLURM_JOB_NUM_NODES",
        'echo "envmgr: job $SLURM_JOB_ID on $NODES node(s): $SLURM_JOB_NODELIST"',
        "",
    ]
    require = " --require-gpu" if opts.gpus else ""
    if image is None:
        python = '"$VENV/bin/python"'
        torchrun = '"$VENV/bin/torchrun"'
        lines += [
            "# 1. the environment: the lock's files into the shared cache once (hash-verified), then",
            "#    a node-local venv on every node from that cache, without the network.",
            '# The cache must be on storage every node mounts.',
            'export ENVMGR_CACHE_DIR=${ENVMGR_CACHE_DIR:-$ENVMGR_PROJECT/.envmgr/cache}',
            f'VENV=${{ENVMGR_NODE_VENV:-/tmp/envmgr-$(id -u)/venvs/{name}}}',
            f'"$ENVMGR" sync {_q(name)} --frozen --venv "$VENV" --quiet',
            f'srun --ntasks-per-node=1 "$ENVMGR" sync {_q(name)} --frozen --offline --venv "$VENV" --quiet',
            "",
            "# 2. the check on every node, one JSON document a node (CHECKS/NODE.json).",
            'srun --ntasks-per-node=1 --output="$CHECKS/%N.json" --error="$CHECKS/%N.err" \\',
            f'    "$ENVMGR" check {_q(name)} --python "$VENV" --json{require} || true',
        ]
        run = "srun --ntasks-per-node=1"
    else:
        python = _q(work.venv + "/bin/python")
        torchrun = _q(work.venv + "/bin/torchrun")
        expect = json.dumps(work.expect, sort_keys=True)
        pyxis = (f'--container-image="$IMAGE" --container-name=envmgr-{name}-$SLURM_JOB_ID '
                 '--export=ALL,NVIDIA_VISIBLE_DEVICES=all')
        lines += [
            "# 1. the image, through pyxis/enroot, pinned by digest; enroot's NVIDIA hook mounts the",
            "#    driver when NVIDIA_VISIBLE_DEVICES is set (all; gres limits the GPUs).",
            f"IMAGE={_q(image.enroot)}",
            "",
            "# 2. envmgr's probe inside the image on every node, with the lock's expectations.",
            _heredoc("PROBE", probe_source(), "ENVMGR_PROBE_EOF"),
            'printf "%s\\n" "$PROBE" > "$CHECKS/probe.py"',
            f"printf '%s\\n' {_q(expect)} > \"$CHECKS/expect.json\"",
            f'srun --ntasks-per-node=1 {pyxis} --container-mounts="$CHECKS:/envmgr-checks:ro" \\',
            '    --output="$CHECKS/%N.json" --error="$CHECKS/%N.err" \\',
            f'    {python} /envmgr-checks/probe.py --expect-file /envmgr-checks/expect.json'
            + (' --require-gpu' if opts.gpus else '') + ' || true',
        ]
        run = (f'srun --ntasks-per-node=1 {pyxis} --container-mounts="${{SLURM_SUBMIT_DIR:-$PWD}}:/workspace" '
               '--container-workdir=/workspace')
    lines += [
        "",
        "# 3. one row a node; a node that cannot run the lock stops the job before training.",
        'if ! "$ENVMGR" cluster report "$CHECKS"; then',
        '    echo "envmgr: not every node can run the lock (see the table above); not starting training" >&2',
        "    exit 1",
        "fi",
        "",
        "# 4. training: one torchrun a node, c10d rendezvous on the first node of the allocation.",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT=${{MASTER_PORT:-{RDZV_PORT}}}",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN} TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
    ]
    rdzv = torchrun_args(opts.nodes, opts.procs, "$MASTER_ADDR:$MASTER_PORT", "$SLURM_JOB_ID")
    rdzv = [a.replace(f"--nnodes={opts.nodes}", "--nnodes=$NODES") for a in rdzv]
    rdzv_text = " ".join(f'"{a}"' for a in rdzv)
    if opts.command:
        train = " ".join(_q(a) for a in opts.command)
    else:
        lines.append(_heredoc("SMOKE", SMOKE, "ENVMGR_SMOKE_EOF"))
        train = f'--no-python {python} -c "$SMOKE"'
    lines += [f"{run} {torchrun} \\", f"    {rdzv_text} \\", f"    {train}", ""]
    return "\n".join(lines)


def write(text: str, output: Path) -> Path:
    if output.is_dir():
        raise UserError(f"--output {output}: is a directory", hint="name the script file")
    write_atomic(output, text, mode=0o755)
    return output


@dataclass(frozen=True)
class Result:
    work: Workload
    path: Path
    image: Pinned | None
    nodes: int
    gpus: int
    procs: int

    def to_json(self) -> dict:
        return {"schema": "envmgr-cluster-slurm/1", "lock": self.work.facts(), "script": str(self.path),
                "image": str(self.image) if self.image else None, "flavour": "image" if self.image else "venv",
                "nodes": self.nodes, "gpus_per_node": self.gpus, "procs_per_node": self.procs,
                "next": [f"sbatch {self.path}"]}


def generate(project: Path, name: str, *, nodes: int = 1, gpus_per_node: int | None = None,
             procs_per_node: int | None = None, image: str | None = None, venv: bool = False,
             output: Path | None = None, command=(), time: str = "", partition: str = "", resolve=None) -> Result:
    """Validate everything (exit 2, nothing written), pin the image if any, write the script."""
    from . import image as images
    from .workload import check_counts, load

    if image is not None and venv:
        raise UserError("--image and --venv are exclusive", hint="run the image through pyxis, or sync a venv on each node")
    if image is not None:
        images.parse(image)
    work = load(project, name)
    gpus, procs = check_counts(nodes, gpus_per_node, work, procs_per_node)
    if time and not all(c.isdigit() or c in ":-" for c in time):
        raise UserError(f"--time {time!r}: not a Slurm time limit", hint="MINUTES, HH:MM:SS or D-HH:MM:SS")
    pinned = images.pin(image, resolve=resolve) if image is not None else None
    opts = Options(nodes=nodes, gpus=gpus, procs=procs, image=pinned, command=tuple(command), time=time,
                   partition=partition)
    text = script(work, project, opts)
    path = write(text, Path(output) if output else Path(f"envmgr-{work.name}.sbatch"))
    return Result(work, path, pinned, nodes, gpus, procs)
