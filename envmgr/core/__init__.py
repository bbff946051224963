"""Core: what every stage may use, and nothing of any stage. Imports only the standard library
(and rich, lazily, for the console).

- ``errors``: the exception classes and their exit codes (2 bad input, 1 check failed).
- ``settings``: where things live (project, cache, venvs, locks) and environment switches.
- ``console``: stdout/stderr consoles, progress bars, JSON output, one-line error printing.
- ``files``: atomic file writes.
"""
