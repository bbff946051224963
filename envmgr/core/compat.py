"""What differs between the Pythons envmgr runs on (3.10 to 3.13), in one place."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (a declared dependency there)
    import tomli as tomllib

__all__ = ["tomllib"]
