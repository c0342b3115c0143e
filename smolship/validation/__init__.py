"""Prove an artifact against the PyTorch reference: parity (KL, top-1, logits, NLL, greedy) and latency."""
