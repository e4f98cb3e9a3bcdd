"""CPU speed-ups for kdcore that the core does not carry: 2x2 max pooling by a small C kernel."""
