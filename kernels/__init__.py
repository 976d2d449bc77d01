"""Triton kernels: one small file per transform, pure functions over tensors."""
