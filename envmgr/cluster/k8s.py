"""``envmgr cluster k8s``: standard Kubernetes manifests for one profile's image.

Input: a ``Workload`` (the lock's facts), an image pinned by digest, nodes, GPUs and
processes per node, a namespace. Output: manifests (plain data, then YAML files):

- ``probe-configmap.yaml``: envmgr's probe, the lock's expectations and a launcher that
  prints the node's name before the probe's JSON; mounted read-only by the fleet check;
- ``check-job.yaml``: the fleet check as an Indexed Job, one pod on each of N nodes
  (required pod anti-affinity on the hostname); ``check-daemonset.yaml``: the same probe as
  a DaemonSet's init container on every node that has GPUs (delete it once the logs are in);
- ``train-job.yaml``: a headless Service and an Indexed Job of N pods x G GPUs running
  torchrun with c10d rendezvous at pod 0; ``train-pytorchjob.yaml``: the same for Kubeflow's
  training operator (``kubeflow.org/v1`` PyTorchJob); ``workspace-pvc.yaml``: the shared
  workspace claim (unless ``--workspace-claim`` names an existing one).

The fleet check asks only for GPUs (it must reach the nodes that cannot run the lock, to
say why); the training pods carry the lock's node affinity (``affinity``). Every pod: the
image by digest, non-root (uid 1000, as envmgr's images run), no privilege escalation, all
capabilities dropped, requests = limits, labels naming the profile and the lock digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_atomic
from ..gpu.runner import probe_source
from . import affinity
from .image import Pinned
from .workload import RDZV_PORT, Workload, torchrun_args, train_command
from .yamltext import dump_all

PROBE_MOUNT = "/etc/envmgr"
UID = 1000
NODE_MARKER = "envmgr-node: "
LAUNCHER = f"""\
# envmgr fleet check: name the node, then run envmgr's probe with the lock's expectations.
import os, sys
print("{NODE_MARKER}" + os.environ.get("NODE_NAME", "unknown"), flush=True)
os.execv(sys.executable, [sys.executable, "{PROBE_MOUNT}/probe.py", "--expect-file", "{PROBE_MOUNT}/expect.json"] + sys.argv[1:])
"""
NCCL_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    "PYTHONUNBUFFERED": "1",
}
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


@dataclass(frozen=True)
class Options:
    nodes: int = 1
    gpus: int = 0  # per node
    procs: int = 1  # torchrun processes per node
    namespace: str | None = None
    cpus: str = ""  # per pod; "" = the default for the GPU count
    memory: str = ""
    workspace_claim: str = ""  # "" = write workspace-pvc.yaml and use it
    workspace_size: str = "100Gi"
    command: tuple[str, ...] = ()  # the training script and its arguments (default: the smoke all-reduce)


def dns_name(text: str, limit: int = 52) -> str:
    """A DNS-1123 label from a profile name (room left for Job pod suffixes)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name[:limit].rstrip("-")) or "envmgr"


def _check_quantity(flag: str, value: str) -> str:
    if value and not _QUANTITY.match(value):
        raise UserError(f"{flag} {value!r}: not a Kubernetes quantity", hint="e.g. 8, 500m, 64Gi")
    return value


def validate_options(opts: Options) -> None:
    _check_quantity("--cpus-per-node", opts.cpus)
    _check_quantity("--memory-per-node", opts.memory)
    _check_quantity("--workspace-size", opts.workspace_size)
    if opts.namespace is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", opts.namespace):
        raise UserError(f"--namespace {opts.namespace!r}: not a Kubernetes namespace name",
                        hint="lowercase letters, digits and '-', at most 63")
    if opts.workspace_claim and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", opts.workspace_claim):
        raise UserError(f"--workspace-claim {opts.workspace_claim!r}: not a claim name")


