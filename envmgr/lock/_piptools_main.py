"""Run pip-compile so that it pins from metadata alone (imported by the pip-tools backend).

pip's resolver reads each candidate's METADATA from the index's PEP 658 ``.metadata``
file, then, before returning, downloads every resolved distribution in full
(``prepare_linked_requirements_more``), which for a CUDA torch stack is gigabytes that
pip-compile never looks at (it only writes ``name==version``). This entry point turns that
final step into a no-op for distributions whose metadata was fetched on its own; envmgr
reads the files and their published hashes from the index afterwards.
"""

from __future__ import annotations

import sys


def main() -> None:
    from pip._internal.operations import prepare

    original = prepare.RequirementPreparer.prepare_linked_requirements_more

    def metadata_only(self, reqs, parallel_builds=False):
        rest = [r for r in reqs if not getattr(r, "needs_more_preparation", False)]
        return original(self, rest, parallel_builds)

    prepare.RequirementPreparer.prepare_linked_requirements_more = metadata_only

    from pip._internal.exceptions import PipError
    from piptools.scripts.compile import cli

    sys.argv[0] = "pip-compile"
    try:
        cli()
    except PipError as exc:
        # pip-compile lets pip's resolution errors escape as tracebacks; the message is
        # the explanation (what pip already printed above it says which versions exist).
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
