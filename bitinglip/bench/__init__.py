"""Benchmarks run by `bitinglip bench ...`: each prints one JSON object of measurements."""
