"""Net: files and index pages over HTTP. Takes URLs (from locks and profiles) and
credentials; gives verified files in the content-addressed cache and parsed index pages.
Uses the model; knows nothing of venvs, images or resolvers.

- ``http``: every request and body read: the session, timeouts, retries, resumed bodies,
  one-line errors.
- ``credentials``: index credentials by host, from the URLs (URL redaction is ``core.urls``).
- ``registryauth``: registry credentials as docker and podman find them (credential helpers,
  config.json, auth.json, envmgr's variables).
- ``fetch``: fetch-and-verify of a lock's files into the cache (sha256, size, progress).
- ``indexclient``: PEP 503/691 index pages and PEP 658 metadata.
"""
