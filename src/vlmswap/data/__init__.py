"""Instruction data, the mini world generator and dataset loaders."""
