"""Model: what the other stages agree on. Takes profile files, lock files and the shipped
knowledge base; gives immutable values. Imports nothing of envmgr but the core (errors).

- ``names``: PEP 503 name normalisation (stdlib only: the fast paths import it).
- ``gpucompat``: version tuples, driver comparison and GPU arch coverage (stdlib only, so the
  GPU probe carries it into the target environment); every stage decides with it.
- ``variants``: the variant knowledge base (``data/variants.toml``): CUDA, minimum driver,
  arch lists per torch release; version and driver comparisons.
- ``profiles``: ``profiles/NAME.toml`` read, inherited and validated into a ``Profile``.
- ``sourced``: facts that say where they came from (the lock's and the table's alike).
- ``lockfile``: the lock model and its deterministic PEP 751 serialisation.
"""
