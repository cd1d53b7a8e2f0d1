"""recon: reconstructing training data from the weights of trained classifiers.

A small library beside the book, reproducing Haim, Vardi, Yehudai, Shamir & Irani,
"Reconstructing Training Data From Trained Neural Networks", NeurIPS 2022.

Modules: :mod:`recon.data` (the paper's binary tasks on real CIFAR-10 / MNIST),
:mod:`recon.models` (the homogeneous MLP), :mod:`recon.train` (full-batch gradient descent),
:mod:`recon.kkt` (how close a net is to a KKT point), :mod:`recon.reconstruct` (the attack),
:mod:`recon.evaluate` (the paper's matching + SSIM protocol), :mod:`recon.plots`, and the
command line :mod:`recon.cli`.
"""

__version__ = "0.1.0"
