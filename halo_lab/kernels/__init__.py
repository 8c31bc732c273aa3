"""Fused kernels (Triton). Each op's folder holds its kernels, a naive reference and the launch code."""
