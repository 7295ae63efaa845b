"""Speed and memory measured side by side; each prints ratios and can store them. Run as ``python -m benchmarks.<name>``."""
