"""Report: locks -> text for people and bots. Takes locks (now and at a git base) and the
knowledge base; gives PR bodies, requirements files, SBOMs and tables. Reads only: never
writes a lock, venv or image. Used by ``oci`` (the SBOM inside an image).

- ``diff``: what changed between two locks of a profile (torch/CUDA/archs/driver first).
- ``diffreport``: a diff as markdown (a PR body) or JSON.
- ``export``: a lock as pip requirements, CycloneDX or PEP 751.
- ``sbom``: the CycloneDX SBOM of a lock.
- ``knowledge``: the variant knowledge base as tables (``envmgr variants``).
"""
