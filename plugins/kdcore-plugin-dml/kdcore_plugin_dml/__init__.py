"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018) for kdcore."""

__version__ = "0.1.0"
