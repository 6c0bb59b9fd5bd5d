"""CIFAR-10 training example: `python examples/cifar10/train.py --help`."""
