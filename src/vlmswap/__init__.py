"""vlmswap: which vision encoder should a VLM use? Controlled backbone swaps, end to end."""

__version__ = "0.1.0"