def _gib(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(Gi|G|Mi|M|Ti|T)?", text)
    if not m:
        return 0.0
    scale = {"Gi": 1, "G": 1, "Mi": 1 / 1024, "M": 1 / 1024, "Ti": 1024, "T": 1024, None: 1 / 1024 ** 3}[m.group(2)]
    return float(m.group(1)) * scale


class Manifests:
    """The manifests of one workload, as data; ``files()`` gives them as YAML by file name."""

    def __init__(self, work: Workload, image: Pinned, opts: Options) -> None:
        validate_options(opts)
        self.work, self.image, self.opts = work, image, opts
        self.base = dns_name(f"envmgr-{work.name}")
        self.affinity = affinity.for_workload(work)

    # -- shared pieces --------------------------------------------------------------------
    def labels(self, component: str) -> dict:
        w = self.work
        return {
            "app.kubernetes.io/name": "envmgr",
            "app.kubernetes.io/instance": f"{self.base}-{component}",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "envmgr",
            "io.envmgr/profile": dns_name(w.name, 63),
            "io.envmgr/lock": w.short_digest,
            "io.envmgr/variant": dns_name(w.meta.variant, 63),
        }

    def selector(self, component: str) -> dict:
        return {"app.kubernetes.io/instance": f"{self.base}-{component}", "app.kubernetes.io/component": component}

    def annotations(self) -> dict:
        w = self.work
        notes = {"io.envmgr/lock-digest": w.digest, "io.envmgr/image": str(self.image),
                 "io.envmgr/variant": w.meta.variant}
        if w.gpu:
            notes["io.envmgr/min-driver"] = w.meta.min_driver
            notes["io.envmgr/arch-list"] = " ".join(w.meta.arch_list)
            if w.meta.ptx:
                notes["io.envmgr/ptx"] = w.meta.ptx
        return notes

    def metadata(self, name: str, component: str) -> dict:
        meta = {"name": name}
        if self.opts.namespace:
            meta["namespace"] = self.opts.namespace
        meta["labels"] = self.labels(component)
        meta["annotations"] = self.annotations()
        return meta

    def resources(self, cpus: str, memory: str, gpus: int) -> dict:
        amounts = {"cpu": cpus, "memory": memory}
        if gpus:
            amounts[affinity.GPU_RESOURCE] = str(gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def container_security(self) -> dict:
        return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
                "privileged": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}

    def pod_spec(self, containers: list[dict], volumes: list[dict], *, lock_affinity: bool, gpu: bool,
                 restart: str = "Never", extra_affinity: dict | None = None, init: list[dict] | None = None) -> dict:
        spec: dict = {"restartPolicy": restart, "enableServiceLinks": False,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "nodeSelector": affinity.node_selector(self.work.meta.all_platforms)}
        aff: dict = dict(extra_affinity or {})
        if lock_affinity and self.affinity:
            aff["nodeAffinity"] = self.affinity
        elif len(self.work.views) > 1:  # the nodes of the lock's architectures, whatever their GPUs
            aff["nodeAffinity"] = affinity.arch_affinity(self.work.meta.all_platforms)
        if aff:
            spec["affinity"] = aff
        if gpu:
            spec["tolerations"] = [{"key": affinity.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if init:
            spec["initContainers"] = init
        spec["containers"] = containers
        spec["volumes"] = volumes
        return spec

    def env(self, extra: dict | None = None) -> list[dict]:
        items = [{"name": k, "value": v} for k, v in {**NCCL_ENV, **(extra or {})}.items()]
        return items + [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]

    @property
    def python(self) -> str:
        return self.work.venv + "/bin/python"

    # -- the fleet check ------------------------------------------------------------------
    @property
    def check_gpus(self) -> int:
        return self.opts.gpus if self.work.gpu else 0

    def probe_configmap(self) -> dict:
        expect = json.dumps(self.work.expect, sort_keys=True, indent=1) + "\n"
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": self.metadata(f"{self.base}-probe", "check"),
                "data": {"launch.py": LAUNCHER, "expect.json": expect, "probe.py": probe_source()}}

    def check_container(self, name: str = "check") -> dict:
        return {
            "name": name, "image": str(self.image), "imagePullPolicy": "IfNotPresent",
            "command": [self.python, f"{PROBE_MOUNT}/launch.py"],
            "env": self.env(),
            "resources": self.resources("2", "8Gi", self.check_gpus),
            "securityContext": self.container_security(),
            "volumeMounts": [{"name": "probe", "mountPath": PROBE_MOUNT, "readOnly": True},
                             {"name": "dshm", "mountPath": "/dev/shm"}],
        }

    def check_volumes(self) -> list[dict]:
        return [{"name": "probe", "configMap": {"name": f"{self.base}-probe"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]

    def check_job(self) -> dict:
        n = self.opts.nodes
        spread = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": self.selector("check")}, "topologyKey": "kubernetes.io/hostname"}]}}
        pod = self.pod_spec([self.check_container()], self.check_volumes(), lock_affinity=False,
                            gpu=bool(self.check_gpus), extra_affinity=spread)
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": self.metadata(f"{self.base}-check", "check"),
                "spec": {"completionMode": "Indexed", "completions": n, "parallelism": n, "backoffLimit": n,
                         "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 86400,
                         "template": {"metadata": {"labels": self.labels("check")}, "spec": pod}}}

    def check_daemonset(self) -> dict:
        idle = {"name": "idle", "image": str(self.image), "imagePullPolicy": "IfNotPresent",
                "command": [self.python, "-c", "import time\nwhile True:\n    time.sleep(3600)"],
                "resources": self.resources("10m", "32Mi", 0), "securityContext": self.container_security()}
        pod = self.pod_spec([idle], self.check_volumes(), lock_affinity=False, gpu=bool(self.check_gpus),
                            restart="Always", init=[self.check_container()])
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": self.metadata(f"{self.base}-check", "check"),
                "spec": {"selector": {"matchLabels": self.selector("check")},
                         "template": {"metadata": {"labels": self.labels("check")}, "spec": pod}}}

    # -- training -------------------------------------------------------------------------
    @property
    def cpus(self) -> str:
        return self.opts.cpus or str(max(4, 8 * self.opts.gpus))

    @property
    def memory(self) -> str:
        return self.opts.memory or f"{max(16, 32 * self.opts.gpus)}Gi"

    @property
    def shm(self) -> str:
        """Half the pod's memory: DataLoader workers pass batches through /dev/shm."""
        gib = _gib(self.memory)
        return f"{max(1, int(gib // 2))}Gi" if gib else "8Gi"

    @property
    def claim(self) -> str:
        return self.opts.workspace_claim or f"{self.base}-workspace"

    def train_container(self, name: str, torchrun: list[str]) -> dict:
        return {
            "name": name, "image": str(self.image), "imagePullPolicy": "IfNotPresent",
            "command": [self.work.venv + "/bin/torchrun"], "args": torchrun,
            "workingDir": "/workspace",
            "env": self.env(),
            "ports": [{"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"}],
            "resources": self.resources(self.cpus, self.memory, self.opts.gpus if self.work.gpu else 0),
            "securityContext": self.container_security(),
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "workspace", "mountPath": "/workspace"}],
        }

    def train_volumes(self) -> list[dict]:
        return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm}},
                {"name": "workspace", "persistentVolumeClaim": {"claimName": self.claim}}]

    def train_service(self) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": self.metadata(f"{self.base}-train", "train"),
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": self.selector("train"),
                         "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}]}}

    def train_job(self) -> dict:
        name = f"{self.base}-train"
        endpoint = f"{name}-0.{name}:{RDZV_PORT}"  # pod 0 of the Indexed Job, through the headless Service
        args = torchrun_args(self.opts.nodes, self.opts.procs, endpoint, name) + \
            train_command(self.python, self.opts.command)
        pod = self.pod_spec([self.train_container("train", args)], self.train_volumes(), lock_affinity=True,
                            gpu=self.work.gpu)
        pod["subdomain"] = name
        n = self.opts.nodes
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": self.metadata(name, "train"),
                "spec": {"completionMode": "Indexed", "completions": n, "parallelism": n, "backoffLimit": 0,
                         "ttlSecondsAfterFinished": 86400,
                         "template": {"metadata": {"labels": self.labels("train")}, "spec": pod}}}

    def pytorchjob(self) -> dict:
        """Kubeflow's training operator sets MASTER_ADDR, MASTER_PORT and RANK in each pod;
        Kubernetes expands them in the arguments."""
        args = [f"--nnodes={self.opts.nodes}", f"--nproc-per-node={self.opts.procs}", "--node-rank=$(RANK)",
                "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", "--max-restarts=0"] + \
            train_command(self.python, self.opts.command)
        container = self.train_container("pytorch", args)  # the operator finds the container by this name
        container["ports"] = [{"name": "pytorchjob-port", "containerPort": RDZV_PORT, "protocol": "TCP"}]
        replicas = {}
        for role, count in (("Master", 1), ("Worker", self.opts.nodes - 1)):
            if count:
                pod = self.pod_spec([dict(container)], self.train_volumes(), lock_affinity=True, gpu=self.work.gpu)
                replicas[role] = {"replicas": count, "restartPolicy": "Never",
                                  "template": {"metadata": {"labels": self.labels("train")}, "spec": pod}}
        return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": self.metadata(f"{self.base}-ddp", "train"),
                "spec": {"nprocPerNode": str(self.opts.procs),
                         "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0, "ttlSecondsAfterFinished": 86400},
                         "pytorchReplicaSpecs": replicas}}

    def workspace_pvc(self) -> dict:
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": self.metadata(self.claim, "train"),
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": self.opts.workspace_size}}}}

    # -- files ----------------------------------------------------------------------------
    def documents(self) -> dict[str, list[dict]]:
        docs = {
            "probe-configmap.yaml": [self.probe_configmap()],
            "check-job.yaml": [self.check_job()],
            "check-daemonset.yaml": [self.check_daemonset()],
            "train-job.yaml": [self.train_service(), self.train_job()],
            "train-pytorchjob.yaml": [self.pytorchjob()],
        }
        if not self.opts.workspace_claim:
            docs["workspace-pvc.yaml"] = [self.workspace_pvc()]
        return docs

    def files(self) -> dict[str, str]:
        head = (f"# envmgr cluster k8s {self.work.name}: lock {self.work.digest}\n"
                f"# image {self.image} (given as {self.image.given})\n")
        return {name: head + dump_all(docs) for name, docs in self.documents().items()}

    def next_steps(self, out: Path) -> list[str]:
        sel = f"app.kubernetes.io/instance={self.base}-check"
        ns = f" -n {self.opts.namespace}" if self.opts.namespace else ""
        return [
            f"kubectl{ns} apply -f {out}/probe-configmap.yaml -f {out}/check-job.yaml",
            f"kubectl{ns} wait --for=condition=complete --timeout=1h job/{self.base}-check",
            f"kubectl{ns} logs -l {sel} --prefix --tail=-1 --max-log-requests=100 > checks.log",
            "envmgr cluster report checks.log",
            f"kubectl{ns} apply -f {out}/train-job.yaml" + ("" if self.opts.workspace_claim else f" -f {out}/workspace-pvc.yaml"),
        ]


