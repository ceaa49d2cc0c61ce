"""Benchmarks that compare the reconstruction methods outside the test suite: image quality and inference speed."""
