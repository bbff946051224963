"""envmgr: reproducible PyTorch/CUDA environments from one hashed lock."""

__version__ = "0.1.0"