def write(manifests: Manifests, out: Path) -> list[Path]:
    """Every file, each written atomically; all were rendered before the first is written."""
    rendered = manifests.files()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out}: exists and is not a directory")
    written = []
    for name, text in rendered.items():
        path = out / name
        write_atomic(path, text)
        written.append(path)
    return written


@dataclass(frozen=True)
class Result:
    work: Workload
    image: Pinned
    files: tuple[Path, ...]
    affinity: dict | None
    next_steps: tuple[str, ...]

    def to_json(self) -> dict:
        return {"schema": "envmgr-cluster-k8s/1", "lock": self.work.facts(), "image": str(self.image),
                "image_given": self.image.given, "image_resolved": self.image.resolved,
                "files": [str(f) for f in self.files], "node_affinity": self.affinity,
                "affinity": affinity.describe(self.affinity), "next": list(self.next_steps)}


def generate(project: Path, name: str, *, image: str, nodes: int = 1, gpus_per_node: int | None = None,
             procs_per_node: int | None = None, namespace: str | None = None, output: Path | None = None,
             cpus: str = "", memory: str = "", workspace_claim: str = "", workspace_size: str = "100Gi",
             command=(), resolve=None) -> Result:
    """Validate everything (exit 2 on any bad input, nothing written), pin the image, write."""
    from . import image as images
    from .workload import check_counts, load

    images.parse(image)  # a malformed reference fails before the lock is read
    work = load(project, name)
    gpus, procs = check_counts(nodes, gpus_per_node, work, procs_per_node)
    opts = Options(nodes=nodes, gpus=gpus, procs=procs, namespace=namespace, cpus=cpus, memory=memory,
                   workspace_claim=workspace_claim, workspace_size=workspace_size, command=tuple(command))
    validate_options(opts)
    pinned = images.pin(image, resolve=resolve)
    manifests = Manifests(work, pinned, opts)
    out = Path(output) if output else Path("k8s") / work.name
    files = write(manifests, out)
    return Result(work, pinned, tuple(files), manifests.affinity, tuple(manifests.next_steps(out)))
