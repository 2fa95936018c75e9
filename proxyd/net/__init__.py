"""The network layer: the only package of proxyd that imports twisted.internet."""
