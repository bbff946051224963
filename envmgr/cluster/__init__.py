"""Cluster: the same lock on every node, through the engines clusters already run.

Takes a profile's lock (its ``[tool.envmgr]`` facts: variant, CUDA, minimum driver, arch list,
PTX), an image reference (pinned by digest, through ``oci.remote``) and the probe ``gpu``
runs; gives standard Kubernetes manifests, an sbatch script, and a table read back from the
fleet check's JSON. No scheduler or agent of its own: Kubernetes and Slurm run the work.

- ``workload``: the lock's facts and the probe's expectations for one profile; torchrun's
  rendezvous arguments and the built-in all-reduce smoke test.
- ``image``: an image reference pinned by digest (a tag resolved through the registry).
- ``affinity``: lock facts -> node affinity on GPU feature discovery's labels.
- ``k8s``: ``envmgr cluster k8s`` -- fleet check (Indexed Job, DaemonSet), training (Indexed
  Job + headless Service, Kubeflow PyTorchJob).
- ``slurm``: ``envmgr cluster slurm`` -- an sbatch script: check every node, then torchrun.
- ``report``: ``envmgr cluster report`` -- check documents out of log files -> one row a node.
- ``yamltext``: a small YAML writer (block style; what PyYAML reads back equal).
"""
