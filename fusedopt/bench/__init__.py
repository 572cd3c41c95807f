"""fusedopt-bench: optimizer step throughput against torch.optim and other libraries, and against a roofline
measured in the same run on the same device. Entry point: fusedopt.bench.cli (`fusedopt-bench`)."""
