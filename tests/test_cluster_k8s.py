"""``envmgr cluster k8s``: manifests checked against the real API schemas, affinity from the lock.

Every manifest goes through ``kubernetes-validate`` (its command line, as a user runs it, and
its Python API resource by resource, so a kind it does not know cannot slip through as a
warning), strict, for Kubernetes 1.30.0 and the newest version it knows. The PyTorchJob is
checked against the training operator's published API types (its Python SDK on PyPI,
``kubeflow-training``, generated from the operator's OpenAPI spec, with the Kubernetes client's
models for the pod template), read strictly the way the API server's field validation is: no
field the API does not name, no wrong type, no required field missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import image_fixtures as fx
import pytest
import yaml

from envmgr.cluster import affinity
from envmgr.core import files
from envmgr.model import lockfile
from envmgr.model.gpucompat import arch_coverage

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
from kubernetes_validate import utils as kv_utils  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example:5000/team/envmgr-train@{DIGEST}"
VERSIONS = ("1.30.0", kv_utils.latest_version())
GFD_DRIVER, GFD_MAJOR, GFD_MINOR = affinity.DRIVER_MAJOR, affinity.COMPUTE_MAJOR, affinity.COMPUTE_MINOR

# name -> [tool.envmgr] facts. cu130: the shipped default lock's facts as they are.
LOCKS = {
    "cu130": {},
    "cpu": {"variant": "cpu", "cuda": "", "min_driver": "", "toolkit_driver": "", "arch_list": (), "ptx": ""},
    "olddriver": {"variant": "cu110", "cuda": "11.0", "min_driver": "450.80.02", "toolkit_driver": "450.80.02",
                  "arch_list": ("sm_70", "sm_75", "sm_80"), "ptx": ""},
    "ptx": {"variant": "cu126", "cuda": "12.6", "min_driver": "525.60.13", "toolkit_driver": "560.28.03",
            "arch_list": ("sm_80", "sm_90"), "ptx": "sm_90"},
    # two platforms; the aarch64 torch is taken to carry sm_90 and sm_100 only (GH200/GB200)
    "fleet": {"platforms": ("linux-x86_64", "linux-aarch64"),
              "platform_facts": (("linux-aarch64", (("arch-list", ("sm_90", "sm_100")),)),)},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Locks with the facts above: the shipped default lock with its [tool.envmgr] table changed."""
    root = tmp_path_factory.mktemp("k8s-project")
    base = lockfile.read(REPO / "locks" / "pylock.default.toml")
    (root / "profiles").mkdir()
    for name, facts in LOCKS.items():
        meta = replace(base.meta, profile=name, **facts)
        packages = base.packages
        if "platforms" in facts:  # each x86_64 wheel gets an aarch64 twin
            packages = tuple(replace(p, wheels=p.wheels + tuple(
                replace(w, url=w.url.replace("x86_64", "aarch64"), sha256=w.sha256[::-1]) for w in p.wheels if "x86_64" in w.url))
                for p in packages)
        files.write_atomic(lockfile.lock_path(root, name), replace(base, meta=meta, packages=packages).dumps())
    return root


def generate(project: Path, out: Path, name: str, *extra: str) -> dict[str, list[dict]]:
    proc = fx.envmgr("cluster", "k8s", name, "--image", IMAGE, "--output", str(out), *extra,
                  env={"ENVMGR_PROJECT": str(project)})
    assert proc.returncode == 0, proc.stderr
    docs = {f.name: [d for d in yaml.safe_load_all(f.read_text()) if d] for f in sorted(out.glob("*.yaml"))}
    assert docs, proc.stdout
    return docs


@pytest.fixture(scope="module")
def rendered(project, tmp_path_factory) -> dict[str, tuple[Path, dict[str, list[dict]]]]:
    out = {}
    for name in LOCKS:
        d = tmp_path_factory.mktemp(f"k8s-{name}")
        extra = ("--nodes", "2", "--gpus-per-node", "8") if name != "cpu" else ("--nodes", "3", "--procs-per-node", "2")
        out[name] = (d, generate(project, d, name, *extra))
    return out


