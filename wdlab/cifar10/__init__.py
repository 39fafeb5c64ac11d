"""The CIFAR-10 study: the official archive, the data as device tensors, a small residual CNN, training over a λ
grid."""
