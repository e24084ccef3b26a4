"""PyTorch backbone definitions whose checkpoints facematch can export."""