def pods(doc: dict) -> list[dict]:
    """Every pod spec of a workload object."""
    kind = doc["kind"]
    if kind in ("Job", "DaemonSet"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def all_docs(files_: dict[str, list[dict]]):
    for name, docs in files_.items():
        for d in docs:
            yield name, d


# -- the API schemas ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(rendered, version):
    count = 0
    for name, (folder, docs) in rendered.items():
        core = [folder / f for f in docs if f != "train-pytorchjob.yaml"]
        proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, core)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "WARN" not in proc.stdout + proc.stderr and "ERROR" not in proc.stdout + proc.stderr, proc.stdout
        for fname, doc in all_docs(docs):
            if doc["kind"] == "PyTorchJob":
                with pytest.raises(kv_utils.SchemaNotFoundError):  # a custom resource: checked below, against the operator's API
                    kv_utils.validate(doc, version, strict=True)
                continue
            kv_utils.validate(doc, version, strict=True)  # raises on any error
            count += 1
    assert count == len(LOCKS) * 6  # per lock: configmap, check job, daemonset, service, train job, pvc
    print(f"kubernetes-validate --strict -k {version}: {count} resources")


def _conform(value, typ: str, path: str, errors: list[str]):
    """``value`` read as the training operator's API type ``typ`` (its Python SDK's models,
    generated from the operator's OpenAPI spec, with the Kubernetes client's models for the
    pod template), the way the API server's field validation Strict reads it: an unknown
    field or a wrong type is an error; a model is built, so a missing required field raises."""
    import re

    from kubeflow.training import models as kf
    from kubernetes.client import models as k8s

    if m := re.fullmatch(r"list\[(.+)\]", typ):
        if not isinstance(value, list):
            errors.append(f"{path}: want a list")
            return None
        return [_conform(v, m.group(1), f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\((\w+), (.+)\)", typ):
        if not isinstance(value, dict):
            errors.append(f"{path}: want a map")
            return None
        return {k: _conform(v, m.group(2), f"{path}.{k}", errors) for k, v in value.items()}
    scalars = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "datetime": (str,), "object": (object,)}
    if typ in scalars:
        if not isinstance(value, scalars[typ]) or (typ == "int" and isinstance(value, bool)):
            errors.append(f"{path}: want {typ}, got {value!r}")
        return value
    cls = getattr(kf, typ, None) or getattr(k8s, typ)
    if not isinstance(value, dict):
        errors.append(f"{path}: want a {typ} object")
        return None
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {typ}")
            continue
        kwargs[fields[key]] = _conform(item, cls.openapi_types[fields[key]], f"{path}.{key}", errors)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a required field missing
        errors.append(f"{path}: {exc}")
        return None


def validate_pytorchjob(job: dict) -> list[str]:
    errors: list[str] = []
    _conform(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob", errors)
    return errors


def test_pytorchjob_matches_the_training_operator_api(rendered):
    pytest.importorskip("kubeflow.training", reason="pip install kubeflow-training (the test extra)")
    for name, (_, docs) in rendered.items():
        (job,) = docs["train-pytorchjob.yaml"]
        assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
        errors = validate_pytorchjob(job)
        assert not errors, "\n".join(errors[:10])
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == (2 if name == "cpu" else 1)
        for spec in pods(job):
            assert spec["containers"][0]["name"] == "pytorch"  # the operator's container name
    # the check does refuse what the operator's API does not have
    good = rendered["cu130"][1]["train-pytorchjob.yaml"][0]
    for path, change in [(("spec", "pytorchReplicaSpecs", "Master"), {"replica": 1}),
                         (("spec", "pytorchReplicaSpecs", "Master"), {"replicas": "one"}),
                         (("spec",), {"pytorchReplicaSpecs": None})]:
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path:
            node = node[key]
        node.update(change)
        assert validate_pytorchjob(bad), (path, change)
    container = json.loads(json.dumps(good))
    del next(iter(pods(container)))["containers"][0]["name"]
    assert any("`name`" in e for e in validate_pytorchjob(container))


# -- what the pods are ------------------------------------------------------------------------

def test_pods_use_the_image_by_digest_run_as_non_root_and_carry_the_lock(rendered, project):
    for name, (_, docs) in rendered.items():
        digest = lockfile.read(lockfile.lock_path(project, name)).digest()
        for fname, doc in all_docs(docs):
            labels = doc["metadata"]["labels"]
            assert labels["io.envmgr/profile"] == name and labels["io.envmgr/lock"] == digest.split(":")[1][:16]
            assert doc["metadata"]["annotations"]["io.envmgr/lock-digest"] == digest
            for spec in pods(doc):
                assert spec["securityContext"]["runAsNonRoot"] is True
                for c in spec.get("initContainers", []) + spec["containers"]:
                    assert c["image"] == IMAGE, (fname, c["image"])
                    sc = c["securityContext"]
                    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
                    assert sc["capabilities"]["drop"] == ["ALL"]
                    res = c["resources"]
                    assert res["limits"] == res["requests"] and {"cpu", "memory"} <= set(res["limits"])


def test_gpu_requests_and_training_pods_with_memory_backed_shm(rendered):
    for name, (_, docs) in rendered.items():
        gpu = name != "cpu"
        for fname, doc in all_docs(docs):
            for spec in pods(doc):
                main = (spec.get("initContainers") or spec["containers"])[0]
                want = {"check-job.yaml": "8", "check-daemonset.yaml": "8", "train-job.yaml": "8",
                        "train-pytorchjob.yaml": "8"}[fname] if gpu else None
                assert main["resources"]["limits"].get(affinity.GPU_RESOURCE) == want, (name, fname)
                if fname.startswith("train"):
                    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
                    assert shm["emptyDir"]["medium"] == "Memory"
                    assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
                    assert any(v.get("persistentVolumeClaim") for v in spec["volumes"])
                    env = {e["name"]: e.get("value") for e in main["env"]}
                    assert env["NCCL_DEBUG"] and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        if not gpu:
            text = "".join(p.read_text() for p in rendered[name][0].glob("*.yaml"))
            assert "nvidia.com" not in text  # no GPU request, no toleration, no GPU affinity


def test_training_job_rendezvous_through_the_headless_service(rendered):
    service, job = rendered["cu130"][1]["train-job.yaml"]
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    args = pod["containers"][0]["args"]
    assert pod["containers"][0]["command"] == ["/opt/venv/bin/torchrun"]
    name = job["metadata"]["name"]
    assert f"--rdzv-endpoint={name}-0.{name}:29500" in args and "--nnodes=2" in args and "--nproc-per-node=8" in args
    assert "--rdzv-backend=c10d" in args


def test_fleet_check_runs_the_probe_on_every_node_and_names_it(rendered):
    docs = rendered["cu130"][1]
    (cm,) = docs["probe-configmap.yaml"]
    assert set(cm["data"]) == {"launch.py", "expect.json", "probe.py"}
    expect = json.loads(cm["data"]["expect.json"])
    assert expect["min_driver"] == "580" and expect["arch_list"][0] == "sm_75" and "driver_table" in expect
    compile(cm["data"]["probe.py"], "probe.py", "exec")
    compile(cm["data"]["launch.py"], "launch.py", "exec")
    (job,) = docs["check-job.yaml"]
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 2 and "nodeAffinity" not in pod["affinity"]  # it must reach bad nodes too
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert pod["containers"][0]["command"] == ["/opt/venv/bin/python", "/etc/envmgr/launch.py"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_a_training_command_after_the_double_dash(project, tmp_path):
    docs = generate(project, tmp_path, "cu130", "--", "train.py", "--epochs", "3")
    args = docs["train-job.yaml"][1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:] == ["train.py", "--epochs", "3"] and "--no-python" not in args


# -- node affinity from the lock ------------------------------------------------------------------

def node(driver: int, major: int, minor: int) -> dict:
    return {GFD_DRIVER: str(driver), GFD_MAJOR: str(major), GFD_MINOR: str(minor), "nvidia.com/gpu.product": "x"}


def training_affinity(rendered, name: str) -> dict | None:
    specs = [s for f in ("train-job.yaml", "train-pytorchjob.yaml") for d in rendered[name][1][f] for s in pods(d)]
    found = [s.get("affinity", {}).get("nodeAffinity") for s in specs]
    assert all(f == found[0] for f in found)
    return found[0]


def test_old_driver_lock_admits_its_driver_major_and_up(rendered):
    aff = training_affinity(rendered, "olddriver")  # minimum 450.80.02
    assert affinity.admits(aff, node(450, 8, 0)) and affinity.admits(aff, node(535, 7, 5))
    assert not affinity.admits(aff, node(449, 8, 0)) and not affinity.admits(aff, node(418, 7, 0))
    assert not affinity.admits(aff, {GFD_MAJOR: "8", GFD_MINOR: "0"})  # no driver label: not a GPU node we know


def test_unsupported_arch_is_not_admitted(rendered):
    aff = training_affinity(rendered, "cu130")  # sm_75 .. sm_120, no PTX, driver >= 580
    for cap in ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0), (12, 1)):
        assert affinity.admits(aff, node(580, *cap)), cap
    for cap in ((6, 1), (7, 0), (7, 2), (11, 0)):  # P100/GTX 10xx, V100, Xavier, no sm_110 in the build
        assert not affinity.admits(aff, node(590, *cap)), cap
    assert not affinity.admits(aff, node(575, 9, 0))  # H100 on a driver too old for CUDA 13


def test_ptx_lock_admits_newer_gpus_only_with_the_toolkit_driver(rendered):
    aff = training_affinity(rendered, "ptx")  # sm_80 sm_90 + PTX of sm_90; toolkit driver 560
    assert affinity.admits(aff, node(530, 9, 0)) and affinity.admits(aff, node(530, 8, 6))  # SASS: the minimum
    assert affinity.admits(aff, node(560, 10, 0)) and affinity.admits(aff, node(570, 12, 0))  # JIT from PTX
    assert not affinity.admits(aff, node(550, 10, 0))  # JIT needs the toolkit's driver
    assert not affinity.admits(aff, node(570, 7, 5))  # below every arch and the PTX


def test_two_platform_lock_admits_each_architecture_with_its_own_archs(rendered):
    aff = training_affinity(rendered, "fleet")

    def on(arch: str, major: int, minor: int) -> dict:
        return {**node(590, major, minor), "kubernetes.io/arch": arch}

    assert affinity.admits(aff, on("amd64", 8, 0)) and affinity.admits(aff, on("amd64", 7, 5))
    assert affinity.admits(aff, on("arm64", 9, 0)) and affinity.admits(aff, on("arm64", 10, 0))
    assert not affinity.admits(aff, on("arm64", 8, 0))  # the aarch64 torch has no sm_80
    assert not affinity.admits(aff, on("s390x", 9, 0)) and not affinity.admits(aff, node(590, 9, 0))
    for _, doc in all_docs(rendered["fleet"][1]):
        for pod in pods(doc):  # no single-arch selector; the fleet check reaches both architectures
            assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
            reach = pod["affinity"]["nodeAffinity"]
            assert affinity.admits(reach, on("arm64", 9, 0)) and affinity.admits(reach, on("amd64", 9, 0))
            assert not affinity.admits(reach, on("s390x", 9, 0))


def test_cpu_lock_has_no_gpu_affinity(rendered):
    assert training_affinity(rendered, "cpu") is None
    job = rendered["cpu"][1]["train-job.yaml"][1]
    pod = job["spec"]["template"]["spec"]
    assert "affinity" not in pod and "tolerations" not in pod
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    assert "--nproc-per-node=2" in pod["containers"][0]["args"] and "--nnodes=3" in pod["containers"][0]["args"]


@pytest.mark.parametrize("arch_list,ptx", [
    (("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), ""),
    (("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), ""),
    (("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"), "sm_120"),
    (("sm_80", "sm_86", "sm_90a", "compute_90a", "sm_100f", "compute_100f"), ""),
    (("sm_37", "sm_50", "compute_50"), ""),
])
def test_affinity_agrees_with_the_probe_rules_on_every_capability(arch_list, ptx):
    """The scheduler's reading of the affinity = the probe's arch_coverage, for capabilities 3.0 .. 13.9."""
    aff = affinity.node_affinity(cuda="12.8", min_driver="570.26", toolkit_driver="575.51.03", arch_list=arch_list, ptx=ptx)
    for major in range(3, 14):
        for minor in range(10):
            for driver in (569, 570, 575):
                want = driver >= 570 and arch_coverage((major, minor), arch_list, ptx, driver=f"{driver}.999",
                                                       toolkit_driver="575.51.03")["covered"]
                assert affinity.admits(aff, node(driver, major, minor)) == want, (major, minor, driver)


def test_the_yaml_reads_back_as_the_data_written(project):
    """envmgr's small YAML writer against PyYAML: every manifest, the probe's source included."""
    from envmgr.cluster import image, k8s, workload, yamltext

    for name in LOCKS:
        work = workload.load(project, name)
        m = k8s.Manifests(work, image.pin(f"registry.example/team/train@{DIGEST}"), k8s.Options(nodes=2, gpus=8 if work.gpu else 0))
        for docs in m.documents().values():
            assert [d for d in yaml.safe_load_all(yamltext.dump_all(docs)) if d] == docs
    tricky = {"s": ["yes", "no", "on", "null", "~", "1.30", "0x1F", "-1", "a: b", "#x", "", " lead", "trail ",
                    "multi\nline\n", "keep\n\n\n", "none\ntrailing", "  indented\nfirst", "tab\there\n", "é ü"]}
    assert yaml.safe_load(yamltext.dump(tricky)) == tricky
